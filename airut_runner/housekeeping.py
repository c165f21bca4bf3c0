"""Housekeeping: what is removed by age, in a process of its own.

airut-housekeeping.service runs `airut-runner --housekeeping` hourly (its timer) and
whenever the runner is reloaded, off the runner's loop: idle conversations (their
workspace, session state and local replies, and their id range), unclaimed local
replies, airut's own repository images that no repository uses and no task is about to
use, the runner's stale failure counts and the spool's stale temporary files. Every
removal is logged. It reads only what is on disk, so it needs nothing from the runner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

from airut_core import commands, conversation
from airut_core.config import Config
from airut_core.paths import Spool
from airut_runner import images, uids
from airut_runner.mirror import Mirror
from airut_runner.podman_api import Podman

logger = logging.getLogger("airut.housekeeping")
DAY = 86400
FAILURES_MAX_AGE = 30 * DAY


def run(cfg: Config, podman: Podman | None = None) -> int:
    """Everything, each part on its own: one that fails does not stop the others.
    Returns the exit status (1 if any part failed)."""
    spool = Spool(cfg.paths.spool)
    state_dir = Path(cfg.paths.state)
    podman = podman or Podman()
    execution = cfg.execution
    parts = [
        ("local replies", lambda: clean_replies(spool, execution.reply_max_age_days)),
        ("conversations", lambda: clean_conversations(
            spool, state_dir, execution.conversation_max_age_days, in_use(spool),
            uids.Pool(state_dir, cfg.agent.host_uid_base, cfg.agent.uid_ranges))),
        ("images", lambda: prune_images(cfg, spool, state_dir, podman)),
        ("failure counts", lambda: clean_old_files(state_dir / "runner" / "failures",
                                                   FAILURES_MAX_AGE)),
        ("temporary files", lambda: clean_tmp(spool)),
        ("sandbox command results", lambda: clean_command_runs(spool, state_dir)),
    ]
    status = 0
    for what, part in parts:
        try:
            part()
        except Exception:
            logger.exception("housekeeping of %s failed", what)
            status = 1
    return status


def in_use(spool: Spool) -> set[str]:
    """Conversations with a task waiting or claimed."""
    used = set()
    for stage in (spool.incoming, spool.active):
        for name in stage.names():
            with contextlib.suppress(Exception):
                cid = stage.read(name).get("conversation_id")
                if isinstance(cid, str):
                    used.add(cid)
    return used


def clean_replies(spool: Spool, max_age_days: float) -> None:
    local = spool.outgoing("local")
    removed = local.clean(max_age_days * DAY)
    for name in removed:
        shutil.rmtree(local.path / f"{name}.files", ignore_errors=True)
    if removed:
        logger.info("removed %d unclaimed local replies older than %g days", len(removed),
                    max_age_days)


def clean_conversations(spool: Spool, state_dir: Path, max_age_days: float,
                        in_use: set[str], pool: uids.Pool) -> None:
    """Conversations idle (conversation.json untouched) for longer than max_age_days."""
    root = state_dir / "conversations"
    local = spool.outgoing("local")
    for cdir in sorted(root.iterdir()) if root.is_dir() else []:
        cid = cdir.name
        if cid.startswith(".") or cid in in_use:
            continue
        try:
            age = time.time() - (cdir / conversation.FILE).stat().st_mtime
        except FileNotFoundError:
            continue
        if age <= max_age_days * DAY:
            continue
        try:
            conv = conversation.load(state_dir, cid)
        except conversation.ConversationError as e:
            logger.warning("removing conversation %s with unreadable state: %s", cid, e)
            conv = None
        for reply in conv.replies if conv else []:
            local.remove(reply.task_id)
            shutil.rmtree(local.path / f"{reply.task_id}.files", ignore_errors=True)
        shutil.rmtree(cdir, ignore_errors=True)  # fd-based: never follows the agent's links
        pool.release(cid)
        repo = conv.repo if conv else None
        logger.info("removed conversation %s (repository %s), idle for %.1f days", cid,
                    repo or "?", age / DAY, extra={"conversation": cid, "repo": repo})
    live = {p.name.removeprefix(".new-") for p in root.iterdir()} if root.is_dir() else set()
    live |= {commands.uid_claim(name) for name in spool.commands.names()}
    for cid in pool.reconcile(live):
        logger.info("freed the id range of conversation %s, which no longer exists", cid)


def prune_images(cfg: Config, spool: Spool, state_dir: Path, podman: Podman) -> None:
    """airut's repository images (by label) not used: neither the current image of a
    configured repository's default branch nor one a claimed task has taken."""
    keep = {cfg.agent.image}
    for repo_id, repo in cfg.repos.items():
        mirror = Mirror(state_dir, repo_id, repo.repo_url)
        if (mirror.path / "HEAD").exists():
            keep.add(images.resolve(mirror, repo.container_path, cfg.agent.image).tag)
    with images.in_use(state_dir, exclusive=True):
        for name in spool.active.names():
            with contextlib.suppress(Exception):
                state = spool.active.read(name).get("state") or {}
                if isinstance(state.get("image"), str):
                    keep.add(state["image"])
        for name in spool.commands.names():  # a command's image, from its preparation on
            with contextlib.suppress(Exception):
                keep.add((commands.run_dir(state_dir, name) / "image").read_text())
        removed = podman.prune_images(keep)
    if removed:
        logger.info("pruned %d unused images: %s", len(removed), ", ".join(removed))


def clean_command_runs(spool: Spool, state_dir: Path,
                       max_age: float = commands.RUN_DIR_MAX_AGE) -> None:
    """Sandbox command directories nobody came back for (the asker removes its own)."""
    root = state_dir / "sandbox"
    pending = set(spool.commands.names())
    for run in sorted(root.iterdir()) if root.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            if run.name not in pending and time.time() - run.stat().st_mtime > max_age:
                shutil.rmtree(run, ignore_errors=True)
                logger.info("removed the output of sandbox command %s, never collected",
                            run.name)


def clean_old_files(directory: Path, max_age: float) -> None:
    now = time.time()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                    os.unlink(entry.path)


def clean_tmp(spool: Spool) -> None:
    for stage in (spool.incoming, spool.active, spool.finished, spool.builds, spool.control):
        stage.clean_tmp()
