"""Claiming: which waiting tasks may start now.

One task per conversation at a time: a conversation with any record in active/
(preparing, building, running, finishing, or waiting out a retry) takes nothing new
from incoming/; everything waiting for it from one channel is claimed together once it
is free and merged into its next task. At most execution.max_concurrent tasks prepare,
build or run at once.

incoming/ is written by channels, some of them less trusted users than the runner.
So every record is checked whole before it is claimed, and claiming does not rename
the channel's file into active/ (its writer could keep a link to it and change it
later): the runner writes a record of its own, made from the checked task, and then
removes the channel's. A record naming a task already claimed or answered is a
duplicate: after a crash between the two steps it is the same task and just goes;
otherwise it is set aside. Attachments are taken only from the spool's attachments/.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from airut_core.records import RecordError, TaskRecord
from airut_runner.context import Context, Refused, as_task, merged_of

ATTACHMENTS_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")
INCOMING_MAX = 8 << 20  # bytes of a channel's record (a mail's text is capped far below)
NOT_FROM_CHANNELS = ("state", "failures")  # the runner's own notes


def check(ctx: Context, name: str, record: dict, where: str) -> TaskRecord:
    """The record as a task, or Refused saying why not."""
    task = as_task(record, name, where)
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


@dataclass
class Waiting:
    """What the loop knows of incoming/ between passes: checked records, by name, valid
    as long as the file is the same (inode, size, time)."""

    seen: dict[str, tuple[tuple[int, int, int], TaskRecord]]

    def __init__(self) -> None:
        self.seen = {}


def read_incoming(ctx: Context, name: str, cache: Waiting,
                  claimed: set[str]) -> TaskRecord | None:
    """A waiting record, checked; None when it is gone or a leftover of a claim."""
    path = ctx.spool.incoming.file(name)
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        cache.seen.pop(name, None)
        return None
    key = (info.st_ino, info.st_size, info.st_mtime_ns)
    known = cache.seen.get(name)
    if known and known[0] == key:
        task = known[1]
    else:
        task = checked_incoming(ctx, name)
        if task is None:
            return None
        cache.seen[name] = (key, task)
    if name in claimed:
        return _duplicate(ctx, name, task, cache)
    return task


def checked_incoming(ctx: Context, name: str) -> TaskRecord | None:
    """A channel's record as a task: None when it is gone, Refused when it is not one."""
    try:
        record = ctx.spool.incoming.read(name, max_bytes=INCOMING_MAX)
    except FileNotFoundError:
        return None
    except RecordError as e:
        raise Refused(str(e)) from e
    carried = [k for k in NOT_FROM_CHANNELS if k in record]
    if carried:
        raise Refused(f"incoming/{name}: a channel's record may not carry "
                      f"{', '.join(carried)} (the runner's own notes)")
    return check(ctx, name, record, "incoming")


def _duplicate(ctx: Context, name: str, task: TaskRecord, cache: Waiting) -> None:
    """The task is claimed (or merged into a claimed one) already."""
    mine = ctx.peek(ctx.spool.active, name)
    body = {k: v for k, v in mine.items() if k not in NOT_FROM_CHANNELS}
    if mine and body != task.to_dict():
        raise Refused(f"task {name} is claimed already, with other contents")
    ctx.spool.incoming.remove(name)  # left by a crash between writing active/ and this
    cache.seen.pop(name, None)
    ctx.log(name, task).info("removed incoming/%s: the task is claimed already", name)
    return None


def claimed_ids(ctx: Context) -> set[str]:
    """Tasks in active/, and those merged into them."""
    ids = set()
    for name in ctx.spool.active.names():
        ids.add(name)
        ids.update(m["task_id"] for m in merged_of(ctx.peek(ctx.spool.active, name)))
    return ids


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


def claim(ctx: Context, tasks: list[TaskRecord]) -> str:
    """Claim a conversation's waiting records: the newest carries the others. The
    runner's record goes into active/ first, then the channel's records go."""
    primary = tasks[-1]
    name = primary.task_id
    record = primary.to_dict()
    if len(tasks) > 1:
        record["state"] = {"merged": [t.to_dict() for t in tasks[:-1]]}
    ctx.spool.active.put(name, record)
    for task in tasks:
        ctx.spool.incoming.remove(task.task_id)
    if len(tasks) > 1:
        ctx.log(name, primary).info("claimed task, merging %d earlier messages: %s",
                                    len(tasks) - 1, ", ".join(t.task_id for t in tasks[:-1]))
    else:
        ctx.log(name, primary).info("claimed task from incoming/")
    return name
