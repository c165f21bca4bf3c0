"""One bad item never stops a loop.

Every loop of airut (the runner's passes, the email channel's receive and send loops,
housekeeping) hands each item it works on (a record, a message, a reply, a control
request) to `Guard.run(key, work, quarantine)`. A failure of that one item is logged
with its key and counted; the item waits out a back-off (doubling from `delay`, at most
`max_delay`) while the loop goes on with the others; on the `limit`-th failure
`quarantine(failures)` is called, which moves the item aside with its reasons (into
failed/, a quarantine folder), and the guard forgets it.

With a `store` directory the count survives the process: an attempt is written down
*before* the work starts and cleared after it, so an item that kills its process (a
stall ended by the watchdog, an out-of-memory kill, a crash in C code) is counted as a
failure too, and cannot make a daemon restart forever on the same item. Such an
interruption is weaker evidence than a failure seen (the process may have been killed
from outside while working on an innocent item), so interruptions are set aside only
at `crash_limit`, which a daemon that keeps its risky work in a child process (the
email channel's examiner) sets higher than `limit`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from airut_core.spool import utc_now, write_atomic

T = TypeVar("T")
INTERRUPTED = "interrupted: the process ended while working on it"
REASON_MAX = 2000  # characters of one reason kept (an exception text can be huge)


class Permanent(Exception):
    """Raised by work that retrying cannot help: the item is quarantined at once.
    An exception's `reply` attribute (a str), if any, travels with its failure entry."""


@dataclass
class _Entry:
    failures: list[dict] = field(default_factory=list)
    next_try: float = 0.0  # time.monotonic() before which the item is not tried


