"""The records that travel through the spool: task, reply, control, command.

Each record is a JSON object with a "schema" member such as "airut.task/1". A
reader accepts its own major version and refuses others with a clear error, so a
newer writer never gets half-understood. Envelope members any stage owner may
add: "failures" (see spool.record_failure) and "state" (the owner's notes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from airut_core import paths, schema
from airut_core.schema import Match, OneOf
from airut_core.spool import RecordError, new_name, utc_now

TaskId = Annotated[str, Match(paths.TASK_ID, "task id")]
ConversationId = Annotated[str, Match(paths.CONVERSATION_ID, "conversation id")]
Channel = Annotated[str, Match(paths.CHANNEL, "channel name")]
RepoId = Annotated[str, Match(paths.REPO_ID, "repository id")]

OUTCOMES = ("success", "failed", "out_of_memory", "timeout", "stopped", "auth_failed",
            "rate_limited", "overloaded", "prompt_too_long", "disk_limit")
ENVELOPE = ("schema", "failures", "state")


@dataclass
class Record:
    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    @classmethod
    def from_dict(cls, data: dict, where: str = "record") -> Any:
        kind, _, version = str(data.get("schema", "")).partition("/")
        if kind != f"airut.{cls.KIND}":
            raise RecordError(f"{where}: expected an airut.{cls.KIND} record, "
                              f"got schema {data.get('schema')!r}")
        if version != str(cls.VERSION):
            raise RecordError(f"{where}: {kind} version {version} is not understood by this "
                              f"airut (it reads version {cls.VERSION})")
        body = {k: v for k, v in data.items() if k not in ENVELOPE}
        try:
            return schema.build(cls, body)
        except schema.SchemaError as e:
            raise RecordError(f"{where}: {e}") from e

    def to_dict(self) -> dict:
        return {"schema": f"airut.{self.KIND}/{self.VERSION}", **dataclasses.asdict(self)}


@dataclass
class TaskRecord(Record):
    """A request to run the agent: one message from one sender."""

    KIND: ClassVar[str] = "task"
    repo: RepoId
    channel: Channel
    reply_to: str  # channel-specific address of the reply (mailbox, thread, terminal)
    sender: str
    text: str
    conversation_id: ConversationId | None = None  # None starts a new conversation
    attachments_dir: str | None = None
    model: str | None = None  # only honoured for a new conversation
    task_id: TaskId = field(default_factory=new_name)
    created: str = field(default_factory=utc_now)


@dataclass
class ReplyRecord(Record):
    """What the runner sends back through the task's channel."""

    KIND: ClassVar[str] = "reply"
    task_id: TaskId
    conversation_id: ConversationId | None
    repo: RepoId
    channel: Channel
    reply_to: str
    text: str
    outcome: Annotated[str, OneOf(OUTCOMES)]
    # Other tasks of the conversation merged into this one: this reply answers them too.
    merged_task_ids: list[TaskId] = field(default_factory=list)
    # Their reply_to addresses, in the order of merged_task_ids: a channel answers every
    # distinct one (merged messages may come from different senders).
    merged_reply_to: list[str] = field(default_factory=list)
    attachments: list[str] = field(default_factory=list)  # file names in attachments_dir
    attachments_dir: str | None = None
    unit: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=utc_now)


@dataclass
class ControlRecord(Record):
    """A request about a running or waiting task."""

    KIND: ClassVar[str] = "control"
    task_id: TaskId
    action: Annotated[str, OneOf(("stop",))] = "stop"
    requested_by: str = ""
    created: str = field(default_factory=utc_now)


@dataclass
class CommandRecord(Record):
    """A command to run in a task's sandbox (`airut sandbox run`, a schedule's
    trigger_command); written by root's `airut` only (airut_core/commands.py)."""

    KIND: ClassVar[str] = "command"
    argv: list[str]
    requested_by: str
    # The image, allowlist, secrets and limits come from this repository's default
    # branch; without it, from `tree` and `allowlist` (read from a trusted checkout).
    repo: RepoId | None = None
    # The host directory mounted at /workspace, and the host ids its container root
    # maps to; None: a fresh clone of the repository's default branch.
    workspace: str | None = None
    workspace_owner: list[int] = field(default_factory=list)  # [uid, gid]
    tree: str | None = None  # the image's context: <id>.context/ next to the record
    allowlist: str | None = None  # the allowlist file's text (no repository)
    timeout: Annotated[int, schema.Range(min=1)] | None = None  # seconds; else the limits'
    command_id: TaskId = field(default_factory=new_name)
    created: str = field(default_factory=utc_now)
