"""Commands in a task's sandbox (`airut sandbox run`, a schedule's trigger_command):
the contract between whoever asks and airut-runner, which runs them.

The asker (root's `airut`) writes commands/<id>.json (records.CommandRecord); for a
trusted checkout also commands/<id>.context/, the image's build context exactly as
hashed (snapshot()). The runner prepares what a task would get (image, network and
policy, surrogates of masked secrets, limits) and runs the command as the transient
unit airut-sandbox-<id>.service, whose ExecStopPost writes command-ends/<id>.json. The
command's output lands in <state>/sandbox/<id>/stdout and stderr as it comes. Once the
unit is gone and its network, policy and ids are released, the runner writes
result.json there and removes the request. The asker follows the two files until
result.json appears (follow()), then removes the directory; housekeeping removes the
ones nobody came back for.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from airut_core import paths
from airut_core.records import CommandRecord, ControlRecord
from airut_core.spool import RecordError, load, new_name, write_atomic

UNIT_PREFIX = "airut-sandbox-"
RESULT = "result.json"
CONTEXT_SUFFIX = ".context"
RUN_DIR_MAX_AGE = 86400.0  # housekeeping: results nobody came back for

# Exit codes of `airut sandbox run` beside the command's own (those of `timeout`,
# `docker run` and a SIGKILL, which users of CI scripts already know).
TIMEOUT = 124
INFRASTRUCTURE = 125
OUT_OF_MEMORY = 137
STOPPED = 130


def unit_name(command_id: str) -> str:
    return f"{UNIT_PREFIX}{command_id}.service"


def run_dir(state_dir: Path | str, command_id: str) -> Path:
    return Path(state_dir) / "sandbox" / paths._checked(paths.TASK_ID, command_id, "command id")


def context_dir(spool: paths.Spool, command_id: str) -> Path:
    return spool.commands.path / f"{command_id}{CONTEXT_SUFFIX}"


def uid_claim(command_id: str) -> str:
    """The owner name of the command's id range in the runner's pool."""
    return f"sandbox-{command_id}"


# -- how a command ended ------------------------------------------------------------------


@dataclass
class Result:
    exit_code: int
    outcome: str  # exited, timeout, out_of_memory, stopped, error, lost
    error: str | None = None
    unit: str | None = None

    def to_dict(self) -> dict:
        return {"exit_code": self.exit_code, "outcome": self.outcome, "error": self.error,
                "unit": self.unit}


def result_of(marker: dict, stop_requested: bool = False) -> Result:
    """The unit's ExecStopPost marker (task_exit) as the command's exit code."""
    unit = marker.get("unit") if isinstance(marker.get("unit"), str) else None
    result, code, status = (str(marker.get(k, "")) for k in
                            ("service_result", "exit_code", "exit_status"))
    if result == "oom-kill" or (isinstance(marker.get("oom_kills"), int)
                                and marker["oom_kills"] > 0):
        return Result(OUT_OF_MEMORY, "out_of_memory", "the command ran out of memory",
                      unit=unit)
    if result == "timeout":
        return Result(TIMEOUT, "timeout", "the command ran past its timeout and was stopped",
                      unit=unit)
    if stop_requested:
        return Result(STOPPED, "stopped", "the command was stopped", unit=unit)
    if code == "exited" and status.isdigit():
        return Result(int(status), "exited", unit=unit)
    if code in ("killed", "dumped"):
        try:
            number = signal.Signals[f"SIG{status}"].value
        except KeyError:
            number = int(status) if status.isdigit() else 0
        if number:
            return Result(128 + number, "exited", f"the command was killed by signal {status}",
                          unit=unit)
    return Result(INFRASTRUCTURE, "error", f"the unit ended without an exit status "
                  f"(result {result or 'unknown'})", unit=unit)


def write_result(directory: Path, result: Result) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(directory / RESULT, json.dumps(result.to_dict()).encode(), mode=0o600)


def read_result(directory: Path) -> Result | None:
    try:
        data = load((directory / RESULT).read_bytes(), str(directory / RESULT))
    except FileNotFoundError:
        return None
    except RecordError as e:
        return Result(INFRASTRUCTURE, "error", str(e))
    code = data.get("exit_code")
    return Result(code if isinstance(code, int) else INFRASTRUCTURE,
                  str(data.get("outcome") or "error"),
                  data.get("error") if isinstance(data.get("error"), str) else None,
                  data.get("unit") if isinstance(data.get("unit"), str) else None)


# -- the image's context, hashed -------------------------------------------------------------


class SnapshotError(ValueError):
    pass


def snapshot(directory: Path, target: Path | None = None,
             owner: tuple[int, int] | None = None) -> str:
    """The git tree id of a directory's files (what the runner tags images by: the same
    id as that directory committed on a default branch), and, with target, a copy of
    exactly those files. Git computes it in a throw-away repository: links are kept as
    links, ignore files are not honoured, nothing is written into the directory.

    With owner (uid, gid), git reads the directory as that user: root hashing a user's
    checkout must not pull in what only root may read (a link to /root/.ssh)."""
    if not directory.is_dir():
        raise SnapshotError(f"{directory} is not a directory")
    with tempfile.TemporaryDirectory(prefix="airut-snapshot-") as tmp:
        base = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
        env = {**base, "GIT_DIR": tmp, "GIT_WORK_TREE": str(directory),
               "GIT_INDEX_FILE": f"{tmp}/index"}
        as_user: dict = {}
        if owner is not None:
            os.chown(tmp, *owner)
            as_user = {"user": owner[0], "group": owner[1], "extra_groups": [], "cwd": tmp}

        def git(*args: str) -> subprocess.CompletedProcess:
            try:
                return subprocess.run(["git", "-c", "safe.directory=*", "-c",
                                       "core.autocrlf=false", *args], check=True, timeout=120,
                                      env=env if args[0] != "init" else base,
                                      capture_output=True, **as_user)
            except subprocess.CalledProcessError as e:
                error = (e.stderr or b"").decode(errors="replace").strip()
                raise SnapshotError(f"cannot read {directory}: {error}") from e

        git("init", "--quiet", "--bare", tmp)
        git("add", "--all", "--force", ".")
        tree = git("write-tree").stdout.decode().strip()
        if target is not None:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(mode=0o700, parents=True)
            archive = git("archive", "--format=tar", tree).stdout
            subprocess.run(["tar", "-x", "--no-same-owner", "-C", str(target)],
                           input=archive, check=True, capture_output=True, timeout=120)
        return tree


# -- asking -------------------------------------------------------------------------------


def submit(spool: paths.Spool, record: CommandRecord, context: Path | None = None,
           owner: tuple[int, int] | None = None) -> str:
    """Queue a command (root only); with context, the image's build context goes along
    (read as owner). Returns the command's id."""
    spool.commands.ensure(mode=0o700)
    if context is not None:
        snapshot(context, context_dir(spool, record.command_id), owner)
    spool.commands.put(record.command_id, record.to_dict())
    return record.command_id


