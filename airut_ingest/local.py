"""The local channel: tasks from the command line (`airut submit`).

A task record goes into incoming/ like one from email or Slack; the reply comes
back as outgoing/local/<task>.json, which the waiting command prints.
"""

from __future__ import annotations

import getpass
import socket
import sys
import time
from pathlib import Path

from airut_core import conversation
from airut_core.config import Config, ConfigError
from airut_core.paths import Spool
from airut_core.records import ControlRecord, ReplyRecord, TaskRecord
from airut_core.spool import Doorbell, RecordError, Stage, new_name

CHANNEL = "local"


class SubmitError(Exception):
    pass


def sender() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def submit(cfg: Config, text: str, repo: str | None = None, conversation_id: str | None = None,
           model: str | None = None, attachments_dir: str | None = None) -> TaskRecord:
    """Write a task record into incoming/; returns it (its task_id names the reply)."""
    if not text.strip():
        raise SubmitError("the message is empty")
    if conversation_id:
        try:
            conv = conversation.load(cfg.paths.state, conversation_id)
        except ValueError as e:
            raise SubmitError(str(e)) from e
        if conv is None:
            raise SubmitError(f"no conversation {conversation_id} on this host")
        if repo and repo != conv.repo:
            raise SubmitError(f"conversation {conversation_id} belongs to repository {conv.repo}")
        repo = conv.repo
    if not repo:
        raise SubmitError("say which repository (--repo) or which conversation (--conversation)")
    try:
        cfg.repo(repo)
    except ConfigError as e:
        raise SubmitError(str(e)) from e
    task = TaskRecord(repo=repo, channel=CHANNEL, reply_to=sender(), sender=sender(), text=text,
                      conversation_id=conversation_id, model=model,
                      attachments_dir=attachments_dir)
    _write(Spool(cfg.paths.spool).incoming, task.task_id, task.to_dict())
    return task


def _write(stage: Stage, name: str, record: dict) -> None:
    try:
        stage.ensure().put(name, record)
    except OSError as e:
        raise SubmitError(f"cannot write to the spool at {stage.path}: {e.strerror}") from e


def wait_for_reply(cfg: Config, task_id: str, timeout: float | None = None) -> ReplyRecord | None:
    """Block until the task's reply arrives; None on timeout.

    A task merged into a later one of its conversation is answered by that task's
    reply, which names it in merged_task_ids. Replies stay in the spool (several
    waiters may want one), and the runner removes them by age.
    """
    stage = Spool(cfg.paths.spool).outgoing(CHANNEL).ensure()
    bell = Doorbell([stage.path])
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            reply = find_reply(stage, task_id)
            if reply:
                return reply
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            bell.wait(min(left, 5.0) if left is not None else 5.0)
    finally:
        bell.close()


def find_reply(stage: Stage, task_id: str) -> ReplyRecord | None:
    names = [task_id] if stage.exists(task_id) else [n for n in stage.names() if n > task_id]
    for name in names:
        try:
            reply = ReplyRecord.from_dict(stage.read(name), str(stage.file(name)))
        except FileNotFoundError:
            continue
        except RecordError as e:
            if name == task_id:
                raise SubmitError(str(e)) from e
            continue  # another task's reply: not ours to judge

        if name == task_id or task_id in reply.merged_task_ids:
            return reply
    return None


def request_stop(cfg: Config, task_id: str) -> None:
    control = ControlRecord(task_id=task_id, requested_by=sender())
    _write(Spool(cfg.paths.spool).control, new_name(), control.to_dict())


def read_text(arg: str) -> str:
    """The message: the argument, or stdin for '-', or a file for '@PATH'."""
    if arg == "-":
        return sys.stdin.read()
    if arg.startswith("@"):
        return Path(arg[1:]).read_text()
    return arg
