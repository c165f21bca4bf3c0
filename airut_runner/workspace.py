"""Conversation directories: created whole, then renamed into place.

<state>/conversations/<id>/
  conversation.json   model pinned at creation, session id, one summary per reply
  events.jsonl        the agent's stream-json, appended by each task unit
  tasks/              per task: the prompt (stdin) and the container's env file
  workspace/          git clone of the repository           -> /workspace
  claude/             the agent's session state             -> /root/.claude
  inbox/ outbox/ storage/                                   -> /inbox /outbox /storage
A crash while cloning leaves only a .new-* directory, removed at the next start.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from airut_core import conversation, paths
from airut_core.config import RepoConfig
from airut_core.conversation import Conversation
from airut_core.records import TaskRecord

SUBDIRS = ("tasks", "workspace", "claude", "inbox", "outbox", "storage")
CLONE_TIMEOUT = 600


class WorkspaceError(RuntimeError):
    pass


def open_or_create(state_dir: Path, task: TaskRecord, repo: RepoConfig) -> Conversation:
    """The task's conversation; a new one (fresh clone) when it has none or an unknown id."""
    if task.conversation_id:
        existing = conversation.load(state_dir, task.conversation_id)
        if existing:
            return existing
    cid = conversation.new_id(state_dir)
    final = paths.conversation_dir(state_dir, cid)
    tmp = final.parent / f".new-{cid}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for sub in SUBDIRS:
            (tmp / sub).mkdir(mode=0o700 if sub == "tasks" else 0o755)
        (tmp / "workspace").rmdir()
        clone(repo.repo_url, tmp / "workspace")
        conv = Conversation(conversation_id=cid, repo=task.repo, model=task.model or repo.model,
                            effort=repo.effort)
        conversation.save_in(tmp, conv)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return conv


def clone(url: str, target: Path) -> None:
    try:
        subprocess.run(["git", "clone", "--quiet", "--", url, str(target)], check=True,
                       capture_output=True, text=True, timeout=CLONE_TIMEOUT)
    except subprocess.CalledProcessError as e:
        raise WorkspaceError(f"cannot clone {url}: {e.stderr.strip() or e}") from e
    except subprocess.TimeoutExpired as e:
        raise WorkspaceError(f"cloning {url} took longer than {CLONE_TIMEOUT} s") from e


def copy_attachments(source: str | None, inbox: Path) -> list[str]:
    """Copy regular files from the task's attachments directory into the inbox."""
    if not source:
        return []
    names = []
    for item in sorted(Path(source).iterdir()):
        if item.is_file() and not item.is_symlink() and not item.name.startswith("."):
            shutil.copy2(item, inbox / item.name)
            names.append(item.name)
    return names


def remove_stale(state_dir: Path) -> None:
    """Half-created conversations from a crash."""
    for tmp in (state_dir / "conversations").glob(".new-*"):
        shutil.rmtree(tmp, ignore_errors=True)