def stop(spool: paths.Spool, command_id: str, who: str) -> None:
    control = ControlRecord(task_id=command_id, requested_by=who)
    spool.control.ensure().put(new_name(), control.to_dict())


class Follower:
    """Copies a command's stdout and stderr to the asker's as they grow."""

    def __init__(self, directory: Path, out: BinaryIO | None, err: BinaryIO | None):
        self.directory = directory
        self.streams = {"stdout": [out, 0], "stderr": [err, 0]}

    def pump(self) -> int:
        moved = 0
        for name, entry in self.streams.items():
            stream, offset = entry
            try:
                with open(self.directory / name, "rb") as f:
                    f.seek(offset)
                    data = f.read(1 << 20)
            except FileNotFoundError:
                continue
            if data:
                entry[1] = offset + len(data)
                moved += len(data)
                if stream is not None:
                    stream.write(data)
                    stream.flush()
        return moved


def follow(directory: Path, out: BinaryIO | None, err: BinaryIO | None,
           waiting: Callable[[float], None] | None = None, poll: float = 0.02) -> Result:
    """Stream the command's output until its result is there; `waiting(seconds)` is
    called while nothing has started (the runner may be down)."""
    follower = Follower(directory, out, err)
    since = time.monotonic()
    told = 0.0
    while True:
        result = read_result(directory)
        while follower.pump():
            pass
        if result is not None:
            return result
        if waiting and not (directory / "stdout").exists():
            waited = time.monotonic() - since
            if waited - told >= 10:
                told = waited
                waiting(waited)
        time.sleep(poll)


def remove_run(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(directory)
