"""A client for the QEMU guest agent (qemu-guest-agent in the VM, on a virtio-serial port).

The agent speaks JSON lines over the port, which qemu exposes on the host as a Unix
socket. It has no greeting: a client resynchronises with guest-sync-delimited, whose
answer is preceded by a 0xFF byte (a 0xFF sent first also resets the agent's parser
after a half-written request). Commands used here: guest-ping, guest-exec and
guest-exec-status (run a program, get its exit code and captured output).
"""

from __future__ import annotations

import base64
import json
import random
import socket
import subprocess
import time
from pathlib import Path


class AgentError(RuntimeError):
    pass


class GuestAgent:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.buf = b""

    def connect(self, timeout: float) -> None:
        """Wait until the agent in the guest answers (it starts late in the boot)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self.sock is None:
                    self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self.sock.connect(str(self.path))
                self._sync(min(3.0, max(0.1, deadline - time.monotonic())))
                return
            except (OSError, TimeoutError, AgentError) as e:
                last = e
                if isinstance(e, OSError) and not isinstance(e, TimeoutError):
                    self.close()
                time.sleep(0.5)
        raise AgentError(f"the guest agent did not answer within {timeout:.0f} s: {last}")

    def close(self) -> None:
        if self.sock:
            self.sock.close()
        self.sock, self.buf = None, b""

    def call(self, command: str, timeout: float = 30, **arguments: object) -> object:
        assert self.sock, "not connected"
        request: dict = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        reply = self._read_message(time.monotonic() + timeout)
        if "error" in reply:
            raise AgentError(f"{command}: {reply['error']}")
        return reply.get("return")

    def run(self, argv: list[str], timeout: float, input: str | None = None,
            ) -> subprocess.CompletedProcess:
        """Run a program in the guest; its exit code and output, like subprocess.run."""
        args: dict = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if input is not None:
            args["input-data"] = base64.b64encode(input.encode()).decode()
        pid = self.call("guest-exec", **args)["pid"]
        started = time.monotonic()
        deadline = started + timeout
        pause = 0.02
        while True:
            status = self.call("guest-exec-status", pid=pid)
            if status["exited"]:
                break
            now = time.monotonic()
            if now > deadline:
                raise subprocess.TimeoutExpired(argv, timeout)
            time.sleep(pause)
            # Every question costs the emulated machine (the agent answers it and logs
            # it): a long command is asked less often, at most a tenth of its time late.
            pause = min(pause * 2, max(0.25, min((now - started) / 10, 2.0)))
        code = status.get("exitcode", 128 + status.get("signal", 0))
        return subprocess.CompletedProcess(argv, code, _text(status.get("out-data")),
                                           _text(status.get("err-data")))

    def _sync(self, timeout: float) -> None:
        assert self.sock
        ident = random.randrange(1, 2**31)
        self.sock.sendall(b"\xff" + json.dumps(
            {"execute": "guest-sync-delimited", "arguments": {"id": ident}}).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            marker = self.buf.find(b"\xff")
            if marker >= 0:
                self.buf = self.buf[marker + 1:]
                if self._read_message(deadline).get("return") == ident:
                    return
                continue
            self.buf = b""
            self._fill(deadline)

    def _read_message(self, deadline: float) -> dict:
        while b"\n" not in self.buf:
            self._fill(deadline)
        line, _, self.buf = self.buf.partition(b"\n")
        line = line.lstrip(b"\xff").strip()
        try:
            return json.loads(line)
        except ValueError as e:
            raise AgentError(f"not a message from the guest agent: {line[:200]!r}") from e

    def _fill(self, deadline: float) -> None:
        assert self.sock
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from the guest agent")
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            raise AgentError("the guest agent's socket closed")
        self.buf += data


def _text(data: str | None) -> str:
    return base64.b64decode(data).decode(errors="replace") if data else ""
