"""What the runner's stages share.

The loop (daemon.py) owns one Context and hands it, with one item, to a stage
function: claim, prepare, build, start, finish, control. A stage handles that one
item and nothing else; the loop runs it under a Guard, so a failure stays with its
item. What is in flight lives here, in memory only: on disk, a task's record in
active/ and its unit are the truth, and a restarted runner rebuilds this from them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from airut_core import log
from airut_core.config import Config
from airut_core.conversation import Conversation
from airut_core.guard import Guard, Permanent
from airut_core.paths import Spool
from airut_core.records import TaskRecord
from airut_core.sandbox import PolicyRecord
from airut_core.spool import Doorbell, RecordError, Stage
from airut_runner import uids, units
from airut_runner.images import ImageSpec
from airut_runner.podman_api import Podman
from airut_runner.sandbox import NetworkSandbox

logger = logging.getLogger("airut.runner")


class Refused(Permanent):
    """Retrying cannot help (a bad record, an unknown repository, a failed build):
    the task is set aside at once, and the sender gets `reply` if there is one."""

    def __init__(self, reason: str, reply: str | None = None):
        super().__init__(reason)
        self.reply = reply


@dataclass
class Prepared:
    """What a worker thread made ready for a task's unit."""

    conversation: Conversation
    image: ImageSpec
    build_context: Path | None  # set when the image must be built first
    rebuild: bool  # the image exists but is stale: build without cache
    gateway: str  # this host's address on the task's network
    policy: PolicyRecord | None  # the proxy's instructions; None when the sandbox is off
    disk_start: int = 0  # bytes the conversation took before this run

    @property
    def repo(self) -> str:
        return self.conversation.repo


class Context:
    def __init__(self, cfg: Config, systemd: units.Systemd, podman: Podman):
        self.cfg = cfg
        self.spool = Spool(cfg.paths.spool).ensure()
        self.state_dir = Path(cfg.paths.state)
        self.systemd = systemd
        self.podman = podman
        self.pool = ThreadPoolExecutor(max_workers=cfg.execution.max_concurrent + 1,
                                       thread_name_prefix="prepare")
        # Endings have threads of their own: a slow one (a huge outbox) never holds up
        # the preparation of other tasks, nor the other way round.
        self.finish_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="finish")
        self.sandbox = NetworkSandbox(cfg.proxy, podman.task_subnets, cfg.proxy_workers())
        self.uids = uids.Pool(self.state_dir, cfg.agent.host_uid_base, cfg.agent.uid_ranges)
        self.bell: Doorbell | None = None
        # Phases of the tasks in flight (one at a time per task).
        self.preparing: dict[str, Future] = {}
        self.building: dict[str, Prepared] = {}  # waiting for their image
        self.running: dict[str, str] = {}  # task -> unit
        # Prepared, waiting for the proxy and firewall to be in place: since when.
        self.waiting_ready: dict[str, tuple[Prepared, float]] = {}
        self.finishing: dict[str, Future] = {}
        self.image_created: dict[str, float] = {}  # tag -> build time, a cache
        # Failures of a task's attempts (prepare, build, start, finish) count together;
        # kept on disk so a restart does not give a failing task three more tries.
        self.tasks = Guard("task", logger, delay=cfg.execution.retry_delay,
                           store=self.state_dir / "runner" / "failures",
                           count_crashes=False)
        self.records = Guard("record", logger, delay=1.0)  # invalid ones: aside at once
        self.controls = Guard("stop request", logger, delay=1.0)
        self.builds = Guard("image build result", logger, delay=1.0)
        # Commands in the sandbox (commands.py): in flight, and those waiting for an image.
        self.commands: dict = {}
        self.command_building: dict = {}

    # -- in flight ------------------------------------------------------------------

    def busy(self) -> set[str]:
        return self.holding() | set(self.finishing)

    def holding(self) -> set[str]:
        """Tasks that take one of execution.max_concurrent slots."""
        return (set(self.preparing) | set(self.building) | set(self.waiting_ready)
                | set(self.running))

    def has_slot(self) -> bool:
        return len(self.holding()) < self.cfg.execution.max_concurrent

    def submit(self, work: Callable, *args, pool: ThreadPoolExecutor | None = None) -> Future:
        """Work for a worker thread; the loop wakes when it is done."""
        future = (pool or self.pool).submit(work, *args)
        if self.bell:
            future.add_done_callback(lambda _: self.bell.ring())
        return future

    # -- records ------------------------------------------------------------------------

    def task(self, name: str) -> tuple[dict, TaskRecord]:
        """A claimed task's record, checked; Refused if it is not a valid task."""
        record = self.spool.active.read(name)
        return record, as_task(record, name, "active")

    def peek(self, stage: Stage, name: str) -> dict:
        """A record as it is now, or {} when it is gone or unreadable."""
        try:
            return stage.read(name)
        except (FileNotFoundError, RecordError):
            return {}

    def state(self, name: str) -> dict:
        return state_of(self.peek(self.spool.active, name))

    def note(self, name: str, facts: dict | None = None, drop: tuple[str, ...] = ()) -> dict:
        """Write facts into a claimed task's state (the runner's own notes), drop others;
        the record is rewritten only when that changes it. Returns the state."""
        record = self.spool.active.read(name)
        state = state_of(record)
        new = {k: v for k, v in {**state, **(facts or {})}.items() if k not in drop}
        if new != state:
            record["state"] = new
            self.spool.active.put(name, record)
        return new

    def conversation_of(self, name: str) -> str | None:
        cid = self.peek(self.spool.active, name).get("conversation_id")
        return cid if isinstance(cid, str) else None

    def log(self, name: str, task: TaskRecord | None = None) -> logging.LoggerAdapter:
        if task is None:
            record = self.peek(self.spool.active, name)
            cid, repo = record.get("conversation_id"), record.get("repo")
            return log.for_task(logger, name, cid if isinstance(cid, str) else None,
                                repo if isinstance(repo, str) else None)
        return log.for_task(logger, name, task.conversation_id, task.repo)


def state_of(record: dict) -> dict:
    """A record's state (the runner's own notes), {} when it has none of the right kind."""
    state = record.get("state")
    return state if isinstance(state, dict) else {}


def as_task(record: dict, name: str, where: str) -> TaskRecord:
    """A record of stage `where` as the task named `name`, or Refused saying why not."""
    try:
        task = TaskRecord.from_dict(record, f"{where}/{name}")
    except RecordError as e:
        raise Refused(str(e)) from e
    if task.task_id != name:
        raise Refused(f"record {name} carries task id {task.task_id}")
    return task


def merged_of(record: dict) -> list[dict]:
    """The earlier tasks a claimed record carries (written by the runner from checked
    records); entries of the wrong shape are left out."""
    merged = state_of(record).get("merged")
    return [m for m in merged if isinstance(m, dict) and isinstance(m.get("task_id"), str)
            and isinstance(m.get("reply_to"), str)] if isinstance(merged, list) else []


def resource(name: str) -> str:
    """The task's container and network name."""
    return f"airut-{name}"
