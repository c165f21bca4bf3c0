"""Where a Slack task's answer goes: the reply_to of its task record. Kept apart from
the channel's other modules so that writers of such records (a schedule's firing)
need not load slack-sdk."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass
class Where:
    """A task's address in Slack. An empty thread_ts: a new message starts a thread (a
    scheduled task's answer); an empty ts: no message of anyone's to react to."""
    channel: str
    thread_ts: str
    ts: str  # the message itself (its reactions)
    user: str
    dm: bool

    def dumps(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> Where:
        data = json.loads(text)
        if not isinstance(data, dict) or not all(
                isinstance(data.get(k), str) for k in ("channel", "thread_ts", "ts", "user")):
            raise ValueError("not a Slack address")
        return cls(data["channel"], data["thread_ts"], data["ts"], data["user"],
                   data.get("dm") is True)
