"""What a task's cgroup uses, on cgroup v2 (real hosts) and v1 (older ones, the lab).

The runner samples each running task's unit (memory and CPU) and keeps the samples
with the conversation, metrics/<task>.jsonl, one JSON object a line; the dashboard
reads the samples and, while the task runs, the cgroup itself. Only this module knows
where the files are.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from airut_core import schema

ROOT = Path("/sys/fs/cgroup")
TASK_SLICE = "airut-tasks.slice"  # every task unit's slice
SAMPLES_DIR = "metrics"
SAMPLES_MAX_BYTES = 1 << 20  # per task: ~15,000 samples; past it the runner stops adding
NO_LIMIT = 1 << 62  # v1 writes 9223372036854771712 for "no limit"


def unit_path(unit: str, slice_name: str) -> str:
    """The cgroup of a unit in a slice, as systemd names it: each dash of a slice's name
    is a level (airut-tasks.slice lives in airut.slice)."""
    parts = slice_name.removesuffix(".slice").split("-")
    slices = ["-".join(parts[:i + 1]) + ".slice" for i in range(len(parts))]
    return "/".join([*slices, unit])


@dataclass
class Usage:
    memory: int | None  # bytes now
    cpu_usec: int | None  # CPU time used since the cgroup was made
    memory_max: int | None = None  # the limit, None without one
    cpu_quota: float | None = None  # in CPUs (1.0 = one core), None without one


def usage(path: str, root: Path = ROOT) -> Usage | None:
    """What the cgroup uses now; None when it does not exist (the unit is gone)."""
    if (root / "cgroup.controllers").exists():  # v2: one hierarchy
        base = root / path
        if not base.is_dir():
            return None
        cpu = _keyed(base / "cpu.stat").get("usage_usec")
        quota = _read(base / "cpu.max")
        return Usage(memory=_int(_read(base / "memory.current")), cpu_usec=cpu,
                     memory_max=_limit(_read(base / "memory.max")),
                     cpu_quota=_v2_quota(quota))
    memory = root / "memory" / path
    if not memory.is_dir():
        return None
    cpuacct = next((root / d / path for d in ("cpuacct", "cpu,cpuacct")
                    if (root / d / path).is_dir()), None)
    cpu_ns = _int(_read(cpuacct / "cpuacct.usage")) if cpuacct else None
    cpu = next((root / d / path for d in ("cpu", "cpu,cpuacct") if (root / d / path).is_dir()),
               None)
    quota = _int(_read(cpu / "cpu.cfs_quota_us")) if cpu else None
    period = _int(_read(cpu / "cpu.cfs_period_us")) if cpu else None
    return Usage(memory=_int(_read(memory / "memory.usage_in_bytes")),
                 cpu_usec=cpu_ns // 1000 if cpu_ns is not None else None,
                 memory_max=_limit(_read(memory / "memory.limit_in_bytes")),
                 cpu_quota=quota / period if quota and quota > 0 and period else None)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _limit(text: str) -> int | None:
    value = _int(text)
    return value if value is not None and value < NO_LIMIT else None


def _v2_quota(text: str) -> float | None:
    quota, _, period = text.partition(" ")
    return int(quota) / int(period) if quota.isdigit() and period.isdigit() and \
        int(period) else None


def _keyed(path: Path) -> dict[str, int]:
    found = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.isdigit():
            found[key] = int(value)
    return found


# -- samples kept with the conversation ------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the epoch
    memory: int | None
    cpu_usec: int | None


def samples_file(conversation_dir: Path, task_id: str) -> Path:
    return conversation_dir / SAMPLES_DIR / f"{task_id}.jsonl"


def append_sample(path: Path, sample: Sample, gid: int | None = None) -> bool:
    """Add one sample; False once the file is at its cap. The runner is the only
    writer; the directory is made 0750 with the daemons' group, like the others."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o750, exist_ok=True)
        if gid is not None:
            os.chown(path.parent, 0, gid)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o640)
    try:
        if os.fstat(fd).st_size >= SAMPLES_MAX_BYTES:
            return False
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.write(fd, (json.dumps(asdict(sample), separators=(",", ":")) + "\n").encode())
        return True
    finally:
        os.close(fd)


def read_samples(path: Path) -> list[Sample]:
    """The samples in order; lines that are not samples are skipped."""
    found = []
    with contextlib.suppress(OSError):
        with open(path, "rb") as f:
            data = f.read(SAMPLES_MAX_BYTES + 4096)
        for line in data.splitlines():
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                d = json.loads(line)
                t = float(d["t"])
                found.append(Sample(t, schema.count(d.get("memory"), 1 << 62),
                                    schema.count(d.get("cpu_usec"), 1 << 62)))
    return found


def sample_now(path: str, root: Path = ROOT) -> Sample | None:
    used = usage(path, root)
    return Sample(time.time(), used.memory, used.cpu_usec) if used else None
