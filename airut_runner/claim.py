"""Claiming: which waiting tasks may start now.

One task per conversation at a time: a conversation with any record in active/
(preparing, building, running, finishing, or waiting out a retry) takes nothing new
from incoming/; everything waiting for it is claimed together once it is free and
merged into its next task. At most execution.max_concurrent tasks prepare, build or
run at once. Claiming is a rename into active/ (spool rule 3).

Every record is checked whole before it is claimed: a channel (or anyone who can
write incoming/) may have written anything, and one bad record must not stop the
others. Attachments are taken only from the spool's attachments/ directory.
"""

from __future__ import annotations

import re

from airut_core.records import RecordError, TaskRecord
from airut_runner.context import Context, Refused

ATTACHMENTS_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")


def check(ctx: Context, name: str, record: dict, where: str) -> TaskRecord:
    """The record as a task, or Refused saying why not."""
    try:
        task = TaskRecord.from_dict(record, f"{where}/{name}")
    except RecordError as e:
        raise Refused(str(e)) from e
    if task.task_id != name:
        raise Refused(f"record {name} carries task id {task.task_id}")
    if task.attachments_dir is not None:
        check_attachments(ctx, task.attachments_dir)
    return task


def check_attachments(ctx: Context, directory: str) -> None:
    root = ctx.spool.root / "attachments"
    parent, _, leaf = directory.rstrip("/").rpartition("/")
    if parent != str(root) or not ATTACHMENTS_NAME.match(leaf):
        raise Refused(f"attachments_dir {directory!r} is not a directory of {root}",
                      reply="airut refused this task: its attachments were not in the "
                            "place airut keeps attachments. The operator can find the "
                            "request in spool failed/incoming/.")


def read_incoming(ctx: Context, name: str) -> TaskRecord | None:
    """A waiting record, checked; None when it is gone."""
    try:
        record = ctx.spool.incoming.read(name)
    except FileNotFoundError:
        return None
    except RecordError as e:
        raise Refused(str(e)) from e
    return check(ctx, name, record, "incoming")


def blocked_conversations(ctx: Context) -> set[str]:
    """Conversations with a task claimed: nothing more for them until it is done."""
    return {cid for name in ctx.spool.active.names() if (cid := ctx.conversation_of(name))}


def group(waiting: list[TaskRecord]) -> list[list[TaskRecord]]:
    """Waiting tasks in order, those of one conversation and one channel together.

    Only one channel's messages merge: the reply goes back through the channel of
    the task that carries it, so a mail merged into a command-line task would never
    be answered by mail. The conversation's messages from another channel wait for
    its next task."""
    groups: dict[tuple[str, str], list[TaskRecord]] = {}
    for task in waiting:
        key = (task.conversation_id or f"new:{task.task_id}", task.channel)
        groups.setdefault(key, []).append(task)
    return list(groups.values())


def claim(ctx: Context, tasks: list[TaskRecord]) -> str | None:
    """Claim a conversation's waiting records; the newest carries the others."""
    names = [t.task_id for t in tasks]
    claimed = [t for t in tasks if ctx.spool.incoming.move_to(t.task_id, ctx.spool.active)]
    if not claimed:
        return None
    primary = claimed[-1]
    name = primary.task_id
    if len(claimed) > 1:
        record = ctx.spool.active.read(name)
        earlier = [t.to_dict() for t in claimed[:-1]]
        state = record.get("state") if isinstance(record.get("state"), dict) else {}
        state["merged"] = earlier
        record["state"] = state
        ctx.spool.active.put(name, record)
        for other in claimed[:-1]:
            ctx.spool.active.remove(other.task_id)
        ctx.log(name, primary).info("claimed task, merging %d earlier messages: %s",
                                    len(earlier), ", ".join(t.task_id for t in claimed[:-1]))
    else:
        ctx.log(name, primary).info("claimed task from incoming/")
    if len(claimed) < len(names):
        ctx.log(name, primary).info("some records were claimed by someone else meanwhile")
    return name
