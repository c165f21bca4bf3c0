"""Conversation directories: created whole, then renamed into place.

<state>/conversations/<id>/
  conversation.json   model pinned at creation, session id, one summary per reply
  events.jsonl        the agent's stream-json, appended by each task unit
  tasks/              per task: the prompt (stdin) and the container's env file
  workspace/          clone of the repository's mirror      -> /workspace
  claude/             the agent's session state             -> /root/.claude
  inbox/ outbox/ storage/                                   -> /inbox /outbox /storage
A crash while cloning leaves only a .new-* directory, removed at the next start.
What the container sees is owned by the container's root (agent.host_uid_base).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from airut_core import conversation, paths
from airut_core.config import RepoConfig
from airut_core.conversation import Conversation
from airut_core.records import TaskRecord
from airut_runner.mirror import Mirror

SUBDIRS = ("tasks", "workspace", "claude", "inbox", "outbox", "storage")
CONTAINER_DIRS = ("workspace", "claude", "inbox", "outbox", "storage")


def open_or_create(state_dir: Path, task: TaskRecord, repo: RepoConfig, mirror: Mirror,
                   owner: int) -> Conversation:
    """The task's conversation, or a new one (a fresh clone) under the id the channel
    chose for it (email tells the sender the id before the task runs), else a new id."""
    if task.conversation_id:
        existing = conversation.load(state_dir, task.conversation_id)
        if existing:
            return existing
    cid = task.conversation_id
    if not cid or paths.conversation_dir(state_dir, cid).exists():
        cid = conversation.new_id(state_dir)
    final = paths.conversation_dir(state_dir, cid)
    tmp = final.parent / f".new-{cid}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for sub in SUBDIRS:
            if sub != "workspace":
                (tmp / sub).mkdir(mode=0o700 if sub == "tasks" else 0o755)
        mirror.clone_workspace(tmp / "workspace")
        for sub in CONTAINER_DIRS:
            chown_tree(tmp / sub, owner)
        conv = Conversation(conversation_id=cid, repo=task.repo, model=task.model or repo.model,
                            effort=repo.effort)
        conversation.save_in(tmp, conv)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return conv


def chown_tree(root: Path, uid: int) -> None:
    """Give a tree to the container's root (uid = gid), links included, never followed."""
    os.lchown(root, uid, uid)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(directory, name), uid, uid)


def copy_attachments(source: str | None, inbox: Path, owner: int) -> list[str]:
    """Copy regular files from the task's attachments directory into the inbox."""
    if not source:
        return []
    names = []
    for item in sorted(Path(source).iterdir()):
        if item.is_file() and not item.is_symlink() and not item.name.startswith("."):
            shutil.copyfile(item, inbox / item.name)
            os.lchown(inbox / item.name, owner, owner)
            names.append(item.name)
    return names


def remove_stale(state_dir: Path) -> None:
    """Half-created conversations from a crash."""
    for tmp in (state_dir / "conversations").glob(".new-*"):
        shutil.rmtree(tmp, ignore_errors=True)
