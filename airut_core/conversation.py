"""conversation.json: what the runner keeps about a conversation.

Written only by airut-runner; read by the dashboard and by `airut submit
--conversation` (to find the conversation's repository). Lives in
<state>/conversations/<id>/ next to the agent's workspace and session state.
"""

from __future__ import annotations

import grp
import json
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airut_core import paths, schema
from airut_core.spool import dump, utc_now, write_atomic

FILE = "conversation.json"
READER_GROUP = "airut-ingest"
LAST_REPLY_CHARS = 3000


@dataclass
class ReplySummary:
    task_id: str
    outcome: str
    time: str = field(default_factory=utc_now)
    duration_ms: int | None = None
    cost_usd: float | None = None
    turns: int | None = None
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass
class Conversation:
    conversation_id: str
    repo: str
    model: str  # pinned at creation: later config changes do not move a conversation
    effort: str | None = None
    created: str = field(default_factory=utc_now)
    session_id: str | None = None  # the agent session to --resume
    replies: list[ReplySummary] = field(default_factory=list)
    # The latest successful answer, cut to LAST_REPLY_CHARS: the context a fresh
    # session gets when the old one cannot be resumed.
    last_reply: str = ""

    def replied_to(self, task_id: str) -> bool:
        return any(r.task_id == task_id for r in self.replies)


def new_id(state_dir: Path | str) -> str:
    """A fresh 8-hex conversation id not used on this host."""
    while True:
        cid = secrets.token_hex(4)
        if not paths.conversation_dir(state_dir, cid).exists():
            return cid


def load(state_dir: Path | str, conversation_id: str) -> Conversation | None:
    path = paths.conversation_dir(state_dir, conversation_id) / FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return schema.build(Conversation, data, str(path))


def save(state_dir: Path | str, conversation: Conversation) -> None:
    save_in(paths.conversation_dir(state_dir, conversation.conversation_id), conversation)


def save_in(directory: Path, conversation: Conversation) -> None:
    write_atomic(directory / FILE, dump(asdict(conversation)), gid=_reader_gid())


def _reader_gid() -> int | None:
    """Channel daemons (group READER_GROUP) read conversation.json to learn which
    repository a conversation belongs to; nothing else in the directory."""
    try:
        return grp.getgrnam(READER_GROUP).gr_gid
    except KeyError:  # not installed as a package (a development checkout)
        return None
