"""What the dashboard shows, read from what the daemons write: the spool's stages,
each conversation's conversation.json, events.jsonl, network.log and cgroup samples,
systemd's units. Nothing here writes, except `request_stop` (a control record).

Reads are cheap when nothing changed: conversations are kept by their file's identity
(re-read only when the runner replaced the file), the agent's output and the network
log are read from where the last read stopped.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airut_core import cgroup, conversation, paths, schema, tasks, timeline
from airut_core.config import Config
from airut_core.conversation import Conversation, ReplySummary
from airut_core.records import ControlRecord
from airut_core.sandbox import ALLOWLIST_FILE
from airut_core.spool import RecordError, new_name
from airut_core.tasks import TaskLine
from airut_web import netlog
from airut_web.systemd import Units, UnitState

STOPPABLE = ("queued", "preparing", "building", "running")
RECENT = 50  # finished tasks on the overview
DAYS = 30  # of the overview's charts
BLOCKED_HINT = (f"Not on the repository's network allowlist ({ALLOWLIST_FILE} on its default "
                "branch); a change takes effect once it is merged there.")


class Conversations:
    """conversation.json files, parsed once per version of the file."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int, int], Conversation]] = {}
        self._lock = threading.Lock()

    def load(self, state_dir: Path, cid: str) -> Conversation | None:
        path = paths.conversation_dir(state_dir, cid) / conversation.FILE
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._cache.get(cid)
        if hit and hit[0] == key:
            return hit[1]
        conv = conversation.load(state_dir, cid)
        if conv is not None:
            with self._lock:
                self._cache[cid] = (key, conv)
        return conv


@dataclass
class TaskView:
    line: TaskLine
    summary: ReplySummary | None  # finished: what the runner recorded
    conversation: Conversation | None
    limits: dict
    live: cgroup.Usage | None  # while it runs
    samples: list[cgroup.Sample]
    timeline: timeline.Timeline
    network: list[netlog.Line]
    network_counts: dict[str, int]
    stop_pending: bool
    text: str  # what was asked

    @property
    def stoppable(self) -> bool:
        return stoppable(self.line, self.stop_pending)


@dataclass
class Overview:
    waiting: list[TaskLine]  # queued, preparing, running, stopping: oldest first
    followups: dict[str, list[str]]  # task -> queued tasks of its conversation after it
    recent: list[TaskLine]
    units: list[UnitState]
    depths: dict[str, int]
    days: list[str]
    per_day: dict[str, list[float]]  # outcome -> tasks per day
    cost_per_day: list[float]
    health: dict


