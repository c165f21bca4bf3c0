"""Reading an incoming mail: its text, its attachments, its place in a thread.

The text comes from the HTML part when there is one, turned into Markdown-like text
by markdownify; else from text/plain; any declared charset (an unknown one is
decoded leniently and noted). Quoted history is cut where mail clients put it
(Gmail, Outlook, Apple Mail, Thunderbird); a quote followed by the sender's own
words is an inline reply and stays.

Every byte is the sender's, so the work is bounded: MIME nesting and part counts,
the length of the text, the depth of the HTML tree (deeper tags are flattened into
their ancestors) and of nested quotes, the number and the byte length of attachment
names. Every pass over the HTML is linear. A message beyond the structural limits
raises TooComplex, and the daemon quarantines it.
"""

from __future__ import annotations

import bisect
import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage

from bs4 import BeautifulSoup, NavigableString, Tag
from markdownify import markdownify

from airut_core.guard import Permanent
from airut_ingest.files import safe_name

QUOTE_REMOVED = "[quoted text removed]"
AIRUT_MESSAGE_ID = re.compile(r"<airut\.([0-9a-f]{8})\.", re.IGNORECASE)
SUBJECT_TAG = re.compile(r"\[ID:([0-9a-f]{8})\]", re.IGNORECASE)
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # undecodable bytes, as Python keeps them
MODEL_HINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Where clients put the quoted thread in HTML.
QUOTE_SELECTORS = (
    "div.gmail_quote", "div.gmail_quote_container",  # Gmail
    "blockquote[type=cite]",  # Apple Mail, Thunderbird
    "div.moz-forward-container",  # Thunderbird forwards
    "div.yahoo_quoted",  # Yahoo
)
# Outlook starts the old message with a header block: everything from there is history.
CUT_SELECTORS = ("div#divRplyFwdMsg", "div#mail-editor-reference-message-container",
                 "div#appendonsend")
ATTRIBUTION = re.compile(r"(wrote|schrieb|a écrit|escribió|scrisse|kirjoitti)\s*:\s*$",
                         re.IGNORECASE)
OUTLOOK_SEPARATOR = re.compile(
    r"^(-{2,}\s*Original Message\s*-{2,}|_{20,})\s*$", re.IGNORECASE | re.MULTILINE)
OUTLOOK_HEADER = re.compile(r"^From: .+\n(Sent|Date): .+$", re.MULTILINE)

# Bounds on the work one message may cause (see the module's docstring).
MAX_MIME_DEPTH = 16
MAX_MIME_PARTS = 500
MAX_ATTACHMENTS = 100
MAX_TEXT_CHARS = 1_000_000  # of the body, before any processing; the rest is cut, noted
MAX_HTML_DEPTH = 40  # markdownify recurses per level: deeper tags are unwrapped
MAX_QUOTE_DEPTH = 8  # markdownify's work grows with the nesting of blockquotes
MAX_HTML_TAGS = 50_000  # beyond this, plain text only (get_text is linear)
MAX_SUBJECT_CHARS = 500
MAX_REFERENCES = 30  # the newest ids of References are kept


class TooComplex(Permanent):
    """The message is beyond what airut reads; it is quarantined, not retried."""


@dataclass
class Attachment:
    name: str
    data: bytes


@dataclass
class ParsedMail:
    message_id: str | None
    subject: str
    text: str
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be taken, and why
    recipients: list[str] = field(default_factory=list)

    def conversation_id(self) -> str | None:
        """In-Reply-To, then References newest first, then the subject's [ID:...] tag."""
        for msg_id in [*self.in_reply_to, *reversed(self.references)]:
            m = AIRUT_MESSAGE_ID.match(msg_id)
            if m:
                return m.group(1).lower()
        m = SUBJECT_TAG.search(self.subject)
        return m.group(1).lower() if m else None

    def model_hint(self, address: str) -> str | None:
        """`box+MODEL@domain` when the mailbox is box@domain."""
        local, _, domain = address.lower().partition("@")
        for recipient in self.recipients:
            r_local, _, r_domain = recipient.lower().partition("@")
            base, plus, hint = r_local.partition("+")
            if plus and base == local and r_domain == domain and MODEL_HINT.match(hint):
                return hint
        return None


