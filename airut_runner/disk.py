"""The disk budget of a conversation, enforced while its task runs.

Disk is a resource like memory: an agent that fills the state filesystem stops every
daemon. So a thread of its own measures each running task's conversation directory
(workspace, session state, inbox, outbox, storage, the agent's output, network.log)
plus the container's writable layer in podman's storage, every INTERVAL seconds (less
often for trees that take long to walk). A task whose usage is over
resource_limits.disk is stopped; its reply says so, and the work stays. A task that
starts over the limit (a conversation that grew before, or a lowered limit) may run as
long as it does not grow by more than SLACK: that is how a user gets the agent to make
room.

This is a watch, not a quota: between two measurements an agent can write at disk
speed. The kernel bounds what the container's memory-backed files take (MemoryMax);
the watch bounds what persists.
"""

from __future__ import annotations

import os
import stat
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from airut_core import paths
from airut_core.spool import DIR_FLAGS
from airut_runner.context import Context, resource, state_of

INTERVAL = 5.0
INTERVAL_MAX = 60.0  # however slow the walk: a tree made slow to walk buys no more time
SLACK = 64 << 20
INODE_BYTES = 4096  # each file counts at least this: a million empty files are not free
MAX_DEPTH = 256  # directories deeper than this are a tree built to defeat the watch


class Watch:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="disk")
        self.pending: dict[str, Future] = {}
        self.next_due: dict[str, float] = {}
        self.upper: dict[str, str | None] = {}  # task -> its container's writable layer

    def tick(self) -> None:
        """Collect finished measurements (stopping tasks over budget), start due ones."""
        ctx = self.ctx
        for name, future in list(self.pending.items()):
            if future.done():
                del self.pending[name]
                try:
                    self._judge(name, future)
                except Exception:  # one task's measurement never stops the loop
                    ctx.log(name).exception("cannot act on the task's disk use")
        now = time.monotonic()
        for name in list(self.next_due):
            if name not in ctx.running:
                self.next_due.pop(name, None)
                self.upper.pop(name, None)
        for name in list(ctx.running):
            if name not in self.pending and self.next_due.get(name, 0) <= now:
                cid = ctx.conversation_of(name)
                if cid:
                    self.pending[name] = self.pool.submit(self._measure, name, cid)

    def _measure(self, name: str, cid: str) -> tuple[int, float]:
        started = time.monotonic()
        total = usage(paths.conversation_dir(self.ctx.state_dir, cid))
        upper = self._upper_dir(name)
        if upper:
            total += usage(Path(upper))
        return total, time.monotonic() - started

    def _upper_dir(self, name: str) -> str | None:
        if self.upper.get(name) is None:
            try:
                self.upper[name] = self.ctx.podman.container_upper_dir(resource(name))
            except Exception:
                self.upper[name] = None  # not created yet; next time
        return self.upper[name]

    def _judge(self, name: str, future: Future) -> None:
        ctx = self.ctx
        try:
            used, took = future.result()
        except Unmeasurable as e:
            self._stop(name, {"used": 0, "unmeasurable": str(e)})
            return
        except Exception as e:
            ctx.log(name).warning("cannot measure the task's disk use: %s", e)
            self.next_due[name] = time.monotonic() + INTERVAL
            return
        self.next_due[name] = time.monotonic() + min(max(INTERVAL, 10 * took), INTERVAL_MAX)
        if name not in ctx.running:
            return
        record = ctx.peek(ctx.spool.active, name)
        state = state_of(record)
        repo = ctx.cfg.repos.get(record.get("repo")) if isinstance(record.get("repo"),
                                                                   str) else None
        if repo is None:
            return
        limit = repo.resource_limits.disk
        start = state.get("disk_start")
        if not isinstance(start, int) or isinstance(start, bool):
            start = used  # the first measurement of this run
            ctx.note(name, {"disk_start": start})
        if used <= limit or (start > limit and used <= start + SLACK):
            return
        self._stop(name, {"used": used, "limit": limit})

    def _stop(self, name: str, exceeded: dict) -> None:
        """Over budget, or made impossible to measure: stopped, and noted for its reply."""
        if self.ctx.state(name).get("disk_exceeded") or name not in self.ctx.running:
            return  # already stopping
        self.ctx.log(name).warning("stopping the task: %s", exceeded.get("unmeasurable") or (
            f"its conversation uses {exceeded['used']} bytes of disk, over its limit of "
            f"{exceeded['limit']}"))
        self.ctx.systemd.stop(self.ctx.running[name])  # if this fails, the next one retries
        self.ctx.note(name, {"disk_exceeded": exceeded})

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Unmeasurable(Exception):
    """A tree made so that it cannot be walked: the task is stopped as if over budget."""


def usage(root: Path) -> int:
    """Bytes of disk taken by a tree: allocated blocks, each file at least INODE_BYTES;
    hard links counted once. Walked depth first without recursion, through directory
    descriptors (a directory the agent swaps for a link mid-walk is not followed), one
    descriptor per level: a tree deeper than MAX_DEPTH is Unmeasurable."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[int, list[str]]] = []  # a directory's descriptor, subdirectories left

    def enter(fd: int) -> None:
        nonlocal total
        subdirs = []
        stack.append((fd, subdirs))
        if len(stack) > MAX_DEPTH:
            raise Unmeasurable(f"directories nested more than {MAX_DEPTH} deep")
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    subdirs.append(entry.name)
                elif info.st_nlink > 1:
                    if (info.st_dev, info.st_ino) in seen:
                        continue
                    seen.add((info.st_dev, info.st_ino))
                total += max(info.st_blocks * 512, INODE_BYTES)

    try:
        enter(os.open(root, DIR_FLAGS))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    try:
        while stack:
            fd, subdirs = stack[-1]
            if not subdirs:
                os.close(stack.pop()[0])
                continue
            try:
                child = os.open(subdirs.pop(), DIR_FLAGS, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone, or swapped for something else meanwhile
            enter(child)
    finally:
        for fd, _ in stack:
            os.close(fd)
    return total
