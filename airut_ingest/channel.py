"""What every channel daemon shares (airut-email@, airut-slack@): its own stages of the
spool and its state directory, the sending loop over outgoing/ and deferred/, retries
with back-off and quarantine, the janitor, and the main loop under systemd.

A channel subclass says how a reply record becomes something to send (`take_reply`,
outgoing/ -> deferred/) and how one attempt at sending goes (`attempt`); the loop here
hands each item to a guard, so one bad reply never stops the others.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import sdnotify

from airut_core import config as config_mod
from airut_core import log
from airut_core.config import Config, ConfigError
from airut_core.guard import Guard
from airut_core.paths import Spool
from airut_core.spool import Doorbell, RecordError, Stage, utc_now
from airut_ingest import conversations

MARKER_MAX_AGE = 30 * 86400  # markers, reservations, guard counts, staged records
GUARD_LIMIT = 3  # failures of one item before it is set aside
GUARD_DELAY = 2.0  # first wait after a failure; doubles
RETRY_MAX = 3600.0  # the longest wait between two attempts at one delivery
WATCHDOG_STALE = 120.0  # a loop silent this long stops the watchdog's feeding


class Channel:
    KIND: ClassVar[str] = ""  # email, slack: the unit's and the stages' prefix
    CHUNK: ClassVar[float] = 10.0  # seconds per wait: stop and the watchdog stay responsive
    ITEMS: ClassVar[str] = "item(s)"  # what the status line counts as waiting to be sent
    # The channel's marker directories in its state directory, kept MARKER_MAX_AGE since
    # their last use (an entry in use is touched: a Slack thread's, say).
    MARKER_DIRS: ClassVar[tuple[str, ...]] = ()
    receive_guard: Guard  # each channel's own: how it receives differs

    def __init__(self, cfg: Config, repo_id: str, logger: logging.Logger):
        self.cfg = cfg
        self.repo_id = repo_id
        self.logger = logger
        self.channel = f"{self.KIND}-{repo_id}"
        # Only the stages this daemon writes: it may not create the others.
        self.spool = Spool(cfg.paths.spool)
        self.spool.incoming.ensure()
        self.outgoing = self.spool.outgoing(self.channel).ensure()
        self.deferred = Stage(self.spool.root / "deferred" / self.channel).ensure()
        self.failed = self.spool.failed(self.channel).ensure()
        self.staging = self.deferred.path / "intake"  # task records about to be published
        self.staging.mkdir(exist_ok=True)
        self.attachments = self.spool.root / "attachments"
        self.home = conversations.home(cfg.paths.state, self.KIND, repo_id)
        self.home.mkdir(parents=True, exist_ok=True)
        self.conversations = conversations.Conversations(cfg.paths.state, repo_id,
                                                         self.home / "reserved")
        self.send_guard = Guard(f"outgoing {self.KIND}", logger, limit=GUARD_LIMIT,
                                delay=GUARD_DELAY, store=self.home / "guard-send")
        self.stopping = threading.Event()
        self.status = "starting"
        self.heartbeat = {"send": time.monotonic()}

    # -- what a channel says ---------------------------------------------------------

    def take_reply(self, name: str) -> None:
        """outgoing/NAME -> deferred/ (what it takes to send it), then the record goes."""
        raise NotImplementedError

    def attempt(self, name: str, pending: dict) -> None:
        """One try at a delivery in deferred/; a failure is counted in it (`defer`)."""
        raise NotImplementedError

    def loops(self) -> list[Callable[[], None]]:
        """The daemon's threads, each one feeding its own heartbeat."""
        return [self.send_forever]

    def janitor(self) -> None:
        """Old markers, failure counts and staged records go; so do old reservations."""
        self.clean([*(self.home / d for d in self.MARKER_DIRS), self.receive_guard.store,
                    self.send_guard.store, self.staging])

    def describe(self) -> str:
        """The unit's STATUS line."""
        waiting = len(self.outgoing.names()) + len(self.deferred.names())
        aside = self.receive_guard.quarantined_total + self.send_guard.quarantined_total
        return (f"{self.status}; {waiting} {self.ITEMS} to send"
                + (f"; {aside} set aside since start" if aside else ""))

    # -- sending ---------------------------------------------------------------------

    def send_forever(self) -> None:
        bell = Doorbell([self.outgoing.path, self.deferred.path])
        try:
            while not self.stopping.is_set():
                self.heartbeat["send"] = time.monotonic()
                try:
                    wait = self.send_waiting()
                except Exception:  # listing a directory failed, say: not one item's fault
                    self.logger.exception("sending failed; trying again shortly")
                    wait = 5.0
                bell.wait(min(wait, self.CHUNK))
        finally:
            bell.close()

    def send_waiting(self) -> float:
        """Send what is due; returns seconds until the next attempt."""
        forget_missing(self.send_guard, {*(f"outgoing/{n}" for n in self.outgoing.names()),
                                         *(f"deferred/{n}" for n in self.deferred.names())})
        for name in self.outgoing.names():
            self.heartbeat["send"] = time.monotonic()
            self.send_guard.run(f"outgoing/{name}", lambda n=name: self.take_reply(n),
                                lambda failures, n=name: self.set_aside(self.outgoing, n,
                                                                        failures))
        next_due = self.CHUNK
        for name in self.deferred.names():
            self.heartbeat["send"] = time.monotonic()
            try:
                pending = self.deferred.read(name)
            except FileNotFoundError:
                continue
            except RecordError as e:
                self.set_aside(self.deferred, name, [{"time": utc_now(), "reason": str(e)}])
                continue
            due = _number(pending.get("next_attempt")) - time.time()
            if due > 0:
                next_due = min(next_due, due)
                continue
            self.send_guard.run(f"deferred/{name}",
                                lambda n=name, p=pending: self.attempt(n, p),
                                lambda failures, n=name: self.set_aside(self.deferred, n,
                                                                        failures))
        guard_due = self.send_guard.next_due()
        return next_due if guard_due is None else min(next_due, guard_due + 0.1)

    def defer(self, name: str, pending: dict, reason: str, limit: int, delay: float,
              what: str, verb: str = "deliver", at_least: float = 0.0) -> None:
        """A failed attempt at deferred/NAME (`what` it is, for the log): counted in it;
        tried again after a back-off (doubling from delay, at least at_least: a 429's
        Retry-After), or after `limit` attempts moved to failed/ with every reason (its
        files too)."""
        pending["attempts"] = pending.get("attempts", 0) + 1
        pending.setdefault("failures", []).append({"time": utc_now(), "reason": reason})
        if pending["attempts"] >= limit:
            self.logger.error("giving up on %s after %d attempts: %s; quarantined in %s",
                              what, pending["attempts"], reason, self.failed.path)
            self.deferred.put(name, pending)
            self._move_files(self.deferred, name)
            self.deferred.move_to(name, self.failed)
            return
        wait = max(min(delay * 2 ** (pending["attempts"] - 1), RETRY_MAX), at_least)
        pending["next_attempt"] = time.time() + wait
        self.deferred.put(name, pending)
        self.logger.warning("cannot %s %s (%s); retrying in %.0f s", verb, what, reason, wait)

    def set_aside(self, stage: Stage, name: str, failures: list[dict]) -> None:
        """A record that cannot be sent: into failed/ with its reasons, files too."""
        try:
            record = stage.read(name)
        except FileNotFoundError:
            return
        except RecordError as e:
            raw = stage.file(name).read_bytes()[:100_000]
            record = {"unreadable": str(e), "raw": raw.decode("utf-8", "replace")}
        self.failed.put(name, {**record, "failures": [*record.get("failures", []),
                                                      *failures]})
        stage.remove(name)
        self._move_files(stage, name)
        self.logger.error("quarantined %s/%s in %s: %s", stage.path.name, name,
                          self.failed.path, "; ".join(f.get("reason", "") for f in failures))

    def _move_files(self, stage: Stage, name: str) -> None:
        files = stage.path / f"{name}.files"
        if files.exists():
            try:
                files.rename(self.failed.path / f"{name}.files")
            except OSError as e:
                self.logger.warning("cannot move %s aside: %s", files, e)

    def remove_tree(self, path: Path) -> None:
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.logger.warning("cannot remove %s: %s", path, e)

    # -- upkeep ----------------------------------------------------------------------

    def clean(self, directories: list[Path]) -> None:
        """Entries older than MARKER_MAX_AGE go, and old conversation reservations."""
        now = time.time()
        for directory in directories:
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat().st_mtime > MARKER_MAX_AGE:
                        entry.unlink()
        self.conversations.clean()

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=t, daemon=True, name=t.__name__)
                   for t in self.loops()]
        for t in threads:
            t.start()
        return threads


