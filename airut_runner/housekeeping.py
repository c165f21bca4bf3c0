"""Housekeeping: what the runner removes by age, hourly and on reload.

Idle conversations (workspace, session state, their local replies), unclaimed
local replies, and repository images no repository uses any more. Every removal
is logged.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from airut_core import conversation
from airut_core.paths import Spool
from airut_runner.podman_api import Podman

logger = logging.getLogger("airut.runner")
DAY = 86400


def clean_replies(spool: Spool, max_age_days: float) -> None:
    local = spool.outgoing("local")
    removed = local.clean(max_age_days * DAY)
    for name in removed:
        shutil.rmtree(local.path / f"{name}.files", ignore_errors=True)
    if removed:
        logger.info("removed %d unclaimed local replies older than %g days", len(removed),
                    max_age_days)


def clean_conversations(spool: Spool, state_dir: Path, max_age_days: float,
                        in_use: set[str]) -> None:
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
        conv = conversation.load(state_dir, cid)
        for reply in conv.replies if conv else []:
            local.remove(reply.task_id)
            shutil.rmtree(local.path / f"{reply.task_id}.files", ignore_errors=True)
        shutil.rmtree(cdir, ignore_errors=True)
        repo = conv.repo if conv else None
        logger.info("removed conversation %s (repository %s), idle for %.1f days", cid,
                    repo or "?", age / DAY, extra={"conversation": cid, "repo": repo})


def prune_images(podman: Podman, keep: set[str]) -> list[str]:
    removed = podman.prune_images(keep)
    if removed:
        logger.info("pruned %d unused images: %s", len(removed), ", ".join(removed))
    return removed
