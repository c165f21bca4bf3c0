"""A port on the host's loopback that leads to a port on the lab guest's loopback.

The guest has a network namespace of its own (--private-network), where airut-web
listens on 127.0.0.1:5200 as it does on a server. The browser runs on the host. Each
connection the browser makes is relayed to a socket made inside the guest's namespace:
a thread that has joined it (setns affects only the calling thread) makes them.
Bytes pass unchanged, so the browser's Host and Origin are what the dashboard sees.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import socket
import threading

CLONE_NEWNET = 0x40000000


class Forward:
    def __init__(self, leader_pid: str, port: int):
        self.target = ("127.0.0.1", port)
        self.requests: queue.Queue = queue.Queue()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.ready = threading.Event()
        self.error: BaseException | None = None
        threading.Thread(target=self._in_guest, args=(leader_pid,), daemon=True).start()
        self.ready.wait(10)
        if self.error:
            raise self.error
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _in_guest(self, leader_pid: str) -> None:
        """This thread lives in the guest's network namespace and makes sockets there."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/proc/{leader_pid}/ns/net", os.O_RDONLY)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the guest's network namespace")
            os.close(fd)
        except BaseException as e:
            self.error = e
            self.ready.set()
            return
        self.ready.set()
        while True:
            reply: queue.Queue = self.requests.get()
            try:
                reply.put(socket.create_connection(self.target, timeout=10))
            except OSError as e:
                reply.put(e)

    def connect(self) -> socket.socket:
        """A connection to the guest's port (for tests that speak HTTP themselves)."""
        reply: queue.Queue = queue.Queue()
        self.requests.put(reply)
        sock = reply.get(timeout=15)
        if isinstance(sock, BaseException):
            raise sock
        sock.settimeout(None)
        return sock

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = self.connect()
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.listener.close()


def listen_in(leader_pid: str, port: int) -> socket.socket:
    """A listening socket on the guest's loopback, for a server that runs here (the
    fake Slack): made by a thread that joined the guest's network namespace, it stays
    in that namespace, and the thread ends."""
    made: queue.Queue = queue.Queue()

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/proc/{leader_pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns into the guest's network namespace")
            finally:
                os.close(fd)
            made.put(socket.create_server(("127.0.0.1", port)))
        except BaseException as e:
            made.put(e)

    threading.Thread(target=make, daemon=True).start()
    sock = made.get(timeout=10)
    if isinstance(sock, BaseException):
        raise sock
    return sock


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def main() -> None:
    """`tests/lab/dashboard.sh`: the running lab guest's dashboard on this machine."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description="the lab guest's dashboard on the host")
    parser.add_argument("--leader", required=True, help="the guest's leader process id")
    parser.add_argument("--port", type=int, default=5200, help="the port on the host")
    args = parser.parse_args()
    forward = Forward(args.leader, 5200)
    forward.listener.close()
    forward.listener = socket.create_server(("127.0.0.1", args.port))
    forward.port = args.port
    threading.Thread(target=forward._accept, daemon=True).start()
    print(f"the lab's dashboard: {forward.url} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
