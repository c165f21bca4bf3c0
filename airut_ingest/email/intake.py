"""One incoming mail, examined: accepted as a task, or rejected with a reason.

The daemon and `airut email check FILE.eml` run exactly this, so an operator sees
the verdict the daemon would reach. read() is the work on the hostile bytes; both run
it in an examiner process (examiner.py), so a message cannot stall or kill them.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from airut_core.config import EmailConfig
from airut_ingest.email import auth, parse
from airut_ingest.email.parse import Attachment, TooComplex


@dataclass
class Verdict:
    accepted: bool
    reason: str  # ok | not_authenticated | not_authorized | malformed | empty
    detail: str = ""
    sender: str | None = None
    conversation_id: str | None = None  # None: a new conversation
    subject: str = ""
    text: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    model: str | None = None
    message_id: str | None = None
    references: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # A conversation the mail named but may not continue (another repository's, or
    # unknown here): it starts a new one instead.
    dropped_reference: str | None = None

    def to_json(self) -> dict:
        """For the way back from the examiner process."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["attachments"] = [{"name": a.name, "data": base64.b64encode(a.data).decode()}
                               for a in self.attachments]
        return data

    @classmethod
    def from_json(cls, data: object) -> Verdict:
        """The examiner's verdict, checked like any input: the process that made it read
        hostile bytes. ValueError when a field is missing, extra or of the wrong type,
        or an attachment's name is not the plain name parse.safe_name makes."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError("not a verdict")
        for name, value in data.items():
            if name != "attachments" and not _fits(value, _VERDICT_TYPES[name]):
                raise ValueError(f"verdict field {name} is not {_VERDICT_TYPES[name]}")
        attachments = []
        for item in data["attachments"]:
            if not (isinstance(item, dict) and set(item) == {"name", "data"}
                    and isinstance(item["name"], str) and isinstance(item["data"], str)):
                raise ValueError("an attachment is not a name and data")
            if parse.safe_name(item["name"], set()) != item["name"]:
                raise ValueError(f"attachment name {item['name']!r} is not a plain name")
            attachments.append(Attachment(item["name"], base64.b64decode(item["data"],
                                                                          validate=True)))
        if len({a.name for a in attachments}) != len(attachments):
            raise ValueError("two attachments have one name")
        return cls(**{**data, "attachments": attachments})

    def summary(self) -> dict:
        """The JSON `airut email check` prints."""
        return {"accepted": self.accepted, "reason": self.reason, "sender": self.sender,
                "conversation_id": self.conversation_id, "subject": self.subject,
                "text": self.text, "attachments": [a.name for a in self.attachments],
                "model": self.model}


_VERDICT_TYPES = {"accepted": "bool", "reason": "str", "detail": "str", "sender": "str?",
                  "conversation_id": "str?", "subject": "str", "text": "str", "model": "str?",
                  "message_id": "str?", "references": "[str]", "notes": "[str]",
                  "dropped_reference": "str?"}


def _fits(value: object, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str) or (kind == "str?" and value is None)


@dataclass(frozen=True)
class Rules:
    """What reading a mail needs of the configuration: all the examiner process is told."""
    address: str
    trusted_authserv_id: str
    authorized_senders: tuple[str, ...]
    max_attachment_bytes: int

    @classmethod
    def of(cls, cfg: EmailConfig) -> Rules:
        return cls(cfg.address, cfg.trusted_authserv_id, tuple(cfg.authorized_senders),
                   cfg.max_attachment_bytes)

    def to_json(self) -> dict:
        return {**asdict(self), "authorized_senders": list(self.authorized_senders)}

    @classmethod
    def from_json(cls, data: dict) -> Rules:
        return cls(str(data["address"]), str(data["trusted_authserv_id"]),
                   tuple(str(s) for s in data["authorized_senders"]),
                   int(data["max_attachment_bytes"]))


def read(raw: bytes, rules: Rules) -> Verdict:
    """All the work on the message's bytes (the daemon runs it in its examiner
    process): who sent it, whether they may, what it says. The conversation it names
    is not checked here; decide() does that."""
    try:
        msg = parse.load(raw)
        subject = parse.subject(msg)
    except MemoryError:
        raise  # the examiner says how much it had
    except Exception as e:  # the parser is lenient; this is a truly broken message
        raise TooComplex(f"cannot parse the message: {type(e).__name__}: {e}") from e
    try:
        sender = auth.authenticate(msg, rules.trusted_authserv_id)
        auth.authorize(sender, list(rules.authorized_senders))
    except auth.Rejected as e:
        return Verdict(False, e.reason, str(e), sender=_safe_sender(msg), subject=subject)
    try:
        mail = parse.parse(msg, rules.max_attachment_bytes)
    except (TooComplex, MemoryError):
        raise
    except Exception as e:  # RecursionError and the like, from a library: not retried
        raise TooComplex(f"cannot read the message: {type(e).__name__}: {e}") from e
    return Verdict(
        accepted=True, reason="ok", sender=sender, conversation_id=mail.conversation_id(),
        subject=mail.subject, text=mail.text, attachments=mail.attachments,
        model=mail.model_hint(rules.address), message_id=mail.message_id,
        references=mail.references, notes=mail.notes)


def decide(verdict: Verdict, known: Callable[[str], bool]) -> Verdict:
    """The conversation a read mail continues (or a new one: known(conversation_id)
    says whether this repository's mail may continue it), and whether the mail says
    anything at all."""
    if not verdict.accepted:
        return verdict
    conversation = verdict.conversation_id
    if conversation and not known(conversation):
        verdict.conversation_id, verdict.dropped_reference = None, conversation
        conversation = None
    if conversation:
        verdict.model = None  # the conversation keeps its model
    empty = not verdict.text.strip() and not verdict.attachments
    if not conversation and verdict.subject:
        verdict.text = f"Subject: {verdict.subject}\n\n{verdict.text}".strip()
    if empty and (conversation or not verdict.subject):
        verdict.accepted, verdict.reason = False, "empty"
        verdict.detail = "the message has no text and no attachments"
    return verdict


def _safe_sender(msg) -> str | None:
    try:
        return auth.sender_address(msg)
    except auth.Rejected:
        return None
