"""The spool: the only contract between airut's daemons.

Rules (design.md, "The spool"), in the style of Postfix and qmail:
- one directory per stage, one writer per directory;
- a record is written whole into the stage's tmp/, fsynced, renamed into place,
  then the directory is fsynced: readers never see half a record;
- claiming is a rename: whoever wins the rename owns the record;
- inotify is only a doorbell; a scan of the directory is the truth;
- a record that fails three times moves to failed/<stage>/ with its reasons;
- old records are removed by age, by the stage's owner.

State is which files exist where. Nothing here parses names beyond ordering.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import select
import stat
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import inotify_simple

SUFFIX = ".json"
RECORD_MAX = 16 << 20  # a record (a reply with a long answer) stays far below this
TMP = "tmp"
MAX_FAILURES = 3


class RecordError(ValueError):
    """A record that cannot be read or does not match its schema."""


def new_name() -> str:
    """A name that sorts by creation time, unique thanks to its random part.

    Also used as the task id, so it is safe in unit names and paths.
    """
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"{stamp}{int(now * 1000) % 1000:03d}-{secrets.token_hex(3)}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def write_atomic(path: Path, data: bytes, tmp_dir: Path | None = None, mode: int = 0o640,
                 gid: int | None = None) -> None:
    """Write data to path so that readers see either nothing or all of it.

    The temporary file lives in tmp_dir (same filesystem as path), so a crash
    leaves at most a stale file there, never a partial record at path. Both
    directories are opened without following a link, and the file is made and
    renamed through them: a stage's tmp/ may be writable by a less trusted user (a
    channel's own stages), who must not be able to point root's write elsewhere.
    """
    tmp_dir = tmp_dir or path.parent
    tmp = f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    tmp_fd = os.open(tmp_dir, DIR_FLAGS)
    try:
        dir_fd = os.open(path.parent, DIR_FLAGS)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, mode, dir_fd=tmp_fd)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    if gid is not None:  # before the rename: readers never see it otherwise
                        os.fchown(f.fileno(), -1, gid)
                    os.fsync(f.fileno())
                os.rename(tmp, path.name, src_dir_fd=tmp_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=tmp_fd)
                raise
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        os.close(tmp_fd)


def dump(record: dict) -> bytes:
    return (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()


def load(data: bytes, where: str, max_bytes: int | None = None) -> dict:
    limit = max_bytes or RECORD_MAX
    if len(data) > limit:
        raise RecordError(f"{where}: larger than {limit} bytes")
    try:
        record = json.loads(data)
    except (ValueError, RecursionError) as e:  # bad UTF-8, JSON, a 5,000-digit number
        raise RecordError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a record must be a JSON object")
    return record


class Stage:
    """One spool directory holding records NAME.json, written through its tmp/."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.tmp = self.path / TMP

    def __repr__(self) -> str:
        return f"Stage({str(self.path)!r})"

    def ensure(self, mode: int = 0o770) -> Stage:
        # The stage itself too, not only its tmp/: a parent made by mkdir(parents=True)
        # would get the default mode, readable by every user of the host.
        self.path.mkdir(parents=True, exist_ok=True, mode=mode)
        self.tmp.mkdir(exist_ok=True, mode=mode)
        return self

    def file(self, name: str) -> Path:
        return self.path / f"{name}{SUFFIX}"

    def put(self, name: str, record: dict, gid: int | None = None) -> Path:
        path = self.file(name)
        write_atomic(path, dump(record), self.tmp, gid=gid)
        return path

    def names(self) -> list[str]:
        """Names of the records present now, oldest first."""
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(e[: -len(SUFFIX)] for e in entries if e.endswith(SUFFIX) and e[0] != ".")

    def exists(self, name: str) -> bool:
        return self.file(name).exists()

    def read(self, name: str, max_bytes: int | None = None) -> dict:
        """The record; FileNotFoundError if it is gone, RecordError if unreadable.

        Some stages are written by less trusted users than their readers (a channel's
        user writes incoming/, root reads it): a link there is not followed."""
        path = self.file(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise RecordError(f"{path}: is a symbolic link, not a record") from e
            raise
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RecordError(f"{path}: not a regular file")
            return load(f.read((max_bytes or RECORD_MAX) + 1), str(path), max_bytes)

    def move_to(self, name: str, other: Stage, new_name: str | None = None) -> bool:
        """Rename a record into another stage: the claim. False if someone else won."""
        try:
            os.rename(self.file(name), other.file(new_name or name))
        except FileNotFoundError:
            return False
        fsync_dir(other.path)
        return True

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file(name))

    def age(self, name: str) -> float:
        return time.time() - self.file(name).stat().st_mtime

    def clean(self, max_age: float) -> list[str]:
        """Remove records older than max_age seconds, and stale tmp files. Returns names removed."""
        removed = []
        for name in self.names():
            with contextlib.suppress(FileNotFoundError):
                if self.age(name) > max_age:
                    self.remove(name)
                    removed.append(name)
        self.clean_tmp(min(max_age, 3600))
        return removed

    def clean_tmp(self, max_age: float = 3600) -> int:
        """Remove what crashed writers left in tmp/; they never became records."""
        count = 0
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.tmp):
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat().st_mtime > max_age:
                        os.unlink(entry.path)
                        count += 1
        return count


def record_failure(
    stage: Stage, name: str, record: dict, reason: str, failed: Stage, limit: int = MAX_FAILURES
) -> bool:
    """Count one failure against a record; quarantine it on the limit-th one.

    The failures travel in the record itself (a list of {time, reason}), so the
    count survives restarts. Returns True when the record went to `failed`.
    """
    failures = record.setdefault("failures", [])
    failures.append({"time": utc_now(), "reason": reason})
    stage.put(name, record)
    if len(failures) < limit:
        return False
    failed.ensure()
    stage.move_to(name, failed)
    return True


def failures(record: dict) -> int:
    return len(record.get("failures") or [])


class Doorbell:
    """inotify on spool directories, plus ring() for other threads. Only a hint that
    something changed: the owner always rescans."""

    MASK = inotify_simple.flags.MOVED_TO | inotify_simple.flags.CLOSE_WRITE

    def __init__(self, dirs: Iterable[Path], deletions: bool = False):
        self._inotify = inotify_simple.INotify()
        mask = self.MASK
        if deletions:
            mask |= inotify_simple.flags.DELETE | inotify_simple.flags.MOVED_FROM
        for d in dirs:
            self._inotify.add_watch(str(d), mask)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def ring(self) -> None:
        """Wake the waiting thread (safe from any thread)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    def wait(self, timeout: float) -> bool:
        """Block until something arrives or timeout seconds pass; True if rung."""
        ready, _, _ = select.select([self._inotify.fileno(), self._wake_r], [], [],
                                    max(0.0, timeout))
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        if self._inotify.fileno() in ready:
            # Drain what is queued so one burst costs one rescan.
            while self._inotify.read(timeout=0):
                pass
        return bool(ready)

    def close(self) -> None:
        self._inotify.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
