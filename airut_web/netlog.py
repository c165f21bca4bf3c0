"""The network decisions of one task, from its conversation's network.log.

A line is `<time> <task> <VERDICT> <detail>` (airut-proxy's NetworkLog); lines of
older proxies have no task. The proxy appends, and past its cap rewrites the file to
its newest half: a reader that remembers where it stopped reads only what was added,
and starts over when the file was rewritten (it shrank, or its first line changed).
What the agent caused to be logged (a path, a host) is its bytes: shown, never trusted.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from airut_core import paths

VERDICTS = ("ALLOWED", "BLOCKED", "STRIPPED", "ERROR", "NOTE")
PER_TASK = 2000  # newest lines kept per task
DETAIL_MAX = 1000
HEAD = 64


@dataclass
class Line:
    time: str
    task: str | None
    verdict: str
    detail: str


@dataclass
class _File:
    inode: tuple[int, int] = (0, 0)
    head: bytes = b""
    position: int = 0
    by_task: dict[str | None, deque[Line]] = field(default_factory=dict)
    counts: dict[str | None, dict[str, int]] = field(default_factory=dict)


def parse(raw: bytes) -> Line | None:
    text = raw.decode(errors="replace").rstrip("\n")
    parts = text.split(" ", 3)
    if len(parts) < 3:
        return None
    if parts[1] in VERDICTS:  # no task: an older proxy, or the cap's NOTE
        return Line(parts[0], None, parts[1], " ".join(parts[2:])[:DETAIL_MAX])
    if len(parts) == 4 and parts[2] in VERDICTS and paths.TASK_ID.match(parts[1]):
        return Line(parts[0], parts[1], parts[2], parts[3][:DETAIL_MAX])
    return None


class Reader:
    def __init__(self) -> None:
        self._files: dict[str, _File] = {}
        self._lock = threading.Lock()

    def lines(self, path: Path, task: str) -> tuple[list[Line], dict[str, int]]:
        """The task's lines (oldest first) and its count per verdict."""
        with self._lock:
            state = self._update(path)
            return list(state.by_task.get(task, ())), dict(state.counts.get(task, {}))

    def _update(self, path: Path) -> _File:
        key = str(path)
        state = self._files.get(key) or _File()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            self._files.pop(key, None)
            return _File()
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            head = f.read(HEAD)
            if (st.st_dev, st.st_ino) != state.inode or st.st_size < state.position \
                    or not head.startswith(state.head[:len(head)]) or len(head) < len(state.head):
                state = _File(inode=(st.st_dev, st.st_ino), head=head)
            f.seek(state.position)
            data = f.read(st.st_size - state.position)
        end = data.rfind(b"\n") + 1  # a line being written waits for the next read
        for raw in data[:end].splitlines():
            line = parse(raw)
            if line is None:
                continue
            state.by_task.setdefault(line.task, deque(maxlen=PER_TASK)).append(line)
            counts = state.counts.setdefault(line.task, {})
            counts[line.verdict] = counts.get(line.verdict, 0) + 1
        state.position += end
        self._files[key] = state
        if len(self._files) > 64:
            self._files.pop(next(iter(self._files)))
        return state
