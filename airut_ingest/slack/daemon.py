"""airut-slack@<repo>: a repository's Slack app in, its replies out.

Receiving: Socket Mode (slack-sdk's SocketModeClient, the app token), an outbound
websocket; Slack pushes each event as an envelope and redelivers it until it is
acknowledged. An envelope is acknowledged only once what it says is decided and
written down: a task record in incoming/ (intake.py), or a refusal. Each message is
taken under a guard: one that keeps failing is set aside in failed/slack-<repo>/ with
its payload and reasons (and then acknowledged); one bad event never stops the
others, and an event of a shape airut does not know is logged and acknowledged.

Sending (another thread): reply records from outgoing/slack-<repo>/, delivered by
outbox.py. Progress (a third): reactions, the DM status and the plan (progress.py).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import sys
import threading
import time
from typing import Any

import sdnotify
from slack_sdk.socket_mode import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from airut_core import config as config_mod
from airut_core import log
from airut_core.config import Config, ConfigError
from airut_core.guard import Guard
from airut_core.paths import Spool
from airut_core.spool import Doorbell, RecordError, Stage, utc_now, write_atomic
from airut_ingest import conversations
from airut_ingest.slack import api, events
from airut_ingest.slack.authorize import Authorizer
from airut_ingest.slack.intake import COMMITTED, Intake
from airut_ingest.slack.outbox import Outbox
from airut_ingest.slack.progress import Progress

logger = logging.getLogger("airut.slack")

CHUNK = 5.0  # seconds per wait: stop and the watchdog stay responsive
BACKOFF_MAX = 60.0  # Slack back: connected again within a minute
MARKER_MAX_AGE = 30 * 86400
GUARD_LIMIT = 3
GREETING = ("Hi! I work on the repository *{repo}*. Tell me what to do; I answer in this "
            "thread, and you can follow up here.")


class SlackChannel:
    def __init__(self, cfg: Config, repo_id: str):
        self.cfg = cfg
        self.repo_id = repo_id
        repo = cfg.repo(repo_id)
        if repo.slack is None:
            raise ConfigError(f"{cfg.source}: repos.{repo_id} has no slack block")
        self.slack = repo.slack
        self.channel = f"slack-{repo_id}"
        self.spool = Spool(cfg.paths.spool)
        self.spool.incoming.ensure()
        self.outgoing = self.spool.outgoing(self.channel).ensure()
        self.deferred = Stage(self.spool.root / "deferred" / self.channel).ensure()
        self.failed = self.spool.failed(self.channel).ensure()
        self.attachments = self.spool.root / "attachments"
        self.home = conversations.home(cfg.paths.state, "slack", repo_id)
        (self.home / "threads").mkdir(parents=True, exist_ok=True)
        self.web = api.client(self.slack)
        self.lookups = api.client(self.slack, patient=True)
        self.conversations = conversations.Conversations(cfg.paths.state, repo_id,
                                                         self.home / "reserved")
        self.receive_guard = Guard("slack message", logger, limit=GUARD_LIMIT, delay=0.5,
                                   store=self.home / "guard-receive")
        self.send_guard = Guard("slack reply", logger, limit=GUARD_LIMIT, delay=2.0,
                                store=self.home / "guard-send")
        self.outbox = Outbox(self.web, self.channel, self.outgoing, self.deferred, self.failed,
                             self.attachments, self.slack.retry_limit, self.slack.retry_delay,
                             self.home / "threads")
        self.progress = Progress(self.web, self.channel, self.spool.active,
                                 cfg.paths.state, self.home)
        self.outbox.on_delivered = lambda d: self.progress.finished(d["tasks"])
        self.intake: Intake | None = None  # once auth.test said who the app is
        self.socket: SocketModeClient | None = None
        self.stopping = threading.Event()
        self.status = "starting"
        self.heartbeat = {"receive": time.monotonic(), "send": time.monotonic(),
                          "progress": time.monotonic()}

    # -- receiving ------------------------------------------------------------------

    def identify(self) -> None:
        """auth.test: the app's bot user and workspace (refusals depend on both)."""
        who = self.web.auth_test().data
        if not isinstance(who, dict) or not events.ID.match(str(who.get("user_id"))) or \
                not events.ID.match(str(who.get("team_id"))):
            raise RuntimeError("auth.test did not say which bot user and team this is")
        authorizer = Authorizer(lambda method, **a: api.call(self.lookups, method, **a),
                                self.slack.authorized, who["team_id"], self.slack.cache_ttl)
        self.intake = Intake(self.slack, self.repo_id, self.channel, self.home,
                             self.spool.incoming, self.attachments,
                             self.deferred.path / "intake", self.conversations, authorizer,
                             lambda method, **a: api.call(self.lookups, method, **a),
                             who["user_id"])
        logger.info("connected to Slack workspace %s as %s", who["team_id"], who["user_id"])

    def receive_forever(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                if self.intake is None:
                    self.identify()
                if self.socket is None:
                    self.socket = SocketModeClient(self.slack_app_token(), web_client=self.web,
                                                   logger=logging.getLogger("airut.slack.sdk"),
                                                   ping_interval=10, concurrency=8)
                    self.socket.socket_mode_request_listeners.append(self.on_request)
                if not self.socket.is_connected():
                    self.socket.connect_to_new_endpoint(force=True)
                delay = 1.0
                lost = None
                if self.socket.is_connected():
                    self.status = "connected"
                while not self.stopping.wait(1.0):
                    self.heartbeat["receive"] = time.monotonic()
                    if self.socket.is_connected():
                        self.status, lost = "connected", None
                        continue
                    self.status = "degraded: the Socket Mode connection is down"
                    lost = lost or time.monotonic()
                    if time.monotonic() - lost > 30:
                        break  # the SDK did not get it back: a new connection
            except Exception as e:
                self.status = f"degraded: {api.describe(e)}; retrying in {delay:.0f} s"
                logger.warning("Slack: %s; retrying in %.0f s", api.describe(e), delay)
                until = time.monotonic() + delay
                while time.monotonic() < until and not self.stopping.wait(
                        min(CHUNK, until - time.monotonic())):
                    self.heartbeat["receive"] = time.monotonic()
                delay = min(delay * 2, BACKOFF_MAX)
        if self.socket is not None:
            self.socket.close()

    def slack_app_token(self) -> str:
        return str(self.slack.app_token)

    def on_request(self, client: SocketModeClient, req: SocketModeRequest) -> None:
        """Called by the SDK's workers for each envelope."""
        if self.handle(req.type, req.payload, req.retry_attempt):
            client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))

    def handle(self, kind: str, payload: Any, retry: int | None = None) -> bool:
        """Decide about one envelope; True when it may be acknowledged."""
        if self.intake is None:
            return False  # not yet ready (cannot happen: the socket opens after identify)
        if kind != "events_api":
            logger.info("envelope of type %r: not used by airut", str(kind)[:40])
            return True
        try:
            found = events.read(payload)
        except Exception:  # events.read takes any shape; this would be a bug
            logger.exception("an event could not be read; acknowledged and dropped")
            return True
        if isinstance(found, events.Ignored):
            (logger.info if found.bot else logger.debug)("event ignored: %s", found.why)
            return True
        if isinstance(found, events.ThreadStarted):
            self.greet(found)
            return True
        key = found.key
        if retry:
            logger.info("message %s delivered again (attempt %s)", key, retry)
        done: list[Any] = []
        quarantined: list[bool] = []
        intake = self.intake
        self.receive_guard.run(key, lambda: done.append(intake.take(found)),
                               lambda failures: quarantined.append(
                                   self._set_aside(key, payload, failures)) or None)
        if done:
            taken = done[0]
            if taken.state == COMMITTED and taken.fresh and taken.where and taken.task_id:
                threading.Thread(target=self.progress.accepted,
                                 args=(taken.task_id, taken.where, taken.title),
                                 daemon=True).start()
            return True
        return bool(quarantined)

    def greet(self, started: events.ThreadStarted) -> None:
        marker = self.home / "greeted" / hashlib.sha256(
            f"{started.channel}:{started.thread_ts}".encode()).hexdigest()[:40]
        if marker.exists():
            return
        try:
            self.web.chat_postMessage(channel=started.channel, thread_ts=started.thread_ts,
                                      text=GREETING.format(repo=self.repo_id))
        except Exception as e:
            logger.warning("greeting in %s failed: %s", started.channel, api.describe(e))
            return
        marker.parent.mkdir(exist_ok=True)
        write_atomic(marker, b"", mode=0o640)

    def _set_aside(self, key: str, payload: Any, failures: list[dict]) -> bool:
        name = f"event-{hashlib.sha256(key.encode()).hexdigest()[:32]}"
        self.failed.put(name, {"kind": "slack event", "repo": self.repo_id, "key": key,
                               "payload": payload, "failures": failures, "time": utc_now()})
        if self.intake is not None:
            self.intake.write_marker(key, {"state": "quarantined",
                                           "record": f"{self.failed.path}/{name}"})
        logger.error("quarantined Slack message %s: %s", key,
                     "; ".join(f.get("reason", "") for f in failures))
        return True

    # -- sending --------------------------------------------------------------------

    def send_forever(self) -> None:
        bell = Doorbell([self.outgoing.path, self.deferred.path])
        try:
            while not self.stopping.is_set():
                self.heartbeat["send"] = time.monotonic()
                try:
                    wait = self.send_waiting()
                except Exception:
                    logger.exception("sending failed; trying again shortly")
                    wait = 5.0
                bell.wait(min(wait, CHUNK))
        finally:
            bell.close()

    def send_waiting(self) -> float:
        for name in self.outgoing.names():
            self.heartbeat["send"] = time.monotonic()
            self.send_guard.run(f"outgoing/{name}", lambda n=name: self.outbox.compose(n),
                                lambda failures, n=name: self.outbox.set_aside(
                                    n, self.outgoing, failures))
        next_due = CHUNK
        for name in self.deferred.names():
            self.heartbeat["send"] = time.monotonic()
            try:
                delivery = self.deferred.read(name)
            except FileNotFoundError:
                continue
            except RecordError as e:
                self.outbox.set_aside(name, self.deferred, [{"time": utc_now(),
                                                            "reason": str(e)}])
                continue
            due = _number(delivery.get("next_attempt")) - time.time()
            if due > 0:
                next_due = min(next_due, due)
                continue
            self.send_guard.run(f"deferred/{name}",
                                lambda n=name, d=delivery: self.outbox.attempt(n, d),
                                lambda failures, n=name: self.outbox.set_aside(
                                    n, self.deferred, failures))
        guard_due = self.send_guard.next_due()
        return next_due if guard_due is None else min(next_due, guard_due + 0.1)

    # -- progress -------------------------------------------------------------------

    def progress_forever(self) -> None:
        while not self.stopping.wait(0.5):
            self.heartbeat["progress"] = time.monotonic()
            try:
                self.progress.tick()
            except Exception:
                logger.exception("progress display failed; going on")

    # -- upkeep ---------------------------------------------------------------------

    def janitor(self) -> None:
        now = time.time()
        # A thread's entry is touched whenever it is used: one idle for the markers'
        # age goes, and a mention engages the thread again.
        for directory in (*(self.home / sub for sub in (
                "seen", "threads", "greeted", "plans", "guard-receive", "guard-send")),
                self.deferred.path / "intake"):
            for entry in directory.iterdir() if directory.is_dir() else []:
                try:
                    if now - entry.stat().st_mtime > MARKER_MAX_AGE:
                        entry.unlink()
                except FileNotFoundError:
                    pass
        self.conversations.clean()

    def describe(self) -> str:
        waiting = len(self.outgoing.names()) + len(self.deferred.names())
        aside = self.receive_guard.quarantined_total + self.send_guard.quarantined_total
        return (f"{self.status}; {waiting} repl(ies) to send"
                + (f"; {aside} set aside since start" if aside else ""))

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=t, daemon=True, name=t.__name__) for t in
                   (self.receive_forever, self.send_forever, self.progress_forever)]
        for t in threads:
            t.start()
        return threads


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="airut-slack", description=__doc__.split("\n")[0])
    parser.add_argument("repo", help="the repository id (the unit's instance name)")
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    log.setup(f"airut-slack@{args.repo}")
    logging.getLogger("airut.slack.sdk").setLevel(logging.WARNING)
    notifier = sdnotify.SystemdNotifier()
    try:
        channel = SlackChannel(config_mod.load(args.config,
                                               config_mod.slack_secrets(args.repo)), args.repo)
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
        stale = [k for k, t in channel.heartbeat.items() if time.monotonic() - t > 120]
        if not stale:
            notifier.notify(f"WATCHDOG=1\nSTATUS={channel.describe()}")
        if time.monotonic() - last_janitor > 3600:
            channel.janitor()
            last_janitor = time.monotonic()
    notifier.notify("STOPPING=1")


if __name__ == "__main__":
    main()
