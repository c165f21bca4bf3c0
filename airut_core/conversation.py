"""conversation.json: what the runner keeps about a conversation.

Written only by airut-runner; read by the dashboard and by `airut submit
--conversation` (to find the conversation's repository). Lives in
<state>/conversations/<id>/ next to the agent's workspace and session state.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

from airut_core import paths, schema
from airut_core.schema import Match, Range
from airut_core.spool import dump, utc_now, write_atomic

FILE = "conversation.json"
LAST_REPLY_CHARS = 3000
TEXT_KEPT = 20_000  # of a task's request and reply, for the dashboard
# What Claude Code prints as a session id (a UUID today); it becomes a command-line
# argument of the next task, so nothing else is accepted.
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class ConversationError(ValueError):
    """conversation.json cannot be read or does not match its schema."""


@dataclass
class ReplySummary:
    task_id: str
    outcome: str
    time: str = field(default_factory=utc_now)
    sender: str | None = None  # who asked (`airut tasks`); absent in older conversations
    channel: str | None = None
    unit: str | None = None  # the task's unit: its journal
    duration_ms: int | None = None
    cost_usd: float | None = None
    turns: int | None = None
    usage: dict[str, int | float] = field(default_factory=dict)
    # Where the run's output is in events.jsonl, when it started, under which limits
    # and image: what the dashboard shows of a finished task.
    started: str | None = None
    events_offset: int | None = None
    events_end: int | None = None
    limits: dict[str, int | float] = field(default_factory=dict)
    image: str | None = None
    image_created: float | None = None  # seconds since the epoch
    # What was asked and what was answered, cut to TEXT_KEPT characters each.
    request: str = ""
    reply: str = ""


@dataclass
class Conversation:
    conversation_id: str
    repo: str
    model: str  # pinned at creation: later config changes do not move a conversation
    effort: str | None = None
    created: str = field(default_factory=utc_now)
    session_id: Annotated[str, Match(SESSION_ID, "session id")] | None = None  # to --resume
    replies: list[ReplySummary] = field(default_factory=list)
    # The latest successful answer, cut to LAST_REPLY_CHARS: the context a fresh
    # session gets when the old one cannot be resumed.
    last_reply: str = ""
    # Container root is this host uid (and gid), the conversation's own range of
    # USERNS_SIZE ids; None for conversations made before ranges existed.
    uid_base: Annotated[int, Range(min=65536)] | None = None

    def replied_to(self, task_id: str) -> bool:
        return any(r.task_id == task_id for r in self.replies)


def new_id(state_dir: Path | str) -> str:
    """A fresh 8-hex conversation id not used on this host."""
    while True:
        cid = secrets.token_hex(4)
        if not paths.conversation_dir(state_dir, cid).exists():
            return cid


def load(state_dir: Path | str, conversation_id: str) -> Conversation | None:
    """The conversation, None if there is none, ConversationError if it is unreadable."""
    path = paths.conversation_dir(state_dir, conversation_id) / FILE
    try:
        data = json.loads(path.read_bytes())
        return schema.build(Conversation, data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError, SchemaError
        raise ConversationError(f"{path}: {e}") from e


def save(state_dir: Path | str, conversation: Conversation) -> None:
    save_in(paths.conversation_dir(state_dir, conversation.conversation_id), conversation)


def save_in(directory: Path, conversation: Conversation) -> None:
    write_atomic(directory / FILE, dump(asdict(conversation)), mode=0o640,
                 gid=paths.daemon_gid())
