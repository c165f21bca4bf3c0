"""Hostile mail is read in a process of its own.

Parsing is bounded in code (parse.py), but anyone can build a message, and bounds are
ours to get wrong: a message that makes the parser run for minutes, use gigabytes or
crash must end a child process, not the daemon. The examiner is that child: started
once, it reads one message at a time and sends back its verdict; a message that runs
past `timeout`, needs more than `memory` bytes of address space or kills it is a
failure of that message (ExaminerFailed, or TooComplex for memory: counted by the
daemon's guard, set aside after a few), and the next message gets a new examiner.

So the daemon itself is never the victim of a message, and when it dies while a
message is being read (a kill from outside, a restart), that is no evidence against
the message: the guard counts such interruptions apart, with a higher limit.

Between the two processes: frames of an 8-byte length and a payload over the
child's stdin and stdout. The first frame to the child is the Rules (JSON), which
it answers with READY (so an examiner that cannot start is told apart from a
message that ends it); then one raw message per frame; each answer is JSON,
{"verdict": …} or {"error": "too_complex" | "failed", "message": …}. JSON, not
pickle: what comes back was made from hostile bytes, and the verdict is checked on
arrival (Verdict.from_json).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from airut_core.guard import describe
from airut_ingest.email import intake
from airut_ingest.email.intake import Rules, Verdict
from airut_ingest.email.parse import TooComplex

EXAMINE_TIMEOUT = 60.0  # seconds for one message; the biggest allowed takes a few
EXAMINE_MEMORY = 1 << 30  # address space of the examiner; a 60 MiB mail needs ~650 MiB
FRAME_MAX = 1 << 31
TICK = 1.0  # how often a waiting daemon says it is alive
START_TIMEOUT = 30.0  # for a new examiner to say it is ready
READY = {"ready": 1}  # its first answer: the protocol it speaks


class ExaminerFailed(Exception):
    """Reading this message ended or stalled the examiner: a failure of the message."""


class ExaminerUnavailable(Exception):
    """The examiner does not start (a broken installation): no message's failure."""


class Examiner:
    def __init__(self, rules: Rules, timeout: float = EXAMINE_TIMEOUT,
                 memory: int = EXAMINE_MEMORY):
        self.rules = rules
        self.timeout = timeout
        self.memory = memory
        self._proc: subprocess.Popen | None = None
        self.started_total = 0  # examiners started, for tests and status
        # -P: not the working directory's modules (`airut email check` runs anywhere).
        self.command = [sys.executable, "-P", "-m", "airut_ingest.email.examiner",
                        str(memory)]

    def start(self) -> None:
        """Start the child now, unless it runs (it takes a few hundred milliseconds to
        import). Raises ExaminerUnavailable when it does not come up: that is the
        daemon's trouble, not any message's."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, close_fds=True)
        self.started_total += 1
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            _send(self._proc.stdin, json.dumps(self.rules.to_json()).encode())
            hello = json.loads(self._answer(self._proc.stdout, lambda: None, START_TIMEOUT))
            if hello != READY:
                raise ValueError(f"it said {hello!r}")
        except (ExaminerFailed, OSError, ValueError) as e:
            status = self.close()
            raise ExaminerUnavailable(f"the examiner did not start ({status or e})") from e

    def read(self, raw: bytes, tick: Callable[[], None] = lambda: None) -> Verdict:
        """intake.read(raw), in the examiner. Raises TooComplex or ExaminerFailed."""
        self.start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            _send(proc.stdin, raw)
            answer = json.loads(self._answer(proc.stdout, tick, self.timeout))
        except ExaminerFailed:
            self.close()
            raise
        except (OSError, ValueError) as e:  # a broken pipe, a garbled answer
            status = self.close()
            raise ExaminerFailed(f"the examiner {status or 'failed'} reading it ({e})") from e
        if isinstance(answer, dict) and "verdict" in answer:
            try:
                return Verdict.from_json(answer["verdict"])
            except (TypeError, ValueError, KeyError) as e:
                self.close()
                raise ExaminerFailed(f"the examiner's verdict is unreadable: {e}") from e
        # Whatever went wrong in it, the next message gets a fresh examiner (one that
        # ran out of memory may not have given it back).
        self.close()
        message = str(answer.get("message", "")) if isinstance(answer, dict) else ""
        if isinstance(answer, dict) and answer.get("error") == "too_complex":
            raise TooComplex(message)
        raise ExaminerFailed(message or "the examiner gave no verdict")

    def _answer(self, stdout: BinaryIO, tick: Callable[[], None], timeout: float) -> bytearray:
        deadline = time.monotonic() + timeout
        fd = stdout.fileno()
        buf = bytearray()
        need = 8
        while len(buf) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExaminerFailed(f"reading it took longer than {timeout:g} s")
            ready, _, _ = select.select([fd], [], [], min(TICK, left))
            tick()
            if not ready:
                continue
            chunk = os.read(fd, min(need - len(buf), 1 << 20))
            if not chunk:
                raise ExaminerFailed(f"the examiner {self._ended()} reading it")
            buf += chunk
            if need == 8 and len(buf) == 8:
                need = 8 + int.from_bytes(buf, "big")
                if need > FRAME_MAX:
                    raise ExaminerFailed("the examiner's answer is too long")
        del buf[:8]
        return buf

    def _ended(self) -> str:
        assert self._proc is not None
        try:
            code = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        return _status(code)

    def close(self) -> str | None:
        """Stop the examiner (the next read starts another); how it ended."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        with contextlib.suppress(OSError):
            proc.kill()
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        try:
            return _status(proc.wait(5))
        except subprocess.TimeoutExpired:
            return None


def _status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _send(stream: BinaryIO, payload: bytes) -> None:
    stream.write(len(payload).to_bytes(8, "big"))
    stream.write(payload)
    stream.flush()


def _receive(stream: BinaryIO) -> bytes | None:
    head = stream.read(8)
    if len(head) < 8:
        return None
    size = int.from_bytes(head, "big")
    if size > FRAME_MAX:
        raise ValueError("frame too long")
    data = stream.read(size)
    if len(data) < size:
        return None
    return data


def serve(memory: int, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The child: rules, then messages, one verdict each, until the daemon goes."""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    except (OSError, ValueError) as e:  # the unit's MemoryMax still holds
        print(f"airut examiner: cannot limit its memory: {e}", file=sys.stderr)
    with contextlib.suppress(OSError):  # if memory runs out in the unit, this goes first
        Path("/proc/self/oom_score_adj").write_text("1000")
    first = _receive(stdin)
    if first is None:
        return
    rules = Rules.from_json(json.loads(first))
    _send(stdout, json.dumps(READY).encode())
    while (raw := _receive(stdin)) is not None:
        try:
            answer = {"verdict": intake.read(raw, rules).to_json()}
        except TooComplex as e:
            answer = {"error": "too_complex", "message": str(e)}
        except MemoryError:
            answer = {"error": "too_complex",
                      "message": f"reading it needs more than {memory >> 20} MiB of memory"}
        except Exception as e:  # anything else is this message's failure, not ours
            answer = {"error": "failed", "message": describe(e)}
        del raw
        _send(stdout, json.dumps(answer).encode())


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)
