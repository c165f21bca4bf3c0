"""What the benchmarks share: the lab, submitting records as a channel would, and
reading when things happened from the runner's journal and the demo model's log
(both stamped by the guest, which shares the host's clock)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

from airut_core.paths import Spool
from airut_core.records import TaskRecord
from tests.system.lab import Lab

IMAGE = "localhost/airut-base:latest"


@contextlib.contextmanager
def booted(config: dict) -> Iterator[Lab]:
    """The lab guest up with this configuration, down again afterwards whatever happens."""
    lab = Lab()
    lab.up(config)
    try:
        yield lab
    finally:
        lab.down()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ms(values: list[float]) -> str:
    p50, p95 = percentile(values, 50) * 1000, percentile(values, 95) * 1000
    return f"p50 {p50:7.1f} ms   p95 {p95:7.1f} ms"


def submit(lab: Lab, text: str, repo: str = "demo",
           conversation: str | None = None) -> tuple[str, float]:
    """Commit a task record into incoming/; returns its id and the commit time."""
    task = TaskRecord(repo=repo, channel="local", reply_to="bench", sender="bench", text=text,
                      conversation_id=conversation)
    Spool(lab.spool).incoming.put(task.task_id, task.to_dict())
    return task.task_id, time.time()


def wait_reply(lab: Lab, task: str, timeout: float = 300) -> dict:
    path = Spool(lab.spool).outgoing("local").file(task)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"task {task} got no reply within {timeout:.0f} s")
        time.sleep(0.005)
    return json.loads(path.read_text())


def first_requests(lab: Lab, marks: dict[str, str]) -> dict[str, float]:
    """For each task, when the model first saw a request carrying its unique text."""
    seen: dict[str, float] = {}
    for request in lab.model_requests():
        body = json.dumps(request["body"])
        for task, mark in marks.items():
            if mark in body and task not in seen:
                seen[task] = request["time"]
    missing = set(marks) - set(seen)
    if missing:
        raise SystemExit(f"the model never saw tasks {sorted(missing)}")
    return seen


def claim_times(lab: Lab) -> dict[str, float]:
    """When the runner claimed each task (its journal line)."""
    out = lab.guest("journalctl", "--no-pager", "-o", "json",
                    "SYSLOG_IDENTIFIER=airut-runner").stdout
    claimed = {}
    for line in out.splitlines():
        entry = json.loads(line)
        if str(entry.get("MESSAGE", "")).startswith("claimed task") and "AIRUT_TASK" in entry:
            claimed.setdefault(entry["AIRUT_TASK"], int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
    return claimed


def floor_runs(lab: Lab, n: int) -> list[float]:
    """`podman run --rm IMAGE true`, timed inside the guest."""
    script = (f"for i in $(seq {n}); do s=$(date +%s.%N); podman run --rm {IMAGE} true; "
              "e=$(date +%s.%N); echo $s $e; done")
    out = lab.guest("sh", "-c", script, timeout=600).stdout.split("\n")
    return [float(e) - float(s) for s, e in (line.split() for line in out if line.strip())]


def one_at_a_time(lab: Lab, n: int, repo: str = "demo") -> dict[str, list[float]]:
    """n tasks in new conversations, each submitted after the previous replied."""
    marker = lab.scenario("bench", [{"text": "ok"}])
    commit, reply, marks = {}, {}, {}
    for i in range(n):
        mark = f"bench-{i}-{time.time_ns()}"
        task, committed = submit(lab, f"{marker} {mark}", repo)
        wait_reply(lab, task)
        commit[task], reply[task], marks[task] = committed, time.time(), mark
    first, claimed = first_requests(lab, marks), claim_times(lab)
    return {"dispatch": [first[t] - commit[t] for t in marks],
            "claimed": [first[t] - claimed[t] for t in marks],
            "reply": [reply[t] - commit[t] for t in marks]}
