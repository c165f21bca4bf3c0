"""File names and files that come from others: a sender's attachments, an agent's
reply files. Shared by the channels."""

from __future__ import annotations

import os
import re
import stat
import unicodedata

LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # undecodable bytes, as Python keeps them
MAX_NAME_BYTES = 200  # of a file's name in UTF-8 (file systems allow 255)


def safe_name(raw: str, taken: set[str]) -> str:
    """A plain file name: no directories, no hidden files, no control characters,
    valid UTF-8, at most MAX_NAME_BYTES bytes (the extension is kept)."""
    raw = LONE_SURROGATE.sub("\ufffd", raw[:4096])
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").split("/")[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '<>:"|?*')
    name = name.strip().lstrip(".").strip() or "attachment"
    stem, dot, ext = name.rpartition(".")
    stem, ext = (stem, f".{ext}") if dot and stem and len(ext) <= 16 else (name, "")
    name = _fit(stem, ext, "")
    n = 1
    while name in taken:
        name = _fit(stem, ext, f"-{n}")
        n += 1
    return name


def _fit(stem: str, ext: str, suffix: str) -> str:
    """stem + suffix + ext, the stem cut (at a character boundary) to fit the bytes."""
    room = MAX_NAME_BYTES - len(f"{suffix}{ext}".encode())
    cut = stem.encode()[:max(room, 1)].decode("utf-8", "ignore") or "attachment"
    return f"{cut}{suffix}{ext}"


def read_plain_file(name: str, dir_fd: int) -> bytes:
    """A regular file directly in dir_fd: no path, no link."""
    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        raise ValueError("not a plain file name")
    fd = os.open(os.fsencode(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file")
        return f.read()
