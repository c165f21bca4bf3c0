"""Outgoing mail: replies threaded under the message they answer, and the
acknowledgment that a new conversation has started.

Message-IDs carry the conversation (`<airut.<conversation>.<time>.<nonce>@<domain>>`),
so a reply to any of them finds its way back; so does the `[ID:<conversation>]` tag in
the subject, for clients that drop the threading headers.

A reply is the agent's words, and the agent is an adversary too: its text may hold
lone surrogates, its file names undecodable bytes, its Markdown raw HTML. Composing
never raises on any of that: text is made valid UTF-8, names are made plain, and the
HTML part is sanitized by nh3 (an allowlist of tags and attributes): no images (a
remote image is fetched by the reader's mail client, and its address can carry
data out), no styles, no scripts; every link shows its address as text beside it.
"""

from __future__ import annotations

import json
import mimetypes
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, getaddresses

import markdown
import nh3
from bs4 import BeautifulSoup

from airut_core.guard import Permanent
from airut_core.records import ReplyRecord
from airut_ingest.email import parse
from airut_ingest.email.parse import MAX_REFERENCES, MAX_SUBJECT_CHARS, SUBJECT_TAG, message_ids

PREFIXES = re.compile(r"^\s*((re|fwd?|aw|wg|sv|vs|antw)\s*:\s*)+", re.IGNORECASE)
HTML_MAX_CHARS = 500_000  # a longer reply goes out as plain text only
URL_SHOWN_CHARS = 300

ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "div", "dl", "dt", "em",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "kbd", "li", "ol", "p", "pre", "s",
    "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr",
    "ul",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "abbr": {"title"}, "ol": {"start"},
                      "td": {"align"}, "th": {"align"}}
URL_SCHEMES = {"http", "https", "mailto"}


class Unsendable(Permanent):
    """A reply record that names no usable recipient: retrying cannot help."""


@dataclass
class Thread:
    """Where a reply goes: kept in the task record's reply_to, as JSON."""

    to: str
    subject: str
    message_id: str | None = None
    references: list[str] = field(default_factory=list)
    new: bool = False  # a new mail, not a reply (a scheduled task's answer)

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> Thread:
        """The thread, checked: exactly one recipient address, well-formed ids."""
        try:
            data = json.loads(text)
            thread = cls(to=str(data["to"]), subject=str(data.get("subject") or ""),
                         message_id=data.get("message_id"),
                         references=[str(r) for r in data.get("references") or []],
                         new=data.get("new") is True)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise Unsendable(f"unreadable reply_to {text[:200]!r}: {e}") from e
        addresses = getaddresses([thread.to], strict=True)
        if len(addresses) != 1 or "@" not in addresses[0][1] or not _clean(thread.to):
            raise Unsendable(f"reply_to does not name exactly one address: {thread.to[:200]!r}")
        thread.to = addresses[0][1]
        ids = message_ids(str(thread.message_id or ""))
        thread.message_id = ids[0] if ids else None
        thread.references = [i for r in thread.references for i in message_ids(r)][-MAX_REFERENCES:]
        return thread


def _clean(text: str) -> str:
    """Valid UTF-8 (lone surrogates become U+FFFD), no NUL."""
    return parse.LONE_SURROGATE.sub("\ufffd", text).replace("\x00", "")


def _one_line(text: str, limit: int) -> str:
    return " ".join(_clean(text).split())[:limit]


def new_message_id(conversation_id: str | None, address: str) -> str:
    domain = address.rpartition("@")[2] or "localhost"
    return f"<airut.{conversation_id or 'new'}.{int(time.time())}.{secrets.token_hex(4)}@{domain}>"


def reply_subject(original: str, conversation_id: str | None, new: bool = False) -> str:
    original = _one_line(original, MAX_SUBJECT_CHARS)
    bare = SUBJECT_TAG.sub("", PREFIXES.sub("", original)).strip()
    bare = PREFIXES.sub("", bare).strip()
    tag = f"[ID:{conversation_id}] " if conversation_id else ""
    return f"{'' if new else 'Re: '}{tag}{bare}".rstrip()


def _headers(msg: EmailMessage, address: str, thread: Thread, conversation: str | None,
             also: list[str] | None = None) -> None:
    msg["From"] = address
    msg["To"] = thread.to
    msg["Subject"] = reply_subject(thread.subject, conversation, thread.new)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = new_message_id(conversation, address)
    if thread.message_id:
        # Several parents when one mail answers several merged messages (RFC 5322 3.6.4).
        parents = list(dict.fromkeys([thread.message_id, *(also or [])]))
        msg["In-Reply-To"] = " ".join(parents)
        msg["References"] = " ".join(dict.fromkeys([*thread.references, *parents[1:],
                                                    thread.message_id]))
    msg["Auto-Submitted"] = "auto-generated" if thread.new else "auto-replied"


def html(text: str) -> str:
    """The Markdown as sanitized HTML: only allowlisted tags and attributes."""
    body = markdown.markdown(text, extensions=["fenced_code", "tables", "sane_lists"])
    body = nh3.clean(_visible(body), tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES,
                     url_schemes=URL_SCHEMES, link_rel="noopener noreferrer nofollow",
                     strip_comments=True)
    return ("<!DOCTYPE html><html><body style=\"font-family: sans-serif; line-height: 1.4\">"
            f"{body}</body></html>")


def _visible(body: str) -> str:
    """Images become text naming them (nothing is fetched); links show where they go."""
    soup = BeautifulSoup(body, "html.parser")
    for img in soup.find_all("img"):
        alt = _one_line(str(img.get("alt") or ""), 200)
        src = _one_line(str(img.get("src") or ""), URL_SHOWN_CHARS)
        label = " ".join(filter(None, ["[image not shown:", alt, f"({src})" if src else ""]))
        img.replace_with(f"{label}]")
    for link in soup.find_all("a"):
        href = _one_line(str(link.get("href") or ""), URL_SHOWN_CHARS)
        shown = link.get_text(" ", strip=True)
        if href and shown != href and shown != href.removeprefix("mailto:"):
            link.insert_after(f" ({href})")
    return str(soup)


def _alternatives(msg: EmailMessage, text: str) -> None:
    text = _clean(text)
    msg.set_content(text)
    if len(text) <= HTML_MAX_CHARS:
        msg.add_alternative(html(text), subtype="html")


def reply(address: str, reply: ReplyRecord, thread: Thread,
          files: list[tuple[str, bytes]], notes: list[str],
          also: list[str] | None = None) -> EmailMessage:
    """files: (plain name, content) to attach; notes: what could not be, said in the text;
    also: the Message-IDs of the sender's other messages this mail answers."""
    msg = EmailMessage()
    _headers(msg, address, thread, reply.conversation_id, also)
    text = reply.text
    if notes:
        text += "\n\n" + "\n".join(f"[airut: {n}]" for n in notes)
    _alternatives(msg, text)
    for name, data in files:
        kind, _ = mimetypes.guess_type(name)
        maintype, _, subtype = (kind or "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg


def acknowledgment(address: str, thread: Thread, conversation_id: str,
                   dashboard_url: str | None) -> EmailMessage:
    text = "I've started working on this and will reply in this thread when I'm done."
    if dashboard_url:
        text += f"\n\nFollow along: {dashboard_url.rstrip('/')}/conversation/{conversation_id}"
    msg = EmailMessage()
    _headers(msg, address, thread, conversation_id)
    _alternatives(msg, text)
    return msg
