"""Where every task is: waiting in the spool, claimed by the runner, or finished and
recorded in its conversation. Read by `airut tasks`/`airut status` and the dashboard;
written by nobody here.

Spool records are other users' bytes (a channel writes incoming/): every field is
taken only if it has the right type, and a record that cannot be read is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airut_core import conversation, paths, spool
from airut_core.conversation import Conversation, ConversationError

WAITING = ("queued", "preparing", "building", "running", "stopping")
TEXT_PREVIEW = 300  # characters of a waiting task's text kept in the index


@dataclass
class TaskLine:
    task: str
    conversation: str | None
    repo: str
    sender: str
    outcome: str  # an outcome of records.OUTCOMES, or one of WAITING
    time: str  # when it finished; when it was created while it waits or runs
    duration_s: float | None = None
    cost_usd: float | None = None
    unit: str | None = None
    channel: str | None = None
    turns: int | None = None
    started: str | None = None
    model: str | None = None
    text: str | None = None  # the start of the message, while it waits or runs
    merged: list[str] = field(default_factory=list)  # follow-ups answered with it
    image: str | None = None  # the image it runs in, once the runner chose it


Loader = Callable[[Path, str], Conversation | None]


def conversation_ids(state_dir: Path | str) -> list[str]:
    try:
        return sorted(e for e in os.listdir(Path(state_dir) / "conversations")
                      if paths.CONVERSATION_ID.match(e))
    except OSError:
        return []


def finished(state_dir: Path | str, repo: str | None = None,
             load: Loader = conversation.load) -> Iterator[TaskLine]:
    """Every task a conversation recorded a reply for."""
    for cid in conversation_ids(state_dir):
        try:
            conv = load(Path(state_dir), cid)
        except (ConversationError, OSError):
            continue
        if conv is None or (repo and conv.repo != repo):
            continue
        for r in conv.replies:
            yield TaskLine(r.task_id, cid, conv.repo, r.sender or "-", r.outcome, r.time,
                           r.duration_ms / 1000 if r.duration_ms else None, r.cost_usd,
                           r.unit, r.channel, r.turns, r.started, conv.model)


def waiting(spool_dir: Path | str, repo: str | None = None) -> list[TaskLine]:
    """Tasks in incoming/ (queued) and claimed in active/ (preparing, running or
    stopping), oldest first. A queued task of a conversation that already has one
    waiting or running is a follow-up: the runner merges it into that task's run or
    answers it next, and the line of the first one lists it."""
    sp = paths.Spool(spool_dir)
    found: list[TaskLine] = []
    for stage, claimed in ((sp.active, True), (sp.incoming, False)):
        for name in stage.names():
            try:
                record = stage.read(name)
            except (OSError, spool.RecordError):
                continue
            if not repo or record.get("repo") == repo:
                found.append(line_of(name, record, claimed))
    return found


def find_waiting(spool_dir: Path | str, task: str) -> tuple[TaskLine, dict] | None:
    """One task claimed or queued, and its record; None when it is in neither stage."""
    sp = paths.Spool(spool_dir)
    for stage, claimed in ((sp.active, True), (sp.incoming, False)):
        try:
            record = stage.read(task)
        except (OSError, spool.RecordError):
            continue
        return line_of(task, record, claimed), record
    return None


def line_of(name: str, record: dict, claimed: bool) -> TaskLine:
    """A waiting task's line; the runner's notes (state) count only on its own records."""
    state = state_of(record) if claimed else {}
    return TaskLine(
        name, _str(record.get("conversation_id")), _str(record.get("repo")) or "-",
        _str(record.get("sender")) or "-", phase(state) if claimed else "queued",
        _str(record.get("created")) or "", unit=_str(state.get("unit")),
        channel=_str(record.get("channel")), started=_str(state.get("started")),
        text=(_str(record.get("text")) or "")[:TEXT_PREVIEW], merged=merged_ids(state),
        image=_str(state.get("image")))


def state_of(record: dict) -> dict:
    state = record.get("state")
    return state if isinstance(state, dict) else {}


def merged_ids(state: dict) -> list[str]:
    """The follow-ups the runner merged into a claimed task (its own notes)."""
    merged = state.get("merged")
    return [m["task_id"] for m in merged if isinstance(m, dict)
            and isinstance(m.get("task_id"), str)] if isinstance(merged, list) else []


def phase(state: dict) -> str:
    """A claimed task's phase, from the runner's notes on its record."""
    if state.get("stop_requested") is True:
        return "stopping"
    return "running" if isinstance(state.get("unit"), str) else "preparing"


def tasks(state_dir: Path | str, spool_dir: Path | str, repo: str | None = None,
          since: timedelta | None = None, load: Loader = conversation.load) -> list[TaskLine]:
    """Finished tasks from the conversations, waiting and running ones from the spool;
    newest first. `since` keeps finished tasks that recent, and every waiting one."""
    found = [*finished(state_dir, repo, load), *waiting(spool_dir, repo)]
    if since is not None:
        cutoff = (datetime.now(UTC) - since).isoformat()
        found = [t for t in found if t.time >= cutoff or t.outcome in WAITING]
    return sorted(found, key=lambda t: t.time, reverse=True)


def queue_depths(root: Path | str) -> dict[str, int]:
    """Records per stage; per channel for outgoing/, deferred/ and failed/."""
    root = Path(root)
    depths = {}
    for stage in ("incoming", "active", "finished", "builds", "control"):
        depths[stage] = count(root / stage)
    for parent in ("outgoing", "deferred", "failed"):
        try:
            children = sorted(p for p in (root / parent).iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            depths[f"{parent}/{child.name}"] = count(child)
    return depths


def count(stage: Path) -> int:
    try:
        return sum(1 for e in os.listdir(stage) if e.endswith(spool.SUFFIX) and e[0] != ".")
    except OSError:
        return 0


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
