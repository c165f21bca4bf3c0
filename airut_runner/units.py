"""Task units: one transient systemd service per task, started over D-Bus (pystemd).

The unit, not the runner, owns the task: restarting the runner leaves it running.
When the unit ends, its ExecStopPost writes finished/<task>.json into the spool,
so the outcome is on disk even if no runner is alive to see the unit go.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from pystemd.dbusexc import DBusBaseError
from pystemd.dbuslib import DBus
from pystemd.systemd1 import Manager
from pystemd.systemd1 import unit_signatures as _sig

from airut_core import cgroup
from airut_core.config import ResourceLimits

UNIT_PREFIX = "airut-task-"
SLICE = cgroup.TASK_SLICE

# Transient properties systemd 252 accepts that pystemd 0.15 has no signature for.
_sig.KNOWN_UNIT_SIGNATURES.setdefault(b"LogExtraFields", b"aay")
_sig.KNOWN_UNIT_SIGNATURES.setdefault(b"StandardInputFile", b"s")
_sig.KNOWN_UNIT_SIGNATURES.setdefault(b"OOMPolicy", b"s")


def unit_name(conversation_id: str, task_id: str) -> str:
    return f"{UNIT_PREFIX}{conversation_id}-{task_id}.service"


@dataclass
class TaskUnit:
    name: str
    argv: list[str]
    stdin_file: Path
    stdout_file: Path
    spool_dir: str
    task_id: str
    conversation_id: str
    repo: str
    limits: ResourceLimits
    stop_grace: int

    def properties(self) -> dict[bytes, object]:
        return service(
            f"airut task {self.task_id} (conversation {self.conversation_id}, repository "
            f"{self.repo})", self.argv, ["finished", self.spool_dir, self.task_id],
            "airut-task", {"AIRUT_TASK": self.task_id,
                           "AIRUT_CONVERSATION": self.conversation_id, "AIRUT_REPO": self.repo},
            limit_properties(self.limits, self.limits.timeout, self.stop_grace),
            {b"StandardInputFile": str(self.stdin_file).encode(),
             b"StandardOutputFileToAppend": str(self.stdout_file).encode(),
             b"StandardError": b"journal"})


def service(description: str, argv: list[str], marker: list[str], identifier: str,
            fields: dict[str, str], limits: dict[bytes, object], io: dict[bytes, object],
            ) -> dict[bytes, object]:
    """A task's or a command's transient service: its ExecStopPost writes how it ended
    into the spool (task_exit: stage, spool directory, name)."""
    stage, *args = marker
    exit_helper = [sys.executable, "-m", "airut_runner.task_exit", "--stage", stage, *args]
    return {
        b"Description": description.encode(),
        b"Slice": SLICE.encode(),
        b"ExecStart": [exec_line(argv)],
        b"ExecStopPost": [exec_line(exit_helper)],
        **io,
        b"SyslogIdentifier": identifier.encode(),
        b"LogExtraFields": [f"{k}={v}".encode() for k, v in fields.items()],
        **limits,
    }


def limit_properties(limits: ResourceLimits, timeout: int, stop_grace: int,
                     ) -> dict[bytes, object]:
    """A task's limits and how it is stopped, for a task's or a command's unit."""
    return {
        b"MemoryMax": limits.memory,
        # cgroup v2: MemoryMax caps RAM only; on a host with swap, a task past its
        # limit would swap (as far as the host's swap goes) instead of ending as
        # out_of_memory. v1 has no such knob here and ignores it.
        b"MemorySwapMax": 0,
        # podman --cgroups=split puts the container in sub-cgroups of this unit and,
        # on cgroup v2, enables controllers for them; from then on the unit's own
        # cgroup may hold no process (v2's no-internal-process rule), and without
        # delegation systemd fails to start ExecStopPost there ("Failed to attach
        # to cgroup ... Device or resource busy", status 219/CGROUP): no task would
        # write its result. Delegated, the subtree is podman's and systemd runs
        # control processes in a .control sub-cgroup (task_exit.py looks up).
        b"Delegate": True,
        # Any process of the task killed for memory stops the whole task and the
        # unit ends with result oom-kill (v2; v1 cannot see such kills). It must be
        # explicit: with Delegate=yes systemd's default is `continue`.
        b"OOMPolicy": b"stop",
        b"CPUQuotaPerSecUSec": int(limits.cpus * 1_000_000),
        b"TasksMax": limits.pids_limit,
        b"RuntimeMaxUSec": timeout * 1_000_000,
        # SIGTERM to podman alone, which stops the container cleanly; then
        # SIGKILL to everything left after the grace period.
        b"KillMode": b"mixed",
        b"TimeoutStopUSec": stop_grace * 1_000_000,
        b"CollectMode": b"inactive-or-failed",
    }


@dataclass
class CommandUnit:
    """A command in the sandbox (airut_runner/commands.py): its output into two files,
    stdin empty, the same limits and stop as a task's unit."""

    name: str
    argv: list[str]
    stdout_file: Path
    stderr_file: Path
    spool_dir: str
    command_id: str
    repo: str | None
    limits: ResourceLimits
    timeout: int
    stop_grace: int

    def properties(self) -> dict[bytes, object]:
        fields = {"AIRUT_SANDBOX": self.command_id}
        if self.repo:
            fields["AIRUT_REPO"] = self.repo
        return service(
            f"airut sandbox command {self.command_id}"
            f"{f' (repository {self.repo})' if self.repo else ''}", self.argv,
            ["command-ends", self.spool_dir, self.command_id], "airut-sandbox", fields,
            limit_properties(self.limits, self.timeout, self.stop_grace),
            {b"StandardOutputFileToAppend": str(self.stdout_file).encode(),
             b"StandardErrorFileToAppend": str(self.stderr_file).encode()})


def exec_line(argv: list[str]) -> tuple[bytes, list[bytes], bool]:
    # systemd expands $VAR in Exec* arguments, even over D-Bus; $$ is a literal $.
    return (argv[0].encode(), [a.replace("$", "$$").encode() for a in argv], False)


class Systemd:
    """The few manager calls the runner needs, on one system-bus connection."""

    def __init__(self) -> None:
        self._bus = DBus()
        self._bus.open()
        self._manager = Manager(bus=self._bus)
        self._manager.load()

    def start(self, name: str, properties: dict[bytes, object]) -> bool:
        """Start a transient unit; False if a unit of that name is already loaded."""
        try:
            self._manager.Manager.StartTransientUnit(name.encode(), b"fail", properties)
        except DBusBaseError as e:
            if "UnitExists" in str(e.err_name) or "already exists" in str(e):
                return False
            raise
        return True

    def start_unit(self, name: str) -> None:
        """Start an installed unit (not a transient one)."""
        self._manager.Manager.StartUnit(name.encode(), b"replace")

    def stop(self, name: str) -> bool:
        """Stop a unit; False if no such unit is loaded (it ended meanwhile)."""
        try:
            self._manager.Manager.StopUnit(name.encode(), b"replace")
        except DBusBaseError as e:
            if "NoSuchUnit" in str(e.err_name) or "not loaded" in str(e):
                return False
            raise
        return True

    def active_state(self, name: str) -> str | None:
        return self.loaded(name).get(name)

    def loaded(self, prefix: str = UNIT_PREFIX) -> dict[str, str]:
        """Loaded units whose names start with prefix, and their ActiveState."""
        units = self._manager.Manager.ListUnitsByPatterns([], [f"{prefix}*".encode()])
        return {u[0].decode(): u[3].decode() for u in units}

    def close(self) -> None:
        self._bus.close()
