"""bench/dispatch: how long from a task record committed in incoming/ to the model's
first request from the agent, against the floor of a bare `podman run --rm IMAGE true`
measured in the same run, in the same lab guest.

  make bench            (or: python -m bench.dispatch [--tasks 20])

Tasks run one at a time. The commit time is taken right after the record's rename
into incoming/ (written from the host, as a channel would); the first request's
time is stamped by the demo model in the guest. Both read the same kernel clock.
"""

from __future__ import annotations

import argparse
import statistics
import time

from airut_core.paths import Spool
from airut_core.records import TaskRecord
from tests.system.lab import Lab, base_config

IMAGE = "localhost/airut-base:latest"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def floor_runs(lab: Lab, n: int) -> list[float]:
    script = (f"for i in $(seq {n}); do s=$(date +%s.%N); podman run --rm {IMAGE} true; "
              "e=$(date +%s.%N); echo $s $e; done")
    out = lab.guest("sh", "-c", script, timeout=600).stdout.split("\n")
    return [float(e) - float(s) for s, e in (line.split() for line in out if line.strip())]


def dispatch_runs(lab: Lab, n: int) -> tuple[list[float], list[float]]:
    spool = Spool(lab.spool)
    marker = lab.scenario("bench", [{"text": "ok"}])
    first_request, reply = [], []
    for i in range(n):
        text = f"{marker} bench task {i} {time.time_ns()}"
        task = TaskRecord(repo="demo", channel="local", reply_to="bench", sender="bench",
                          text=text)
        spool.incoming.put(task.task_id, task.to_dict())
        committed = time.time()
        outgoing = spool.outgoing("local").file(task.task_id)
        deadline = time.monotonic() + 120
        while not outgoing.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"task {task.task_id} got no reply within 120 s")
            time.sleep(0.005)
        reply.append(time.time() - committed)
        outgoing.unlink()
        seen = [r["time"] for r in lab.model_requests() if text in str(r["body"])]
        if not seen:
            raise SystemExit(f"the model never saw task {task.task_id}")
        first_request.append(min(seen) - committed)
    return first_request, reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20)
    args = parser.parse_args()
    lab = Lab()
    lab.up(base_config(demo={}))
    try:
        floor_runs(lab, 2)  # warm the image and podman's storage
        dispatch_runs(lab, 2)  # and the runner, the CLI binary's page cache
        floor = floor_runs(lab, args.tasks)
        first, reply = dispatch_runs(lab, args.tasks)
    finally:
        lab.down()
    f50, d50, d95 = percentile(floor, 50), percentile(first, 50), percentile(first, 95)
    print(f"bench/dispatch: {args.tasks} tasks, one at a time, real systemd + podman + "
          "Claude Code CLI")
    print(f"  floor  podman run --rm IMAGE true        p50 {f50 * 1000:7.1f} ms   "
          f"p95 {percentile(floor, 95) * 1000:7.1f} ms")
    print(f"  dispatch  incoming/ -> first model request  p50 {d50 * 1000:7.1f} ms   "
          f"p95 {d95 * 1000:7.1f} ms")
    print(f"  end to end  incoming/ -> reply record       p50 "
          f"{percentile(reply, 50) * 1000:7.1f} ms   p95 {percentile(reply, 95) * 1000:7.1f} ms")
    print(f"  ratio dispatch/floor: p50 {d50 / f50:.2f}x   p95 {d95 / f50:.2f}x")
    print(f"  (mean dispatch {statistics.mean(first) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
