"""Stop requests from control/ (`airut stop`, the dashboard, `airut sandbox run`).

A request names a sandbox command (commands.py stops it) or a task wherever it is:
waiting in incoming/ (checked and claimed like any task, then answered at once as
stopped; a record that is no task is left to the claim, which sets it aside), claimed
and waiting for its image or a retry, or running (its unit is stopped; the unit's end
is handled like any other). A task whose unit has vanished is left to the loop's
check for lost units.
"""

from __future__ import annotations

from airut_core.records import ControlRecord, RecordError
from airut_runner import claim, commands, finish
from airut_runner.context import Context, Refused
from airut_runner.outcome import Exit


def handle(ctx: Context, request: str) -> None:
    """One request; removed once acted on (kept while its task is being prepared)."""
    try:
        control = ControlRecord.from_dict(ctx.spool.control.read(request),
                                          f"control/{request}")
    except FileNotFoundError:
        return
    except RecordError as e:
        raise Refused(str(e)) from e
    who = control.requested_by or "unknown"
    if commands.is_command(ctx, control.task_id):
        done = commands.stop(ctx, control.task_id, who)
    else:
        done = stop(ctx, control.task_id, who)
    if done:
        ctx.spool.control.remove(request)


def stop(ctx: Context, name: str, who: str) -> bool:
    """Stop a task; False to try again later (a worker is busy with it right now)."""
    log = ctx.log(name)
    if name in ctx.preparing or name in ctx.finishing:
        return False
    waiting = claim.checked_incoming(ctx, name)  # a channel's bytes: checked first
    if waiting is not None:
        claim.claim(ctx, [waiting])  # root's own record, as for any claim
        log.info("stopped before it started (requested by %s)", who)
        mark_stopped(ctx, name)
        finish.begin(ctx, name, Exit())
    elif name in ctx.running:
        mark_stopped(ctx, name)
        log.info("stopping unit %s (requested by %s)", ctx.running[name], who)
        if not ctx.systemd.stop(ctx.running[name]):
            log.warning("unit %s is already gone", ctx.running[name])
    elif ctx.spool.active.exists(name) and not ctx.spool.finished.exists(name):
        log.info("stopped while waiting (requested by %s)", who)
        mark_stopped(ctx, name)
        finish.begin(ctx, name, Exit())
    else:
        log.warning("stop requested by %s for a task that is not waiting or running", who)
    return True


def mark_stopped(ctx: Context, name: str) -> None:
    ctx.note(name, {"stop_requested": True})
