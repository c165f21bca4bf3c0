"""One incoming mail, examined: accepted as a task, or rejected with a reason.

The daemon and `airut email check FILE.eml` run exactly this, so an operator sees
the verdict the daemon would reach.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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

    def summary(self) -> dict:
        """The JSON `airut email check` prints."""
        return {"accepted": self.accepted, "reason": self.reason, "sender": self.sender,
                "conversation_id": self.conversation_id, "subject": self.subject,
                "text": self.text, "attachments": [a.name for a in self.attachments],
                "model": self.model}


def examine(raw: bytes, cfg: EmailConfig, known: Callable[[str], bool]) -> Verdict:
    """known(conversation_id): may this repository's mail continue that conversation?

    Raises TooComplex (a guard.Permanent) for a message beyond what airut reads:
    the daemon quarantines it.
    """
    try:
        msg = parse.load(raw)
        subject = parse.subject(msg)
    except Exception as e:  # the parser is lenient; this is a truly broken message
        raise TooComplex(f"cannot parse the message: {type(e).__name__}: {e}") from e
    try:
        sender = auth.authenticate(msg, cfg.trusted_authserv_id)
        auth.authorize(sender, cfg.authorized_senders)
    except auth.Rejected as e:
        return Verdict(False, e.reason, str(e), sender=_safe_sender(msg), subject=subject)
    try:
        mail = parse.parse(msg, cfg.max_attachment_bytes)
    except TooComplex:
        raise
    except Exception as e:  # RecursionError and the like, from a library: not retried
        raise TooComplex(f"cannot read the message: {type(e).__name__}: {e}") from e
    conversation = mail.conversation_id()
    dropped = None
    if conversation and not known(conversation):
        conversation, dropped = None, conversation  # a new conversation instead
    text = mail.text
    if not conversation and mail.subject:
        text = f"Subject: {mail.subject}\n\n{text}".strip()
    verdict = Verdict(
        accepted=True, reason="ok", sender=sender, conversation_id=conversation,
        subject=mail.subject, text=text, attachments=mail.attachments,
        model=None if conversation else mail.model_hint(cfg.address),
        message_id=mail.message_id, references=mail.references, notes=mail.notes,
        dropped_reference=dropped)
    if not mail.text.strip() and not mail.attachments and (conversation or not mail.subject):
        verdict.accepted, verdict.reason = False, "empty"
        verdict.detail = "the message has no text and no attachments"
    return verdict


def _safe_sender(msg) -> str | None:
    try:
        return auth.sender_address(msg)
    except auth.Rejected:
        return None