def forget_missing(guard: Guard, present: set) -> None:
    """Items gone from their queue (sent, or deleted by someone else) are not waited for."""
    for key in set(guard.keys()) - present:
        guard.forget(key)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def serve(kind: str, argv: list[str] | None, make: Callable[[Config, str], Channel],
          unseal: Callable[[str], config_mod.Unseal], description: str,
          logger: logging.Logger) -> None:
    """The daemon's process: its configuration (its own secrets only), its loops, and
    systemd told it is ready, what it is doing, and (while every loop is alive) that it
    is not stuck. A configuration error exits 78 (the unit does not restart on it)."""
    parser = argparse.ArgumentParser(prog=f"airut-{kind}", description=description)
    parser.add_argument("repo", help="the repository id (the unit's instance name)")
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    log.setup(f"airut-{kind}@{args.repo}")
    notifier = sdnotify.SystemdNotifier()
    try:
        channel = make(config_mod.load(args.config, unseal(args.repo)), args.repo)
    except ConfigError as e:
        logger.error("%s", e)
        notifier.notify(f"STATUS=configuration error: {e}")
        sys.exit(78)
    channel.start()

    def on_signal(signum: int, frame: object) -> None:
        channel.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    notifier.notify(f"READY=1\nSTATUS={channel.describe()}")
    last_janitor = 0.0
    while not channel.stopping.wait(5.0):
        stale = [k for k, t in channel.heartbeat.items()
                 if time.monotonic() - t > WATCHDOG_STALE]
        if not stale:  # every loop alive: feed the watchdog
            notifier.notify(f"WATCHDOG=1\nSTATUS={channel.describe()}")
        if time.monotonic() - last_janitor > 3600:
            channel.janitor()
            last_janitor = time.monotonic()
    notifier.notify("STOPPING=1")
