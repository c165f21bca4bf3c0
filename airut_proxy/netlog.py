"""network.log: each task's record of what the proxy and the DNS responder decided.

Apart from the mitmproxy addon so that the DNS responder's own process does not load
mitmproxy.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from datetime import UTC, datetime

from airut_core import log
from airut_core.sandbox import PolicyRecord

logger = logging.getLogger("airut.proxy")

CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NetworkLog:
    """network.log in the task's conversation; BLOCKED and STRIPPED also to the journal.

    The file is capped at the policy's network_log_max_bytes: past it, the older half
    is dropped and a NOTE line at the top says so (the proxy cannot create files in
    the conversation directory, so it cannot rotate). Files stay open while a policy
    names them (opening one per request cost a twentieth of the proxy's time);
    keep_only() closes the others when the policies change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the DNS responder writes from its own threads
        self._open: dict[str, int] = {}

    def write(self, policy: PolicyRecord | None, verdict: str, detail: str) -> None:
        # The detail is the agent's bytes (a path, a host): a control character in it
        # must not start a line of its own, which the dashboard would read as a decision.
        detail = CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", detail)
        if policy is not None:
            line = f"{_stamp()} {policy.task_id} {verdict} {detail}"
            try:
                self._append(policy.network_log, line, policy.network_log_max_bytes)
            except OSError as e:
                logger.error("cannot write %s: %s", policy.network_log, e)
        if verdict != "ALLOWED":
            task_log = log.for_task(logger, policy.task_id if policy else None,
                                    policy.conversation_id if policy else None,
                                    policy.repo if policy else None)
            task_log.warning("%s %s", verdict, detail)

    def keep_only(self, paths: set[str]) -> None:
        """Close the files no running task's policy names any more."""
        with self._lock:
            for path in set(self._open) - paths:
                os.close(self._open.pop(path))

    def _append(self, path: str, line: str, cap: int) -> None:
        with self._lock:
            fd = self._open.get(path)
            if fd is None:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o640)
                self._open[path] = fd
            os.write(fd, (line + "\n").encode())
            if os.fstat(fd).st_size > cap:
                _keep_newest(path, cap // 2)


def _keep_newest(path: str, keep: int) -> None:
    """Cut the file to its newest `keep` bytes (whole lines) behind a NOTE line."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - keep), os.SEEK_SET)
        tail = os.read(fd, keep)
        tail = tail[tail.find(b"\n") + 1:] if size > keep else tail
        note = (f"{_stamp()} NOTE network.log reached its cap: {size - len(tail)} bytes of "
                "older lines were dropped here (BLOCKED and STRIPPED lines are also in the "
                "journal)\n").encode()
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, note + tail)
        os.ftruncate(fd, len(note) + len(tail))
    finally:
        os.close(fd)


