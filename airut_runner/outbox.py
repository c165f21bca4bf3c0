"""Files the agent leaves in /outbox travel with its reply.

Only regular files in the outbox root are sent (links, directories and special
files are not, and the reply says so), up to execution.outbox_max_bytes per reply;
what does not fit stays in the outbox for the next reply. Sent files move into the
spool beside the reply record (outgoing/<channel>/<task>.files/) before the record
is written, so the record never names a file that is not there.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from airut_runner.outcome import format_bytes


@dataclass
class Collected:
    names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self) -> str:
        return f"Files not sent: {'; '.join(self.notes)}." if self.notes else ""


def collect(outbox: Path, dest: Path, max_bytes: int) -> Collected:
    result = Collected()
    if dest.is_dir():  # an earlier attempt moved these already
        result.names = sorted(p.name for p in dest.iterdir())
    total = sum((dest / n).stat().st_size for n in result.names)
    try:
        entries = sorted(os.scandir(outbox), key=lambda e: e.name)
    except FileNotFoundError:
        return result
    for entry in entries:
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            result.notes.append(f"{entry.name} (links are not sent)")
        elif stat.S_ISDIR(info.st_mode):
            result.notes.append(f"{entry.name}/ (directories are not sent; put files in the "
                                "outbox root)")
        elif not stat.S_ISREG(info.st_mode):
            result.notes.append(f"{entry.name} (not a regular file)")
        elif total + info.st_size > max_bytes:
            result.notes.append(f"{entry.name} ({format_bytes(info.st_size)}: over the "
                                f"{format_bytes(max_bytes)} limit per reply; it stays in "
                                "/outbox)")
        else:
            dest.mkdir(parents=True, exist_ok=True)
            _move(Path(entry.path), dest / entry.name)
            total += info.st_size
            result.names.append(entry.name)
    result.names.sort()
    return result


def _move(source: Path, target: Path) -> None:
    """Copy without following links (the agent controls the source), then remove it."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
    os.unlink(source)
