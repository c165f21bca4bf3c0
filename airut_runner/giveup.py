"""Setting aside what cannot be done, with every reason, and telling the sender.

Nothing is dropped: an invalid record goes to failed/<stage>/, a task that cannot run
to failed/active/, each with the list of its failures; the sender gets a reply saying
what happened whenever the record says who the sender is.
"""

from __future__ import annotations

import logging

from airut_core import paths
from airut_core.records import RecordError, ReplyRecord
from airut_core.spool import Stage
from airut_runner.context import Context, merged_of

logger = logging.getLogger("airut.runner")

SET_ASIDE = ("airut could not run this task: {reason}\n\nThe request was set aside for the "
             "operator (spool failed/{stage}/); nothing was lost.")


def set_aside(ctx: Context, stage: Stage, name: str, failures: list[dict]) -> None:
    """An invalid or unreadable record: into failed/<stage>/ with its reasons."""
    failed = ctx.spool.failed(stage.path.name).ensure()
    try:
        record = stage.read(name)
    except FileNotFoundError:
        return
    except (RecordError, OSError):
        record = None  # not a readable record (not JSON, a socket...): moved as it is
    logger.error("set aside %s/%s: %s", stage.path.name, name, _last(failures),
                 extra={"task": name})
    if record is None:
        stage.move_to(name, failed)
        return
    record["failures"] = failures
    failed.put(name, record)
    stage.remove(name)
    tell_sender(ctx, name, record, failures, stage.path.name)


def give_up(ctx: Context, name: str, failures: list[dict]) -> None:
    """A claimed task that cannot run: failed/active/, what it holds released, and its
    sender told (the last failure's own reply, or the reason)."""
    from airut_runner import finish  # finish imports this module

    try:
        record = ctx.spool.active.read(name)
    except FileNotFoundError:
        return
    except RecordError:
        set_aside(ctx, ctx.spool.active, name, failures)
        return
    cid = record.get("conversation_id")
    cdir = paths.conversation_dir(ctx.state_dir, cid) if _valid_conversation(cid) else None
    finish.release(ctx, name, cdir)
    record["failures"] = failures
    ctx.spool.failed("active").ensure().put(name, record)
    ctx.spool.active.remove(name)
    ctx.spool.finished.remove(name)
    ctx.log(name).error("task set aside in failed/active/ after %d failure(s): %s",
                        len(failures), _last(failures))
    tell_sender(ctx, name, record, failures, "active")


def tell_sender(ctx: Context, name: str, record: dict, failures: list[dict],
                stage: str) -> None:
    """A failure reply, if the record names a channel and an address that make sense."""
    last = failures[-1] if failures else {}
    text = last.get("reply") or SET_ASIDE.format(reason=_last(failures), stage=stage)
    # Merged messages are the runner's own notes, in active/ only: in a channel's
    # record they are the channel's say, and name nobody to answer.
    merged = merged_of(record) if stage == "active" else []
    try:
        reply = ReplyRecord.from_dict(ReplyRecord(
            task_id=name, conversation_id=(record.get("conversation_id") if
                                           _valid_conversation(record.get("conversation_id"))
                                           else None),
            repo=record.get("repo"), channel=record.get("channel"),
            reply_to=record.get("reply_to"), text=text, outcome="failed",
            merged_task_ids=[m["task_id"] for m in merged],
            merged_reply_to=[m["reply_to"] for m in merged]).to_dict())
    except (RecordError, TypeError) as e:
        logger.warning("no reply for set-aside task %s: its record does not say where (%s)",
                       name, e, extra={"task": name})
        return
    ctx.spool.outgoing(reply.channel).ensure().put(name, reply.to_dict())


def _last(failures: list[dict]) -> str:
    return failures[-1].get("reason", "unknown") if failures else "unknown"


def _valid_conversation(cid: object) -> bool:
    return isinstance(cid, str) and bool(paths.CONVERSATION_ID.match(cid))
