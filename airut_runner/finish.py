"""Finishing: a task's unit ended (or the task never started); what happened becomes
a reply.

In a worker thread, because the agent's output is hostile and may be large: read this
run's part of events.jsonl (bounded and checked, stream.read), classify the ending,
collect the outbox, write the reply's text. Then on the loop's thread: record the
reply in the conversation, write the reply record, release what the task holds, and
forget the task. A resumed session the API cannot go on with is run once more, in a
fresh session, instead.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from airut_core import conversation, paths, schema
from airut_core.config import ResourceLimits
from airut_core.conversation import LAST_REPLY_CHARS, TEXT_KEPT, Conversation, ReplySummary
from airut_core.records import ReplyRecord, TaskRecord
from airut_runner import outbox, outcome, stream
from airut_runner.context import Context, merged_of, resource, state_of
from airut_runner.outcome import Exit

logger = logging.getLogger("airut.runner")
SANDBOX_OFF = ("Warning: the network sandbox is off for this repository "
               "(repos.{repo}.network.sandbox: false): the agent had unrestricted network "
               "access, and masked secrets were not available to it.")


@dataclass
class Ending:
    result: str  # an outcome, or outcome.RETRY_FRESH's request for a fresh session
    summary: stream.RunSummary
    exit: Exit
    text: str = ""
    attachments: list[str] = field(default_factory=list)
    retry_fresh: bool = False  # run once more in a fresh session instead of replying


def begin(ctx: Context, name: str, exit: Exit | None = None) -> None:
    """Hand the task's ending to a worker. Without `exit`, the unit's finished/ marker
    says how it ended."""
    invocation = None
    if exit is None:
        marker = ctx.peek(ctx.spool.finished, name) or {"service_result": "unknown"}
        exit = Exit.from_marker(marker)
        invocation = marker.get("invocation_id")
    else:
        # An ending no unit wrote down (lost, stopped before it ran) is written down
        # here: a finish that fails is retried as this ending, never prepared again.
        ctx.spool.finished.put(name, asdict(exit))
    ctx.running.pop(name, None)
    ctx.building.pop(name, None)
    ctx.waiting_ready.pop(name, None)
    ctx.finishing[name] = ctx.submit(summarize, ctx, name, exit,
                                     invocation if isinstance(invocation, str) else None,
                                     pool=ctx.finish_pool)


def summarize(ctx: Context, name: str, exit: Exit, invocation: str | None) -> Ending:
    """Worker thread: what happened, and the reply's text."""
    record, task = ctx.task(name)
    state = state_of(record)
    repo = ctx.cfg.repos.get(task.repo)
    limits = repo.resource_limits if repo else ResourceLimits()
    conv = _conversation(ctx, task.conversation_id, task.repo)
    cdir = paths.conversation_dir(ctx.state_dir, conv.conversation_id) if conv else None
    offset = state.get("events_offset")
    summary = stream.RunSummary()
    if cdir and isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
        summary = stream.read(cdir / "events.jsonl", offset)
    disk = state.get("disk_exceeded") if isinstance(state.get("disk_exceeded"), dict) else None
    result = outcome.classify(exit, state.get("stop_requested") is True, summary,
                              resumed=state.get("resumed") is True, over_disk=bool(disk))
    if result in outcome.RETRY_FRESH and state.get("resumed") is True \
            and not state.get("fresh_retry") and conv:
        return Ending(result, summary, exit, retry_fresh=True)
    if result == outcome.SESSION_LOST:
        result = "failed"  # a fresh session was tried already
    if result == "failed" and not summary.error_tail() and invocation:
        summary.other_lines.extend(journal_tail(invocation))
    sent = outbox.Collected()
    if cdir and result != "timeout":  # after a timeout, partial output waits in /outbox
        files = ctx.spool.outgoing(task.channel).path / f"{name}.files"
        sent = outbox.collect(cdir / "outbox", files, ctx.cfg.execution.outbox_max_bytes)
    note = outcome.CONTEXT_RESET_NOTE.get(state.get("fresh_retry"), "") \
        if isinstance(state.get("fresh_retry"), str) else ""
    text = outcome.reply_text(result, summary, limits, task.repo, note=note, disk=disk)
    if sent.notes:
        text = f"{text}\n\n{sent.note()}"
    if state.get("sandbox") is False:
        text = f"{text}\n\n{SANDBOX_OFF.format(repo=task.repo)}"
    return Ending(result, summary, exit, text, sent.names)


