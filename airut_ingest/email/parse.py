"""Reading an incoming mail: its text, its attachments, its place in a thread.

The text comes from the HTML part when there is one, turned into Markdown-like text
by markdownify; else from text/plain; any declared charset (an unknown one is
decoded leniently and noted). Quoted history is cut where mail clients put it
(Gmail, Outlook, Apple Mail, Thunderbird); a quote followed by the sender's own
words is an inline reply and stays.
"""

from __future__ import annotations

import email
import email.policy
import re
import unicodedata
from dataclasses import dataclass, field
from email.message import EmailMessage

from bs4 import BeautifulSoup, Tag
from markdownify import markdownify

QUOTE_REMOVED = "[quoted text removed]"
AIRUT_MESSAGE_ID = re.compile(r"<airut\.([0-9a-f]{8})\.", re.IGNORECASE)
SUBJECT_TAG = re.compile(r"\[ID:([0-9a-f]{8})\]", re.IGNORECASE)
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
    notes: list[str] = []
    parsed = ParsedMail(
        message_id=header(msg, "Message-ID") or None,
        subject=" ".join(header(msg, "Subject").split()),
        text=body_text(msg, notes),
        in_reply_to=_ids(header(msg, "In-Reply-To")),
        references=_ids(header(msg, "References")),
        recipients=[a for h in ("To", "Cc", "Delivered-To") for a in _addresses(msg, h)],
    )
    parsed.attachments = attachments(msg, max_attachment_bytes, notes)
    parsed.notes = notes
    return parsed


def header(msg: EmailMessage, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a header the parser cannot make sense of
        return ""
    return str(value).strip() if value is not None else ""


def _ids(value: str) -> list[str]:
    return re.findall(r"<[^<>\s]+>", value)


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
    if part.get_content_subtype() == "html":
        return html_to_text(content)
    return plain_without_quote(content)


def _decode(part: EmailMessage, notes: list[str]) -> str:
    try:
        return part.get_content()
    except (LookupError, UnicodeDecodeError) as e:
        charset = part.get_content_charset() or "unknown"
        notes.append(f"the text was in charset {charset!r}, which could not be decoded "
                     f"exactly ({e.__class__.__name__}); some characters may be wrong")
        payload = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", errors="replace")


def html_to_text(html: str) -> str:
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "head", "title"]):
        tag.decompose()
    removed = _remove_trailing_quotes(soup)
    text = markdownify(str(soup), heading_style="ATX", bullets="-", strip=["img"])
    text = _tidy(text)
    return f"{text}\n\n{QUOTE_REMOVED}".strip() if removed else text


def _remove_trailing_quotes(soup: BeautifulSoup) -> bool:
    """Drop quote containers with nothing of the sender's after them."""
    removed = False
    for cut in [c for sel in CUT_SELECTORS for c in soup.select(sel)][:1]:
        hr = cut.find_previous_sibling("hr")
        if hr is not None and not _text_between(hr, cut):
            hr.decompose()
        for node in [*cut.find_all_next(), *cut.find_next_siblings()]:
            if not node.decomposed and cut not in node.parents:
                node.decompose()
        cut.decompose()
        removed = True
    quotes = [q for sel in QUOTE_SELECTORS for q in soup.select(sel)]
    for quote in sorted(quotes, key=_position, reverse=True):
        if quote.decomposed or _text_after(quote):
            continue  # an inline reply follows: keep the quote
        attribution = quote.find_previous_sibling()
        if isinstance(attribution, Tag) and (
                "moz-cite-prefix" in (attribution.get("class") or [])
                or ATTRIBUTION.search(attribution.get_text(" ", strip=True))):
            attribution.decompose()
        hr = quote.find_previous_sibling("hr")
        if hr is not None and not _text_between(hr, quote):
            hr.decompose()
        quote.decompose()
        removed = True
    return removed


def _position(tag: Tag) -> int:
    return len(list(tag.find_all_previous()))


def _text_after(tag: Tag) -> bool:
    for node in tag.find_all_next(string=True):
        if tag in node.parents:
            continue
        if node.strip():
            return True
    return False


def _text_between(first: Tag, second: Tag) -> bool:
    for node in first.find_all_next(string=True):
        if second in node.parents or node is second:
            break
        if node.strip():
            return True
    return False


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
        name = safe_name(part.get_filename() or "", names)
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


def safe_name(raw: str, taken: set[str]) -> str:
    """A plain file name: no directories, no hidden files, no control characters."""
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").split("/")[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '<>:"|?*')
    name = name.strip().lstrip(".").strip()[:120] or "attachment"
    if name in taken:
        stem, dot, ext = name.rpartition(".")
        stem, ext = (stem, f".{ext}") if dot and stem else (name, "")
        n = 1
        while f"{stem}-{n}{ext}" in taken:
            n += 1
        name = f"{stem}-{n}{ext}"
    return name
