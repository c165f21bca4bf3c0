"""What a Socket Mode envelope says, read with care.

Socket Mode guarantees that an event comes from Slack and who its `user` is; the
shape of the rest is Slack's to change. Every field is taken only with the right
type and a plausible form, so an unexpected shape is an event airut does not act
on (logged by the caller), never an exception deep in the daemon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

ID = re.compile(r"^[A-Z0-9]{2,30}$")
TS = re.compile(r"^\d{1,12}\.\d{1,9}$")
TEXT_MAX = 200_000  # characters of one message (Slack's own limit is 40,000)
# Messages that are someone saying something; edits, deletions, joins and the
# like are not tasks.
SUBTYPES = (None, "file_share", "thread_broadcast")


@dataclass
class File:
    id: str
    name: str
    url: str  # url_private_download (or url_private)
    size: int | None


@dataclass
class Message:
    kind: str  # message | app_mention
    channel: str
    user: str
    ts: str
    thread_ts: str | None
    text: str
    team: str | None = None
    channel_type: str | None = None  # im, channel, group, mpim
    files: list[File] = field(default_factory=list)

    @property
    def dm(self) -> bool:
        return self.channel_type == "im" or self.channel.startswith("D")

    @property
    def thread(self) -> str:
        """The thread the message is in, or starts (its own ts at the top level)."""
        return self.thread_ts or self.ts

    @property
    def key(self) -> str:
        return f"{self.channel}:{self.ts}"


@dataclass
class ThreadStarted:
    """The assistant surface opened a DM thread (assistant_thread_started)."""
    user: str
    channel: str
    thread_ts: str


@dataclass
class Ignored:
    why: str
    bot: bool = False


def read(payload: Any) -> Message | ThreadStarted | Ignored:
    """An events_api payload as what airut acts on, or why it does not."""
    if not isinstance(payload, dict) or not isinstance(payload.get("event"), dict):
        return Ignored("no event in the payload")
    event = payload["event"]
    kind = event.get("type")
    if kind == "assistant_thread_started":
        thread = event.get("assistant_thread")
        thread = thread if isinstance(thread, dict) else {}
        user, channel, ts = (_id(thread.get("user_id")), _id(thread.get("channel_id")),
                             _ts(thread.get("thread_ts")))
        if user and channel and ts:
            return ThreadStarted(user, channel, ts)
        return Ignored("assistant_thread_started without user, channel and thread")
    if kind not in ("message", "app_mention"):
        return Ignored(f"event type {str(kind)[:40]!r}")
    if event.get("bot_id") or event.get("subtype") == "bot_message" or event.get("bot_profile"):
        return Ignored("a bot's message", bot=True)
    if event.get("subtype") not in SUBTYPES:
        return Ignored(f"message subtype {str(event.get('subtype'))[:40]!r}")
    user, channel, ts = _id(event.get("user")), _id(event.get("channel")), _ts(event.get("ts"))
    if not (user and channel and ts):
        return Ignored("a message without user, channel and ts")
    text = event.get("text")
    text = text[:TEXT_MAX] if isinstance(text, str) else ""
    thread_ts = _ts(event.get("thread_ts"))
    team = _id(event.get("user_team")) or _id(event.get("team"))
    channel_type = event.get("channel_type") if isinstance(event.get("channel_type"),
                                                           str) else None
    return Message(str(kind), channel, user, ts, thread_ts, text, team, channel_type,
                   files_of(event.get("files")))


def files_of(value: Any) -> list[File]:
    found = []
    for f in value[:100] if isinstance(value, list) else []:
        if not isinstance(f, dict):
            continue
        url = f.get("url_private_download") or f.get("url_private")
        fid = _id(f.get("id"))
        if not (isinstance(url, str) and fid):
            continue
        name = f.get("name") if isinstance(f.get("name"), str) else ""
        size = f.get("size")
        size = size if isinstance(size, int) and not isinstance(size, bool) else None
        found.append(File(fid, name or fid, url, size))
    return found


def mentions(text: str, user: str) -> bool:
    return f"<@{user}>" in text or f"<@{user}|" in text


def _id(value: Any) -> str | None:
    return value if isinstance(value, str) and ID.match(value) else None


def _ts(value: Any) -> str | None:
    return value if isinstance(value, str) and TS.match(value) else None
