"""Conversation directories: created whole, then renamed into place.

<state>/conversations/<id>/          root, 0750, group airut (daemons that read it)
  conversation.json   model pinned at creation, session id, uid range, reply summaries
  events.jsonl        the agent's stream-json, appended by each task unit
  network.log         the proxy's decisions for this conversation's tasks
  tasks/              per task: the prompt (stdin) and the container's env file (0700)
  workspace/          clone of the repository's mirror      -> /workspace
  claude/             the agent's session state             -> /root/.claude
  inbox/ outbox/ storage/                                   -> /inbox /outbox /storage
A crash while cloning leaves only a .new-* directory, removed at the next start.

What the container sees is owned by the conversation's own container root: a range of
USERNS_SIZE host ids given to this conversation alone (uids.py), so two conversations'
agents are different users to the kernel. Those directories are the agent's: root
never follows a link in them and never writes into them except by creating new files
through a directory descriptor (copy_attachments).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from airut_core import conversation, paths
from airut_core.config import RepoConfig
from airut_core.conversation import Conversation
from airut_core.records import TaskRecord
from airut_core.spool import DIR_FLAGS
from airut_runner import uids
from airut_runner.mirror import Mirror

SUBDIRS = ("tasks", "workspace", "claude", "inbox", "outbox", "storage")
CONTAINER_DIRS = ("workspace", "claude", "inbox", "outbox", "storage")
NAME_MAX_BYTES = 200  # of a file name we create; filesystems stop at 255
ATTACHMENTS_MAX_FILES = 100  # per task: a channel's own caps are lower
ATTACHMENTS_MAX_BYTES = 256 << 20


class WrongRepository(Exception):
    """The task names a conversation of another repository."""


def open_or_create(state_dir: Path, task: TaskRecord, repo: RepoConfig, mirror: Mirror,
                   uid_pool: uids.Pool, log) -> Conversation:
    """The task's conversation, or a new one (a fresh clone) under the id the channel
    chose for it (email tells the sender the id before the task runs), else a new id.

    A conversation belongs to its repository: a task of another repository naming it
    (a sender allowed on one repository replying into another's thread) starts a new
    conversation instead of resuming that one's workspace and session.
    """
    cid = task.conversation_id
    if cid:
        existing = conversation.load(state_dir, cid)
        if existing and existing.repo == task.repo:
            return ensure_uid_range(state_dir, existing, uid_pool)
        if existing:
            log.warning("conversation %s belongs to repository %s, not %s: starting a new "
                        "conversation", cid, existing.repo, task.repo)
            cid = None
    if not cid or paths.conversation_dir(state_dir, cid).exists():
        cid = conversation.new_id(state_dir)
    final = paths.conversation_dir(state_dir, cid)
    tmp = final.parent / f".new-{cid}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o750, parents=True)
    if paths.daemon_gid() is not None:
        os.chown(tmp, 0, paths.daemon_gid())
    uid_base = uid_pool.allocate(cid)
    try:
        for sub in SUBDIRS:
            if sub != "workspace":
                (tmp / sub).mkdir(mode=0o700)
        mirror.clone_workspace(tmp / "workspace")
        for sub in CONTAINER_DIRS:
            # The agent's, alone: airut's daemons (group airut) read the
            # conversation's state and logs beside them, not its files.
            os.chmod(tmp / sub, 0o700)
            chown_tree(tmp / sub, uid_base)
        conv = Conversation(conversation_id=cid, repo=task.repo, model=task.model or repo.model,
                            effort=repo.effort, uid_base=uid_base)
        conversation.save_in(tmp, conv)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        uid_pool.release(cid)
        raise
    return conv


def ensure_uid_range(state_dir: Path, conv: Conversation, uid_pool: uids.Pool) -> Conversation:
    """Conversations from before per-conversation ranges get one now (no agent runs in
    them at this point, so walking their tree is safe)."""
    if conv.uid_base is not None:
        return conv
    conv.uid_base = uid_pool.allocate(conv.conversation_id)
    cdir = paths.conversation_dir(state_dir, conv.conversation_id)
    for sub in CONTAINER_DIRS:
        chown_tree(cdir / sub, conv.uid_base)
    conversation.save(state_dir, conv)
    return conv


def chown_tree(root: Path, uid: int) -> None:
    """Give a tree to the container's root (uid = gid), links included, never followed."""
    os.lchown(root, uid, uid)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(directory, name), uid, uid)