@dataclass
class State:
    cfg: Config
    units: Units
    conversations: Conversations = field(default_factory=Conversations)
    timelines: timeline.Reader = field(default_factory=timeline.Reader)
    netlogs: netlog.Reader = field(default_factory=netlog.Reader)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _index: tuple | None = None  # (fingerprint, finished tasks, by task id)
    _days: tuple | None = None  # ((list id, day), per-day counts, the list)

    @property
    def state_dir(self) -> Path:
        return Path(self.cfg.paths.state)

    @property
    def spool(self) -> paths.Spool:
        return paths.Spool(self.cfg.paths.spool)

    # -- lists ------------------------------------------------------------------------

    def finished(self, repo: str | None = None) -> list[TaskLine]:
        """Finished tasks, newest first: made again only when a conversation changed."""
        every = self._finished_index()[0]
        return every if repo is None else [t for t in every if t.repo == repo]

    def _finished_index(self) -> tuple[list[TaskLine], dict[str, TaskLine]]:
        root = os.path.join(self.cfg.paths.state, "conversations")
        key = []
        for cid in tasks.conversation_ids(self.cfg.paths.state):
            try:
                st = os.stat(os.path.join(root, cid, conversation.FILE))
            except OSError:
                continue
            key.append((cid, st.st_ino, st.st_mtime_ns, st.st_size))
        with self._lock:
            if self._index is not None and self._index[0] == key:
                return self._index[1], self._index[2]
        found = sorted(tasks.finished(self.state_dir, None, self.conversations.load),
                       key=lambda t: t.time, reverse=True)
        by_task = {t.task: t for t in found}
        with self._lock:
            self._index = (key, found, by_task)
        return found, by_task

    def waiting(self) -> list[TaskLine]:
        found = self._shown(tasks.waiting(self.spool.root), self.stop_requests())
        return sorted(found, key=lambda t: (t.outcome == "queued", t.time))

    def _shown(self, lines: list[TaskLine], stopping: set[str]) -> list[TaskLine]:
        """What the spool alone cannot say: a stop asked for and not yet acted on, an
        image being built."""
        builds = self.units.builds() if any(t.outcome == "preparing" for t in lines) else set()
        for t in lines:
            if t.task in stopping and t.outcome != "stopping":
                t.outcome = "stopping"
            elif t.outcome == "preparing" and t.image and ":" in t.image and \
                    f"airut-build-{t.image.rsplit(':', 1)[1]}.service" in builds:
                t.outcome = "building"  # its image is being built
        return lines

    def all_tasks(self) -> list[TaskLine]:
        return sorted([*self.waiting(), *self.finished()], key=lambda t: t.time, reverse=True)

    def stop_requests(self) -> set[str]:
        """Tasks a stop request waits for (the runner removes a request it acted on)."""
        found = set()
        control = self.spool.control
        for name in control.names():
            try:
                task = control.read(name, max_bytes=4096).get("task_id")
            except (OSError, RecordError):
                continue
            if isinstance(task, str):
                found.add(task)
        return found

    # -- overview ---------------------------------------------------------------------

    def overview(self) -> Overview:
        waiting = self.waiting()
        finished = self.finished()
        followups: dict[str, list[str]] = {}
        first_of: dict[str, str] = {}
        for t in waiting:  # claimed ones sort first: a queued task follows them
            if t.conversation and t.conversation in first_of and t.outcome == "queued":
                followups.setdefault(first_of[t.conversation], []).append(t.task)
            elif t.conversation:
                first_of.setdefault(t.conversation, t.task)
        days, per_day, cost = self._per_day(finished)
        depths = tasks.queue_depths(self.spool.root)
        units = self.units.daemons()
        return Overview(waiting, followups, finished[:RECENT], units, depths, days, per_day,
                        cost, self.health(units, depths, waiting))

    def _per_day(self, finished: list[TaskLine]
                 ) -> tuple[list[str], dict[str, list[float]], list[float]]:
        """Tasks by outcome and cost per UTC day: counted again when a task finished or
        a day began."""
        today = datetime.now(UTC).date()
        key = (id(finished), today)
        with self._lock:
            if self._days is not None and self._days[0] == key:
                return self._days[1]
        days = [(today - timedelta(days=n)).isoformat() for n in range(DAYS - 1, -1, -1)]
        index = {d: i for i, d in enumerate(days)}
        per_outcome: dict[str, list[float]] = {}
        cost = [0.0] * DAYS
        for t in finished:
            i = index.get(_utc_day(t.time))
            if i is None:
                continue
            group = _outcome_group(t.outcome)
            per_outcome.setdefault(group, [0.0] * DAYS)[i] += 1
            cost[i] += t.cost_usd or 0.0
        order = ("success", "failed", "stopped")
        value = (days, {k: per_outcome[k] for k in order if k in per_outcome}, cost)
        with self._lock:
            self._days = (key, value, finished)  # holding the list keeps its id unique
        return value

    # -- health -----------------------------------------------------------------------

    def health(self, units: list[UnitState] | None = None,
               depths: dict[str, int] | None = None,
               waiting: list[TaskLine] | None = None) -> dict:
        units = self.units.daemons() if units is None else units
        depths = tasks.queue_depths(self.spool.root) if depths is None else depths
        waiting = self.waiting() if waiting is None else waiting
        reasons = []
        if self.units.error:
            reasons.append(f"systemd cannot be asked over D-Bus: {self.units.error}")
        for u in units:
            if u.failed:
                reasons.append(f"{u.name} failed ({u.result or 'no result'})")
            elif u.name.startswith(("airut-email@", "airut-slack@")) and \
                    u.status.startswith("degraded"):
                reasons.append(f"{u.name} is degraded: {u.status}")
        for stage, n in sorted(depths.items()):
            if stage.startswith("failed/") and n:
                reasons.append(f"{n} record(s) in {stage}")
        counts = Counter(t.outcome for t in waiting)
        return {"status": "degraded" if reasons else "ok", "reasons": reasons,
                "tasks": {k: counts.get(k, 0) for k in tasks.WAITING}}

    # -- one task ---------------------------------------------------------------------

    def find(self, task_id: str) -> tuple[TaskLine, dict | None, bool] | None:
        """Where a task is: its line, its spool record (None once it finished), and
        whether a stop request waits for it."""
        stopping = self.stop_requests()
        found = tasks.find_waiting(self.spool.root, task_id)
        if found is not None:
            line, record = found
            return self._shown([line], stopping)[0], record, task_id in stopping
        line = self._finished_index()[1].get(task_id)
        return (line, None, task_id in stopping) if line and line.conversation else None

    def task(self, task_id: str) -> TaskView | None:
        found = self.find(task_id)
        if found is None:
            return None
        line, record, stop_pending = found
        conv = self._conversation(line.conversation) if line.conversation else None
        summary = next((r for r in conv.replies if r.task_id == task_id), None) \
            if conv and record is None else None
        record = record or {}
        state = tasks.state_of(record)
        cdir = paths.conversation_dir(self.state_dir, conv.conversation_id) if conv else None
        start = summary.events_offset if summary else schema.count(state.get("events_offset"))
        end = summary.events_end if summary else None
        events = timeline.Timeline()
        if cdir is not None and start is not None:
            events = self.timelines.read(cdir / "events.jsonl", start, end)
        live = None
        if line.unit and line.outcome in ("running", "stopping"):
            live = cgroup.usage(cgroup.unit_path(line.unit, cgroup.TASK_SLICE))
        samples = cgroup.read_samples(cgroup.samples_file(cdir, task_id)) if cdir else []
        network, counts = self.netlogs.lines(cdir / "network.log", task_id) if cdir \
            else ([], {})
        limits = summary.limits if summary else (state.get("limits")
                                                 if isinstance(state.get("limits"), dict)
                                                 else {})
        text = summary.request if summary else (record.get("text")
                                                if isinstance(record.get("text"), str) else "")
        return TaskView(line, summary, conv, limits, live, samples, events, network, counts,
                        stop_pending, text)

    def _conversation(self, cid: str) -> Conversation | None:
        try:
            return self.conversations.load(self.state_dir, cid)
        except conversation.ConversationError:
            return None

    def conversation(self, cid: str) -> tuple[Conversation, list[TaskLine]] | None:
        conv = self._conversation(cid)
        if conv is None:
            return None
        waiting = [t for t in self.waiting() if t.conversation == cid]
        return conv, waiting

    # -- one repository ---------------------------------------------------------------

    def repo(self, repo_id: str) -> dict | None:
        if repo_id not in self.cfg.repos:
            return None
        repo = self.cfg.repos[repo_id]
        finished = self.finished(repo_id)
        units = [u for u in self.units.daemons() if u.name.endswith(f"@{repo_id}.service")]
        latest_image = None
        for t in finished:
            conv = self._conversation(t.conversation) if t.conversation else None
            summary = next((r for r in conv.replies if r.task_id == t.task), None) \
                if conv else None
            if summary and summary.image:
                latest_image = summary
                break
        failed = {stage: n for stage, n in tasks.queue_depths(self.spool.root).items()
                  if stage.startswith("failed/") and n and (stage.endswith(f"-{repo_id}")
                                                            or stage == "failed/incoming")}
        errors = [t for t in finished if t.outcome not in ("success", "stopped")][:10]
        return {"id": repo_id, "repo": repo, "units": units, "image": latest_image,
                "tasks": finished[:RECENT], "errors": errors, "failed": failed,
                "waiting": [t for t in self.waiting() if t.repo == repo_id]}

    # -- the one write ----------------------------------------------------------------

    def request_stop(self, task_id: str, who: str) -> str:
        """Write a stop request for the runner; its record's name."""
        record = ControlRecord(task_id=task_id, requested_by=who[:200])
        name = new_name()
        self.spool.control.put(name, record.to_dict())
        return name


def stoppable(line: TaskLine, stop_pending: bool) -> bool:
    return line.outcome in STOPPABLE and not stop_pending


def _outcome_group(outcome: str) -> str:
    return outcome if outcome in ("success", "stopped") else "failed"


def _utc_day(stamp: str) -> str:
    """The UTC day of an ISO time (the charts' days are UTC days)."""
    try:
        return datetime.fromisoformat(stamp).astimezone(UTC).date().isoformat()
    except ValueError:
        return ""