def complete(ctx: Context, name: str) -> None:
    """The loop's thread: the worker is done; reply, release, forget."""
    ending = ctx.finishing.pop(name).result()  # the worker's exception, if any
    record, task = ctx.task(name)
    state = state_of(record)
    conv = _conversation(ctx, task.conversation_id, task.repo)
    if ending.retry_fresh and conv:
        retry_fresh(ctx, name, conv, ending.result)
        return
    cdir = paths.conversation_dir(ctx.state_dir, conv.conversation_id) if conv else None
    release(ctx, name, cdir)
    if conv:
        record_reply(ctx, conv, name, ending, task, state, cdir)
    merged = merged_of(record)
    files = ctx.spool.outgoing(task.channel).path / f"{name}.files"
    reply = ReplyRecord(
        task_id=name, conversation_id=task.conversation_id, repo=task.repo,
        channel=task.channel, reply_to=task.reply_to, text=ending.text,
        outcome=ending.result, unit=unit_of(state), usage=ending.summary.usage(),
        merged_task_ids=[m["task_id"] for m in merged],
        merged_reply_to=[m["reply_to"] for m in merged],
        attachments=ending.attachments,
        attachments_dir=str(files) if ending.attachments else None)
    # Named by the task: writing it twice replaces it, never duplicates it.
    ctx.spool.outgoing(task.channel).ensure().put(name, reply.to_dict())
    ctx.spool.active.remove(name)
    ctx.spool.finished.remove(name)
    ctx.tasks.forget(name)
    ctx.log(name, task).info("task finished: %s (%s)", ending.result,
                             ending.exit.service_result or "not started")


def unit_of(state: dict) -> str | None:
    return state.get("unit") if isinstance(state.get("unit"), str) else None


def record_reply(ctx: Context, conv: Conversation, name: str, ending: Ending,
                 task: TaskRecord, state: dict, cdir: Path | None) -> None:
    result, summary = ending.result, ending.summary
    conv.session_id = summary.session_id or conv.session_id
    if result == "success":
        conv.last_reply = summary.reply_text()[:LAST_REPLY_CHARS]
    if not conv.replied_to(name):
        usage = summary.usage()
        offset = schema.count(state.get("events_offset"))
        limits = state.get("limits") if isinstance(state.get("limits"), dict) else {}
        conv.replies.append(ReplySummary(
            task_id=name, outcome=result, sender=task.sender[:200], channel=task.channel,
            unit=unit_of(state), duration_ms=usage.get("duration_ms"),
            cost_usd=usage.get("cost_usd"), turns=usage.get("turns"), usage=usage,
            started=state.get("started") if isinstance(state.get("started"), str) else None,
            events_offset=offset, events_end=_events_size(cdir) if offset is not None else None,
            limits={k: v for k, v in limits.items() if isinstance(k, str)
                    and isinstance(v, int | float) and not isinstance(v, bool)},
            image=state.get("image") if isinstance(state.get("image"), str) else None,
            image_created=created if isinstance(created := state.get("image_created"),
                                                float | int) else None,
            request=task.text[:TEXT_KEPT], reply=ending.text[:TEXT_KEPT]))
    conversation.save(ctx.state_dir, conv)


def _events_size(cdir: Path | None) -> int | None:
    """Where this run's output ends: the unit is gone, nothing appends any more."""
    try:
        return (cdir / "events.jsonl").stat().st_size if cdir else None
    except OSError:
        return None


def retry_fresh(ctx: Context, name: str, conv: Conversation, reason: str) -> None:
    """The session cannot go on: once, run the task again in a fresh session. The loop
    prepares it again (it is claimed, and nobody works on it)."""
    ctx.log(name).warning("%s: retrying once in a fresh session", reason.replace("_", " "))
    release(ctx, name, paths.conversation_dir(ctx.state_dir, conv.conversation_id))
    conv.session_id = None
    conversation.save(ctx.state_dir, conv)
    ctx.note(name, {"fresh_retry": reason},
             drop=("unit", "events_offset", "resumed", "disk_exceeded"))
    ctx.spool.finished.remove(name)


def release(ctx: Context, name: str, cdir: Path | None) -> None:
    """What a task holds besides its records: its env file, policy and network."""
    ctx.building.pop(name, None)
    ctx.running.pop(name, None)
    ctx.waiting_ready.pop(name, None)
    if cdir:
        (cdir / "tasks" / f"{name}.env").unlink(missing_ok=True)
    ctx.sandbox.remove_policy(name)
    try:
        ctx.podman.remove_network(resource(name))
    except Exception as e:
        ctx.log(name).warning("cannot remove the network of the task: %s", e)


def _conversation(ctx: Context, cid: str | None, repo: str) -> Conversation | None:
    """The task's conversation, if it has one of its own repository (a task that never
    started may still name another repository's conversation, which is not its own)."""
    if not cid:
        return None
    try:
        conv = conversation.load(ctx.state_dir, cid)
    except conversation.ConversationError as e:
        logger.error("%s", e)
        return None
    return conv if conv and conv.repo == repo else None


def journal_tail(invocation: str, lines: int = 10) -> list[str]:
    """A unit's own output (podman's errors, a build's log), from the journal."""
    try:
        out = subprocess.run(["journalctl", "--no-pager", "-o", "cat", "-n", str(lines),
                              f"_SYSTEMD_INVOCATION_ID={invocation}"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in out.splitlines() if line.strip()]
