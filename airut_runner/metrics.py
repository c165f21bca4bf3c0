"""Memory and CPU of each running task, sampled from its unit's cgroup into the
conversation (metrics/<task>.jsonl), so the dashboard can draw a task's life after its
unit is gone. Often at first (short tasks are the common case), then less often."""

from __future__ import annotations

import time

from airut_core import cgroup, paths
from airut_runner import units
from airut_runner.context import Context

FAST = 1.0  # seconds between samples for the first FAST_FOR seconds
FAST_FOR = 120.0
SLOW = 10.0


class Sampler:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.first: dict[str, float] = {}  # task -> when it was first sampled
        self.due: dict[str, float] = {}
        self.full: set[str] = set()
        self.conversation: dict[str, str | None] = {}

    def tick(self) -> None:
        now = time.monotonic()
        running = dict(self.ctx.running)
        for gone in set(self.due) - set(running):
            self.first.pop(gone, None)
            self.due.pop(gone, None)
            self.full.discard(gone)
            self.conversation.pop(gone, None)
        for name, unit in running.items():
            if name in self.full or self.due.get(name, 0) > now:
                continue
            first = self.first.setdefault(name, now)
            self.due[name] = now + (FAST if now - first < FAST_FOR else SLOW)
            try:
                self._sample(name, unit)
            except Exception:  # one task's sample never stops the loop
                self.ctx.log(name).exception("cannot sample the task's cgroup")

    def _sample(self, name: str, unit: str) -> None:
        if self.conversation.get(name) is None:
            self.conversation[name] = self.ctx.conversation_of(name)
        cid = self.conversation[name]
        sample = cgroup.sample_now(cgroup.unit_path(unit, units.SLICE))
        if cid is None or sample is None:
            return
        path = cgroup.samples_file(paths.conversation_dir(self.ctx.state_dir, cid), name)
        if not cgroup.append_sample(path, sample, paths.daemon_gid()):
            self.full.add(name)
