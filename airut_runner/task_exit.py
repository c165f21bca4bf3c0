"""ExecStopPost of a task unit: write how the unit ended into the spool's finished/.

Runs inside the task unit's cgroup (on cgroup v2 in its `.control` sub-cgroup)
after the main process is gone, so the unit's memory counters still tell whether
the kernel killed something for exceeding MemoryMax. systemd passes
SERVICE_RESULT, EXIT_CODE and EXIT_STATUS.

Usage: python -m airut_runner.task_exit [--stage builds|command-ends] SPOOL_DIR NAME
(image build and command units use the same helper, writing into their own stage)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from airut_core.paths import Spool
from airut_core.spool import utc_now

CGROUP_ROOT = Path("/sys/fs/cgroup")


def memory_cgroup(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT) -> Path | None:
    """The task unit's memory cgroup directory (cgroup v1 or v2), from /proc/self/cgroup.

    The unit is delegated (units.py), so on v2 systemd runs this helper in the unit's
    `.control` sub-cgroup: the unit's own counters are one level up. On v2 they count
    the whole subtree (the container's payload cgroup included); never read further up,
    where the slice's counters add up every task's kills.
    """
    if proc_cgroup is None:
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    v2 = None
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return _unit_level(root / "memory" / path.lstrip("/"))
        if controllers == "":
            v2 = _unit_level(root / path.lstrip("/"))
    return v2 if v2 and (v2 / "memory.events").exists() else None


def _unit_level(cgroup: Path) -> Path:
    return cgroup.parent if cgroup.name == ".control" else cgroup


def oom_kills(cgroup: Path | None) -> int:
    """How many processes the kernel killed in this cgroup for lack of memory."""
    if cgroup is None:
        return 0
    for name in ("memory.events", "memory.oom_control"):  # v2, v1
        try:
            for line in (cgroup / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            continue
    return 0


def limit_hits(cgroup: Path | None) -> int:
    """v1 only: how often usage hit the limit (memory.failcnt); 0 where unknown."""
    try:
        return int((cgroup / "memory.failcnt").read_text()) if cgroup else 0
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    stage = "finished"
    if args[:1] == ["--stage"]:
        stage, args = args[1], args[2:]
    spool_dir, task_id = args[:2]
    cgroup = memory_cgroup()
    marker = {
        "task_id": task_id,
        "service_result": os.environ.get("SERVICE_RESULT", ""),
        "exit_code": os.environ.get("EXIT_CODE", ""),
        "exit_status": os.environ.get("EXIT_STATUS", ""),
        "oom_kills": oom_kills(cgroup),
        "memory_limit_hits": limit_hits(cgroup),
        "invocation_id": os.environ.get("INVOCATION_ID", ""),
        "finished": utc_now(),
    }
    spool = Spool(spool_dir)
    target = {"builds": spool.builds, "command-ends": spool.command_ends}.get(stage,
                                                                             spool.finished)
    target.ensure().put(task_id, marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
