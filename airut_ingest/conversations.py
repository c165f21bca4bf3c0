"""Which conversations a repository's channel may continue (email and Slack alike).

A conversation belongs to one repository (conversation.json says which). A message
that names another repository's conversation (a mail by In-Reply-To, References or
an [ID:...] tag; a Slack thread by a map entry gone stale) starts a new conversation
instead, and the daemon logs it: being allowed to write to repository B's mailbox or
app gives no way into repository A's workspace, session or history.

The channel chooses the id of a new conversation at intake, but the runner
writes conversation.json only when the task starts. The id is reserved here
(a file per id, in the channel's own state directory) from intake on, so a reply
to the acknowledgment that arrives while the first task still waits continues
the conversation instead of starting another.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from airut_core import conversation, paths
from airut_core.spool import fsync_dir

logger = logging.getLogger("airut.ingest")
RESERVATION_MAX_AGE = 30 * 86400  # a conversation.json exists long before this


def home(state_dir: Path | str, kind: str, repo_id: str) -> Path:
    """A channel's own state for one repository (markers, reservations): its unit's
    StateDirectory, /var/lib/airut/<kind>/<repo>."""
    return Path(state_dir) / kind / repo_id


class Conversations:
    def __init__(self, state_dir: Path | str, repo_id: str, reserved: Path):
        self.state_dir = Path(state_dir)
        self.repo_id = repo_id
        self.reserved = reserved

    def owner(self, conversation_id: str) -> str | None:
        """The repository of a conversation: this one if reserved here, else what its
        conversation.json says; None when the host does not know the conversation."""
        if not paths.CONVERSATION_ID.match(conversation_id):
            return None
        if (self.reserved / conversation_id).exists():
            return self.repo_id
        try:
            conv = conversation.load(self.state_dir, conversation_id)
        except FileNotFoundError:
            return None
        except Exception as e:  # unreadable to this user, or a conversation.json gone bad
            logger.error("cannot read conversation %s (%s): a message naming it starts a new "
                         "conversation", conversation_id, e)
            return None
        return conv.repo if conv else None

    def known(self, conversation_id: str) -> bool:
        """May this repository's channel continue the conversation?"""
        return self.owner(conversation_id) == self.repo_id

    def reserve_new(self) -> str:
        """A fresh id, reserved for this repository before any task of it exists."""
        self.reserved.mkdir(parents=True, exist_ok=True)
        while True:
            cid = conversation.new_id(self.state_dir)
            try:
                fd = os.open(self.reserved / cid, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            except FileExistsError:
                continue
            os.close(fd)
            fsync_dir(self.reserved)
            return cid

    def clean(self, max_age: float = RESERVATION_MAX_AGE) -> None:
        now = time.time()
        for entry in self.reserved.glob("*"):
            try:
                if now - entry.stat().st_mtime > max_age:
                    entry.unlink()
            except FileNotFoundError:
                pass
