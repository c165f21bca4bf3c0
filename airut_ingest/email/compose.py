"""Outgoing mail: replies threaded under the message they answer, and the
acknowledgment that a new conversation has started.

Message-IDs carry the conversation (`<airut.<conversation>.<time>.<nonce>@<domain>>`),
so a reply to any of them finds its way back; so does the `[ID:<conversation>]` tag in
the subject, for clients that drop the threading headers.
"""

from __future__ import annotations

import json
import mimetypes
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import markdown

from airut_core.records import ReplyRecord
from airut_ingest.email.parse import SUBJECT_TAG

PREFIXES = re.compile(r"^\s*((re|fwd?|aw|wg|sv|vs|antw)\s*:\s*)+", re.IGNORECASE)


@dataclass
class Thread:
    """Where a reply goes: kept in the task record's reply_to, as JSON."""

    to: str
    subject: str
    message_id: str | None = None
    references: list[str] = field(default_factory=list)

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> Thread:
        return cls(**json.loads(text))


def new_message_id(conversation_id: str | None, address: str) -> str:
    domain = address.rpartition("@")[2] or "localhost"
    return f"<airut.{conversation_id or 'new'}.{int(time.time())}.{secrets.token_hex(4)}@{domain}>"


def reply_subject(original: str, conversation_id: str | None) -> str:
    bare = SUBJECT_TAG.sub("", PREFIXES.sub("", original)).strip()
    bare = PREFIXES.sub("", bare).strip()
    tag = f"[ID:{conversation_id}] " if conversation_id else ""
    return f"Re: {tag}{bare}".rstrip()


def _headers(msg: EmailMessage, address: str, thread: Thread, conversation: str | None) -> None:
    msg["From"] = address
    msg["To"] = thread.to
    msg["Subject"] = reply_subject(thread.subject, conversation)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = new_message_id(conversation, address)
    if thread.message_id:
        msg["In-Reply-To"] = thread.message_id
        msg["References"] = " ".join([*thread.references, thread.message_id])
    msg["Auto-Submitted"] = "auto-replied"


def html(text: str) -> str:
    body = markdown.markdown(text, extensions=["fenced_code", "tables", "sane_lists"])
    return ("<!DOCTYPE html><html><body style=\"font-family: sans-serif; line-height: 1.4\">"
            f"{body}</body></html>")


def reply(address: str, reply: ReplyRecord) -> EmailMessage:
    thread = Thread.loads(reply.reply_to)
    msg = EmailMessage()
    _headers(msg, address, thread, reply.conversation_id)
    msg.set_content(reply.text)
    msg.add_alternative(html(reply.text), subtype="html")
    for name in reply.attachments:
        data = (Path(reply.attachments_dir or "") / name).read_bytes()
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
    msg.set_content(text)
    msg.add_alternative(html(text), subtype="html")
    return msg
