"""A range of host ids per conversation, for its containers' user namespace.

Container root is an unprivileged host id, and every conversation gets ids of its own:
two agents are then two users to the kernel (per-user limits and accounting, file
ownership, signals), not one. `agent.host_uid_base` is the first id of the first
range; `agent.uid_ranges` ranges of USERNS_SIZE ids follow it. A conversation takes
the lowest free range when it is created and keeps it (conversation.json records it)
until housekeeping removes the conversation.

The claim is a file <state>/uids/<n> made with O_EXCL and holding the conversation id:
concurrent preparations never take the same range, and the claims survive restarts.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

USERNS_SIZE = 65536


class NoFreeRange(RuntimeError):
    pass


class Pool:
    def __init__(self, state_dir: Path, base: int, count: int):
        self.dir = Path(state_dir) / "uids"
        self.base = base
        self.count = count
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def uid_base(self, slot: int) -> int:
        return self.base + slot * USERNS_SIZE

    def allocate(self, conversation_id: str) -> int:
        taken = set(self._claims())
        for slot in range(self.count):
            if slot in taken:
                continue
            try:
                fd = os.open(self.dir / str(slot), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue  # another worker was quicker
            with os.fdopen(fd, "w") as f:
                f.write(conversation_id)
                f.flush()
                os.fsync(f.fileno())
            return self.uid_base(slot)
        raise NoFreeRange(f"all {self.count} id ranges for conversations are in use "
                          "(agent.uid_ranges); old conversations are removed by housekeeping "
                          "after execution.conversation_max_age_days")

    def find(self, owner: str) -> int | None:
        """The first id of the range `owner` holds, or None."""
        for slot, claimed in self._claims().items():
            if claimed == owner:
                return self.uid_base(slot)
        return None

    def release(self, conversation_id: str) -> None:
        for slot, owner in self._claims().items():
            if owner == conversation_id:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.dir / str(slot))

    def reconcile(self, live: set[str], min_age: float = 3600) -> list[str]:
        """Free the ranges of conversations that no longer exist (a crash between claim
        and creation, or removal by hand), claimed more than min_age seconds ago (a
        conversation being created right now is not in `live` yet). Returns the
        conversation ids freed."""
        freed = []
        for slot, owner in self._claims().items():
            path = self.dir / str(slot)
            with contextlib.suppress(FileNotFoundError):
                if owner not in live and time.time() - path.stat().st_mtime > min_age:
                    path.unlink()
                    freed.append(owner)
        return freed

    def _claims(self) -> dict[int, str]:
        claims = {}
        for entry in os.scandir(self.dir):
            if entry.name.isdigit():
                try:
                    claims[int(entry.name)] = Path(entry.path).read_text().strip()
                except FileNotFoundError:
                    continue
        return claims
