"""bench/web: how fast airut-web renders its pages on a large state, and how much memory
it takes idle and under live clients, next to a bare bottle "hello" route under the same
server in the same run (the floor).

  python -m bench.web [--tasks 1000] [--events-mb 10] [--requests 200] [--clients 20]

The state is written as the daemons write it (tests/webstate.py): --tasks finished
tasks over 30 days in conversations of one to three, and one more task whose output
(events.jsonl) is --events-mb large. airut-web runs as its own process (the daemon, as
its unit starts it); the floor is a one-route bottle app under waitress with the same
thread count. Render times are client-side wall times of whole responses over
loopback. The first request of the large task page (a cold parse of its output) is
reported on its own.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests import webstate

HELLO = """
import sys, bottle, waitress
app = bottle.Bottle()
@app.get("/hello")
def hello():
    return "hello"
waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=8, _quiet=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def get(port: int, path: str, headers: dict | None = None) -> tuple[float, int, str, int]:
    """Seconds for the whole response, its status, ETag and size."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return time.perf_counter() - started, r.status, r.getheader("ETag") or "", len(body)


def timed(port: int, path: str, n: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(n):
        took, status, _, size = get(port, path)
        assert status == 200, (path, status)
        times.append(took)
    return times, size


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def live_clients(port: int, paths: list[str], clients: int, seconds: float, pid: int,
                 writer) -> tuple[list[float], int, int, int]:
    """Clients polling like app.js (every 2 s, If-None-Match); returns the request
    times, how many were 200 and 304, and the peak RSS while they ran."""
    stop = threading.Event()
    times: list[float] = []
    counts = {200: 0, 304: 0}
    lock = threading.Lock()

    def client(path: str, delay: float) -> None:
        time.sleep(delay)
        etag = ""
        while not stop.is_set():
            took, status, tag, _ = get(port, path, {"X-Airut-Live": "1",
                                                    **({"If-None-Match": etag} if etag else {})})
            etag = tag or etag
            with lock:
                times.append(took)
                counts[status] = counts.get(status, 0) + 1
            stop.wait(2.0)

    threads = [threading.Thread(target=client, args=(paths[i % len(paths)], i * 0.1))
               for i in range(clients)]
    for t in threads:
        t.start()
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        writer()
        peak = max(peak, rss_kib(pid))
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    return times, counts.get(200, 0), counts.get(304, 0), peak


def ms(values: list[float]) -> str:
    return f"p50 {pct(values, 50) * 1000:7.1f} ms  p95 {pct(values, 95) * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--events-mb", type=float, default=10)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        built = webstate.build(root, finished=args.tasks,
                               events_bytes=int(args.events_mb * (1 << 20)))
        events = root / "state/conversations" / built.big_conversation / "events.jsonl"
        print(f"bench/web: {args.tasks} finished tasks in {len(built.conversations)} "
              f"conversations, one task with {events.stat().st_size / (1 << 20):.1f} MiB "
              f"of output (state written in {time.monotonic() - started:.1f} s)")
        (root / "airut.yaml").write_text(
            f"paths: {{spool: {root}/spool, state: {root}/state}}\n"
            "repos: {demo: {repo_url: x}, other: {repo_url: y}}\n")
        port, hello_port = free_port(), free_port()
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        web = subprocess.Popen([sys.executable, "-m", "airut_web.daemon", "--config",
                                str(root / "airut.yaml"), "--port", str(port)], env=env,
                               stderr=subprocess.DEVNULL)
        hello = subprocess.Popen([sys.executable, "-c", HELLO, str(hello_port)], env=env)
        try:
            wait_listening(port)
            wait_listening(hello_port)
            big = f"/task/{built.big_task}"
            cold, _, _, big_size = get(port, big)
            for path in ("/", f"/task/{built.finished[-1]}", "/hello"):  # warm
                get(port if path != "/hello" else hello_port, path)
            time.sleep(1)
            idle = rss_kib(web.pid)
            floor, _ = timed(hello_port, "/hello", args.requests)
            overview, overview_size = timed(port, "/", args.requests)
            task, task_size = timed(port, f"/task/{built.finished[-1]}", args.requests)
            big_task, _ = timed(port, big, max(20, args.requests // 10))
            running = webstate.run(built.cfg, built.conversations[0], webstate.events(
                [{"text": "started"}])[:2])
            cdir = root / "state/conversations" / built.conversations[0]
            step = iter(range(10**9))

            def agent_writes() -> None:
                n = next(step)
                with open(cdir / "events.jsonl", "ab") as f:
                    f.write(f'{{"type":"assistant","message":{{"content":[{{"type":"text",'
                            f'"text":"step {n}"}}]}}}}\n'.encode())

            live, fresh, unchanged, peak = live_clients(
                port, ["/", f"/task/{running}"], args.clients, args.seconds, web.pid,
                agent_writes)
            after = rss_kib(web.pid)
        finally:
            web.terminate()
            hello.terminate()
            web.wait(10)
            hello.wait(10)
    f50 = pct(floor, 50)
    print(f"  floor     bare bottle 'hello' route        {ms(floor)}")
    print(f"  overview  / ({overview_size // 1024} KiB)               {ms(overview)}   "
          f"p50 {pct(overview, 50) / f50:.0f}x floor")
    print(f"  task      a finished task ({task_size // 1024} KiB)      {ms(task)}   "
          f"p50 {pct(task, 50) / f50:.0f}x floor")
    print(f"  big task  {args.events_mb:g} MiB of output ({big_size // 1024} KiB page) "
          f"{ms(big_task)}   first (cold) {cold * 1000:.0f} ms")
    print(f"  live      {args.clients} clients polling / and a running task every 2 s for "
          f"{args.seconds:g} s: {ms(live)}  ({fresh} answered, {unchanged} unchanged)")
    print(f"  memory    airut-web RSS idle {idle / 1024:.1f} MiB, under {args.clients} live "
          f"clients peak {peak / 1024:.1f} MiB, after {after / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