def load(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def parse(msg: EmailMessage, max_attachment_bytes: int) -> ParsedMail:
    check_structure(msg)
    notes: list[str] = []
    parsed = ParsedMail(
        message_id=message_id(msg),
        subject=subject(msg),
        text=body_text(msg, notes),
        in_reply_to=message_ids(header(msg, "In-Reply-To"))[:MAX_REFERENCES],
        references=message_ids(header(msg, "References"))[-MAX_REFERENCES:],
        recipients=[a for h in ("To", "Cc", "Delivered-To") for a in _addresses(msg, h)],
    )
    parsed.attachments = attachments(msg, max_attachment_bytes, notes)
    parsed.notes = notes
    return parsed


def check_structure(msg: EmailMessage) -> None:
    """Walk the MIME tree without recursion; TooComplex beyond the limits."""
    parts = 0
    stack = [(msg, 1)]
    while stack:
        part, depth = stack.pop()
        parts += 1
        if parts > MAX_MIME_PARTS:
            raise TooComplex(f"more than {MAX_MIME_PARTS} MIME parts")
        if depth > MAX_MIME_DEPTH:
            raise TooComplex(f"MIME parts nested more than {MAX_MIME_DEPTH} deep")
        if part.is_multipart():
            stack.extend((p, depth + 1) for p in part.get_payload())


def subject(msg: EmailMessage) -> str:
    return " ".join(header(msg, "Subject").split())[:MAX_SUBJECT_CHARS]


def message_id(msg: EmailMessage) -> str | None:
    """The message's id as `<...>`, or None when it has no usable one."""
    ids = message_ids(header(msg, "Message-ID"))
    return ids[0] if ids else None


def raw_headers(msg: EmailMessage, name: str) -> list[str]:
    """The unparsed values of a header, unfolded.

    The default policy's header parser raises on inputs such as `From: "`; the
    callers here parse these values themselves, with parsers that do not.
    """
    return [re.sub(r"\r?\n(?=[ \t])", "", str(v)).strip()
            for k, v in msg.raw_items() if k.lower() == name.lower()]


def header(msg: EmailMessage, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a header the parser cannot make sense of
        return ""
    return str(value).strip() if value is not None else ""


def message_ids(value: str) -> list[str]:
    return re.findall(r"<[!-;=?-~]{1,250}>", value)  # printable ASCII, no < or >


def _addresses(msg: EmailMessage, name: str) -> list[str]:
    try:
        return [a.addr_spec for h in msg.get_all(name) or [] for a in h.addresses]
    except Exception:
        return []


# -- the text ----------------------------------------------------------------------

def body_text(msg: EmailMessage, notes: list[str]) -> str:
    part = msg.get_body(preferencelist=("html", "plain"))
    if part is None:
        return ""
    content = _decode(part, notes)
    if len(content) > MAX_TEXT_CHARS:
        notes.append(f"the message text was cut after {MAX_TEXT_CHARS} characters")
        content = content[:MAX_TEXT_CHARS]
    if part.get_content_subtype() == "html":
        return html_to_text(content)
    return plain_without_quote(content)


def _decode(part: EmailMessage, notes: list[str]) -> str:
    try:
        return part.get_content()
    except Exception as e:  # an unknown charset, undecodable bytes, a broken encoding
        charset = part.get_content_charset() or "unknown"
        notes.append(f"the text was in charset {charset!r}, which could not be decoded "
                     f"exactly ({e.__class__.__name__}); some characters may be wrong")
        payload = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", errors="replace")


def html_to_text(html: str) -> str:
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "head", "title"]):
        tag.decompose()
    if len(soup.find_all(limit=MAX_HTML_TAGS + 1)) > MAX_HTML_TAGS:
        return _tidy(soup.get_text("\n"))
    _flatten(soup)
    removed = _remove_trailing_quotes(soup)
    text = markdownify(str(soup), heading_style="ATX", bullets="-", strip=["img"])
    text = _tidy(text)
    return f"{text}\n\n{QUOTE_REMOVED}".strip() if removed else text


def _flatten(soup: BeautifulSoup) -> None:
    """Unwrap tags nested deeper than MAX_HTML_DEPTH, or blockquotes deeper than
    MAX_QUOTE_DEPTH: their content stays, in a shallower tree."""
    too_deep: list[Tag] = []
    stack: list[tuple[Tag, int, int]] = [(soup, 0, 0)]
    while stack:
        node, depth, quotes = stack.pop()
        for child in node.children:
            if isinstance(child, Tag):
                q = quotes + (child.name == "blockquote")
                if depth + 1 > MAX_HTML_DEPTH or q > MAX_QUOTE_DEPTH:
                    too_deep.append(child)
                    stack.append((child, depth, quotes))  # its children take its place
                else:
                    stack.append((child, depth + 1, q))
    for tag in too_deep:
        tag.unwrap()