def copy_attachments(sources: list[Path], inbox: Path, owner: int) -> list[str]:
    """Copy the regular files of a task's attachments directories into the inbox.

    The inbox is the agent's: it may hold links to anywhere or files of any name. So
    every file is created anew through a descriptor of the inbox (O_EXCL, O_NOFOLLOW),
    never opened by path, and a name already taken gets a new one. The sources are the
    channel's: at most ATTACHMENTS_MAX_FILES files and ATTACHMENTS_MAX_BYTES in all
    (what the file said its size was when opened), sparse files refused. Returns the
    names used, which the prompt tells the agent.
    """
    names: list[str] = []
    budget = [ATTACHMENTS_MAX_BYTES]
    dst = os.open(inbox, DIR_FLAGS)
    try:
        for source in sources:
            src = os.open(source, DIR_FLAGS)
            try:
                for name in sorted(os.listdir(src))[:ATTACHMENTS_MAX_FILES - len(names)]:
                    if not name.startswith("."):
                        used = _copy_one(src, name, dst, owner, budget)
                        if used:
                            names.append(used)
            finally:
                os.close(src)
    finally:
        os.close(dst)
    return names


def _copy_one(src: int, name: str, dst: int, owner: int, budget: list[int]) -> str | None:
    try:
        fd_in = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                        dir_fd=src)
    except OSError:
        return None  # a link, or gone
    with os.fdopen(fd_in, "rb") as f_in:
        info = os.fstat(fd_in)
        if (not stat.S_ISREG(info.st_mode) or info.st_size > budget[0]
                or info.st_blocks * 512 < info.st_size - 4096):  # sparse: not a real file
            return None
        budget[0] -= info.st_size
        used, fd_out = create_exclusive(dst, safe_name(name))
        with os.fdopen(fd_out, "wb") as f_out:
            left = info.st_size
            while left > 0 and (chunk := f_in.read(min(left, 1 << 20))):
                f_out.write(chunk)
                left -= len(chunk)
            os.fchown(fd_out, owner, owner)
            f_out.flush()
            os.fsync(fd_out)
    return used


def create_exclusive(dir_fd: int, name: str, mode: int = 0o644) -> tuple[str, int]:
    """A new file in the directory: `name`, else name-1, name-2... (never an existing
    entry, never through a link). Returns the name and a writable descriptor."""
    stem, dot, ext = name.rpartition(".")
    stem, ext = (stem, f".{ext}") if dot and stem else (name, "")
    for n in range(1000):
        candidate = name if n == 0 else f"{stem}-{n}{ext}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue
        return candidate, fd
    raise FileExistsError(f"no free name like {name!r}")


def safe_name(raw: str) -> str:
    """A plain, printable, valid UTF-8 file name of at most NAME_MAX_BYTES bytes.

    Names from the agent's outbox may be any bytes (Python shows undecodable ones as
    lone surrogates, which cannot be written into a JSON record or a mail)."""
    data = os.fsencode(raw) if isinstance(raw, str) else raw
    text = data.decode("utf-8", errors="replace").replace("/", "_")
    text = "".join(c if c.isprintable() else "_" for c in text).strip().lstrip(".")
    encoded = text.encode()[:NAME_MAX_BYTES]
    return encoded.decode("utf-8", errors="ignore") or "file"


def remove_stale(state_dir: Path) -> None:
    """Half-created conversations from a crash."""
    for tmp in (state_dir / "conversations").glob(".new-*"):
        shutil.rmtree(tmp, ignore_errors=True)