class Guard:
    def __init__(self, what: str, logger: logging.Logger | logging.LoggerAdapter,
                 limit: int = 3, delay: float = 1.0, max_delay: float = 300.0,
                 store: Path | None = None, count_crashes: bool = True,
                 crash_limit: int | None = None):
        self.what = what
        self.crash_limit = limit if crash_limit is None else crash_limit
        self.count_crashes = count_crashes
        self.logger = logger
        self.limit = limit
        self.delay = delay
        self.max_delay = max_delay
        self.store = store
        self._items: dict[str, _Entry] = {}
        self.failed_total = 0  # failures seen since start, for status lines
        self.quarantined_total = 0
        if store is not None:
            store.mkdir(parents=True, exist_ok=True)

    # -- the one entry point -----------------------------------------------------------

    def run(self, key: str, work: Callable[[], object],
            quarantine: Callable[[list[dict]], None] | None = None,
            log: logging.Logger | logging.LoggerAdapter | None = None) -> bool:
        """Do `work` for one item unless it is backing off. True when it succeeded."""
        if not self.begin(key, quarantine, log):
            return False
        try:
            work()
        except Exception as e:  # the point: nothing one item does escapes
            self.fail(key, e, quarantine, log)
            return False
        self.forget(key)
        return True

    def value(self, key: str, work: Callable[[], T],
              quarantine: Callable[[list[dict]], None] | None = None,
              log: logging.Logger | logging.LoggerAdapter | None = None) -> T | None:
        """Like run(), for work that returns something: its value, or None if it failed
        or is backing off."""
        result: list[T] = []
        self.run(key, lambda: result.append(work()), quarantine, log)
        return result[0] if result else None

    # -- the same in steps, for work that finishes elsewhere (a worker thread) ------------

    def begin(self, key: str, quarantine: Callable[[list[dict]], None] | None = None,
              log: logging.Logger | logging.LoggerAdapter | None = None) -> bool:
        """May the item be tried now? If so, the attempt is written down (with a store)."""
        entry = self._entry(key)
        if entry.next_try > time.monotonic():
            return False
        if self._exhausted(entry) and quarantine is not None:
            # Earlier processes died working on it (counted in the store): not again.
            self._set_aside(key, entry, quarantine, log or self.logger)
            return False
        self._remember_attempt(key, entry)
        return True

    def fail(self, key: str, error: Exception,
             quarantine: Callable[[list[dict]], None] | None = None,
             log: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        """One failed attempt: count it, then back off or set the item aside."""
        self._failed(key, self._entry(key), error, quarantine, log or self.logger)

    # -- queries ----------------------------------------------------------------------

    def waiting(self, key: str) -> bool:
        """Is the item backing off after a failure?"""
        entry = self._items.get(key)
        return entry is not None and entry.next_try > time.monotonic()

    def failures(self, key: str) -> list[dict]:
        return list(self._entry(key).failures)

    def next_due(self) -> float | None:
        """Seconds until the soonest item backing off may be tried again."""
        waits = [e.next_try - time.monotonic() for e in self._items.values() if e.failures]
        return max(0.0, min(waits)) if waits else None

    def forget(self, key: str) -> None:
        self._items.pop(key, None)
        if self.store is not None:
            with contextlib.suppress(FileNotFoundError):
                self._file(key).unlink()

    def keys(self) -> list[str]:
        return list(self._items)

    # -- internals ----------------------------------------------------------------------

    def _failed(self, key: str, entry: _Entry, error: Exception,
                quarantine: Callable[[list[dict]], None] | None,
                log: logging.Logger | logging.LoggerAdapter) -> None:
        failure = {"time": utc_now(), "reason": describe(error)}
        if isinstance(getattr(error, "reply", None), str):
            failure["reply"] = error.reply  # what to tell the sender, when it comes to that
        if entry.failures and entry.failures[-1]["reason"] == INTERRUPTED:
            entry.failures[-1] = failure  # the attempt written down beforehand
        else:
            entry.failures.append(failure)
        reason = failure["reason"]
        self.failed_total += 1
        count = sum(1 for f in entry.failures if f["reason"] != INTERRUPTED)
        permanent = isinstance(error, Permanent)
        if (permanent or self._exhausted(entry)) and quarantine is not None:
            log.error("%s %s failed (%s): %s; setting it aside", self.what, key,
                      "cannot be retried" if permanent else f"attempt {count} of {self.limit}",
                      reason, exc_info=not permanent)
            if self._set_aside(key, entry, quarantine, log):
                return
        else:
            log.error("%s %s failed (attempt %d of %d): %s", self.what, key, count, self.limit,
                      reason, exc_info=True)
        wait = min(self.delay * 2 ** (count - 1), self.max_delay)
        entry.next_try = time.monotonic() + wait
        self._save(key, entry)

    def _set_aside(self, key: str, entry: _Entry, quarantine: Callable[[list[dict]], None],
                   log: logging.Logger | logging.LoggerAdapter) -> bool:
        try:
            quarantine(list(entry.failures))
        except Exception:
            log.exception("%s %s: cannot set it aside either; retrying later", self.what, key)
            entry.next_try = time.monotonic() + self.max_delay
            return False
        self.quarantined_total += 1
        self.forget(key)
        return True

    def _exhausted(self, entry: _Entry) -> bool:
        crashes = sum(1 for f in entry.failures if f["reason"] == INTERRUPTED)
        return len(entry.failures) - crashes >= self.limit or crashes >= self.crash_limit

    def _entry(self, key: str) -> _Entry:
        entry = self._items.get(key)
        if entry is None:
            entry = self._items[key] = _Entry(failures=self._load(key))
        return entry

    def _remember_attempt(self, key: str, entry: _Entry) -> None:
        """Write the attempt down first: if the process dies in it, it counts."""
        if self.store is None or not self.count_crashes:
            return
        entry.failures.append({"time": utc_now(), "reason": INTERRUPTED})
        self._save(key, entry)

    def _file(self, key: str) -> Path:
        assert self.store is not None
        return self.store / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def _load(self, key: str) -> list[dict]:
        if self.store is None:
            return []
        try:
            data = json.loads(self._file(key).read_bytes())
            failures = data["failures"]
            if not isinstance(failures, list):
                raise TypeError("failures is not a list")
            return [f for f in failures if isinstance(f, dict) and isinstance(f.get("reason"),
                                                                               str)]
        except FileNotFoundError:
            return []
        except (ValueError, TypeError, KeyError) as e:
            self.logger.warning("%s %s: unreadable failure count (%s); starting again",
                                self.what, key, e)
            return []

    def _save(self, key: str, entry: _Entry) -> None:
        if self.store is None:
            return
        data = json.dumps({"key": key, "failures": entry.failures}).encode()
        try:
            write_atomic(self._file(key), data, mode=0o600)
        except OSError as e:  # a full disk must not turn one failure into a crash
            self.logger.error("%s %s: cannot record the failure count: %s", self.what, key, e)


def describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text if len(text) <= REASON_MAX else text[:REASON_MAX] + "…"