def _remove_trailing_quotes(soup: BeautifulSoup) -> bool:
    """Drop quote containers with nothing of the sender's after them."""
    removed = _cut_outlook_history(soup)
    # One numbering of the document in order, so that "is there text after this
    # quote?" is a binary search, not a walk.
    order: dict[int, int] = {}
    texts: list[int] = []  # positions of strings that are not blank
    for i, node in enumerate(soup.descendants):
        order[id(node)] = i
        if isinstance(node, NavigableString) and node.strip():
            texts.append(i)
    outer: list[tuple[Tag, int, int]] = []  # outermost quotes, with their first/last position
    end = -1
    for quote in soup.select(", ".join(QUOTE_SELECTORS)):
        start = order[id(quote)]
        if start <= end:
            continue  # inside an earlier quote
        end = start + sum(1 for _ in quote.descendants)
        outer.append((quote, start, end))
    limit = len(order)  # from here on, everything was removed
    for quote, start, end in reversed(outer):
        k = bisect.bisect_right(texts, end)
        if k < len(texts) and texts[k] < limit:
            break  # the sender wrote something after it: an inline reply; earlier ones stay
        limit = start
        before = _previous_tag(quote)
        if before is not None and (
                "moz-cite-prefix" in (before.get("class") or [])
                or ATTRIBUTION.search(before.get_text(" ", strip=True)[-200:])):
            limit = order[id(before)]
            before.decompose()
            before = _previous_tag(quote)
        if before is not None and before.name == "hr":
            limit = order[id(before)]
            before.decompose()
        quote.decompose()
        removed = True
    return removed


def _cut_outlook_history(soup: BeautifulSoup) -> bool:
    """Outlook's header block starts the old message: cut everything from there."""
    cut = next((c for c in (soup.select_one(sel) for sel in CUT_SELECTORS) if c), None)
    if cut is None:
        return False
    before = _previous_tag(cut)
    if before is not None and before.name == "hr":
        before.decompose()
    following = [n for n in cut.find_all_next() if cut not in n.parents]
    following += cut.find_next_siblings()
    for node in following:
        if not node.decomposed:
            node.decompose()
    cut.decompose()
    return True


def _previous_tag(node: Tag) -> Tag | None:
    """The sibling tag right before node, with only white space in between."""
    prev = node.previous_sibling
    while prev is not None and not isinstance(prev, Tag):
        if str(prev).strip():
            return None
        prev = prev.previous_sibling
    return prev


def plain_without_quote(text: str) -> str:
    text = text.replace("\r\n", "\n")
    cut = _outlook_cut(text)
    removed = cut is not None
    if removed:
        text = text[:cut]
    lines = text.rstrip().split("\n")
    end = len(lines)
    while end and (lines[end - 1].startswith(">") or not lines[end - 1].strip()):
        end -= 1
    if end < len(lines) and any(line.startswith(">") for line in lines[end:]):
        removed = True
        # The attribution line ("On Mon, ... Alice wrote:"), maybe wrapped over two lines.
        if end and ATTRIBUTION.search(lines[end - 1].strip()):
            short = len(lines[end - 1].strip()) <= 16  # "wrote:" wrapped onto its own line
            end -= 2 if short and end >= 2 else 1
        lines = lines[:end]
    text = _tidy("\n".join(lines))
    return f"{text}\n\n{QUOTE_REMOVED}".strip() if removed else text


def _outlook_cut(text: str) -> int | None:
    spots = [m.start() for m in (OUTLOOK_SEPARATOR.search(text), OUTLOOK_HEADER.search(text))
             if m]
    return min(spots) if spots else None


def _tidy(text: str) -> str:
    text = "\n".join(line.rstrip() for line in text.replace("\xa0", " ").split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# -- attachments -----------------------------------------------------------------------

def attachments(msg: EmailMessage, max_bytes: int, notes: list[str]) -> list[Attachment]:
    saved: list[Attachment] = []
    names: set[str] = set()
    total = 0
    for part in msg.iter_attachments():
        if len(saved) >= MAX_ATTACHMENTS:
            notes.append(f"only the first {MAX_ATTACHMENTS} attachments were saved")
            break
        try:
            raw_name = part.get_filename() or ""
        except Exception:  # a parameter the header parser cannot make sense of
            raw_name = ""
        name = safe_name(raw_name, names)
        try:
            data = part.get_payload(decode=True) or b""
        except Exception:
            notes.append(f"the attachment {name} could not be decoded and was not saved")
            continue
        if total + len(data) > max_bytes:
            notes.append(f"the attachment {name} ({len(data)} bytes) was not saved: "
                         f"attachments may total {max_bytes} bytes per message")
            continue
        total += len(data)
        names.add(name)
        saved.append(Attachment(name, data))
    return saved


