"""Files the agent leaves in /outbox travel with its reply.

Only regular files in the outbox root are sent (links, directories and special
files are not, and the reply says so), up to execution.outbox_max_bytes per reply;
what does not fit stays in the outbox for the next reply. Sent files move into the
spool beside the reply record (outgoing/<channel>/<task>.files/) before the record
is written, so the record never names a file that is not there.

The outbox is the agent's directory: every entry is opened through a descriptor of it
without following links, and names are made safe (valid UTF-8, printable, at most 200
bytes) before they go into the spool, a record or a mail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from airut_core.spool import DIR_FLAGS
from airut_runner.outcome import format_bytes
from airut_runner.workspace import create_exclusive, safe_name

ENTRIES_MAX = 1000  # outbox entries looked at per reply; the rest wait for the next
NOTES_MAX = 20  # "not sent" notes in a reply


@dataclass
class Collected:
    names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self) -> str:
        if not self.notes:
            return ""
        shown = self.notes[:NOTES_MAX]
        more = len(self.notes) - len(shown)
        return (f"Files not sent: {'; '.join(shown)}"
                + (f"; and {more} more." if more > 0 else "."))


def collect(outbox: Path, dest: Path, max_bytes: int) -> Collected:
    result = Collected()
    if dest.is_dir() and not dest.is_symlink():  # an earlier attempt moved these already
        result.names = sorted(p.name for p in dest.iterdir() if p.is_file()
                              and not p.is_symlink())
    total = sum((dest / n).lstat().st_size for n in result.names)
    try:
        box = os.open(outbox, DIR_FLAGS)
    except FileNotFoundError:
        return result
    try:
        entries = sorted(os.listdir(box))
        if len(entries) > ENTRIES_MAX:
            result.notes.append(f"{len(entries) - ENTRIES_MAX} entries beyond the first "
                                f"{ENTRIES_MAX} (they stay in /outbox)")
        for name in entries[:ENTRIES_MAX]:
            shown = safe_name(name)
            info = os.stat(name, dir_fd=box, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                result.notes.append(f"{shown} (links are not sent)")
            elif stat.S_ISDIR(info.st_mode):
                result.notes.append(f"{shown}/ (directories are not sent; put files in the "
                                    "outbox root)")
            elif not stat.S_ISREG(info.st_mode):
                result.notes.append(f"{shown} (not a regular file)")
            elif total + info.st_size > max_bytes:
                result.notes.append(f"{shown} ({format_bytes(info.st_size)}: over the "
                                    f"{format_bytes(max_bytes)} limit per reply; it stays in "
                                    "/outbox)")
            else:
                # Group access (the channel's default ACL, or its setgid group) lets the
                # channel's own user read and, once sent, remove these files.
                _own_directory(dest)
                used = _move(box, name, dest, max_bytes - total)
                if used is not None:
                    total += (dest / used).stat().st_size
                    result.names.append(used)
    finally:
        os.close(box)
    result.names.sort()
    return result


def _own_directory(dest: Path) -> None:
    """dest as a real directory: the channel's user can write the stage it is in, so a
    link or file planted under this name is removed first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(dest, 0o770)
    except FileExistsError:
        info = os.lstat(dest)
        if stat.S_ISDIR(info.st_mode):
            return
        os.unlink(dest)
        os.mkdir(dest, 0o770)


def _move(box: int, name: str, dest: Path, room: int) -> str | None:
    """Copy one file out of the outbox (never through a link, at most `room` bytes),
    then remove it there. Returns its name in dest, None if it was not a regular file
    when opened."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=box)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        out = os.open(dest, DIR_FLAGS)
        try:
            used, target = create_exclusive(out, safe_name(name), mode=0o660)
        finally:
            os.close(out)
        with os.fdopen(target, "wb") as dst:
            shutil.copyfileobj(_Limited(src, room), dst)
            dst.flush()
            os.fsync(dst.fileno())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=box)
    return used


class _Limited:
    """At most n bytes of a file (it cannot grow past what was measured)."""

    def __init__(self, f, n: int):
        self.f, self.left = f, n

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size < 0 else min(size, self.left)
        data = self.f.read(size)
        self.left -= len(data)
        return data
