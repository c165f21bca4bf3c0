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

import logging
import threading
import time
from typing import Any

from slack_sdk.socket_mode import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from airut_core import config as config_mod
from airut_core.config import Config, ConfigError
from airut_core.guard import Guard
from airut_core.spool import utc_now, write_atomic
from airut_ingest.channel import GUARD_LIMIT, Channel, serve
from airut_ingest.slack import api, events
from airut_ingest.slack.authorize import Authorizer
from airut_ingest.slack.intake import COMMITTED, Intake, digest
from airut_ingest.slack.outbox import Outbox
from airut_ingest.slack.progress import Progress

logger = logging.getLogger("airut.slack")

BACKOFF_MAX = 60.0  # Slack back: connected again within a minute
GREETING = ("Hi! I work on the repository *{repo}*. Tell me what to do; I answer in this "
            "thread, and you can follow up here.")


class SlackChannel(Channel):
    KIND = "slack"
    MARKER_DIRS = ("seen", "threads", "greeted", "plans")
    ITEMS = "repl(ies)"
    CHUNK = 5.0

    def __init__(self, cfg: Config, repo_id: str):
        repo = cfg.repo(repo_id)
        if repo.slack is None:
            raise ConfigError(f"{cfg.source}: repos.{repo_id} has no slack block")
        super().__init__(cfg, repo_id, logger)
        self.slack = repo.slack
        (self.home / "threads").mkdir(exist_ok=True)
        self.web = api.client(self.slack)
        lookups = api.client(self.slack, patient=True)
        self.lookup = lambda method, **args: api.call(lookups, method, **args)
        self.receive_guard = Guard("slack message", logger, limit=GUARD_LIMIT, delay=0.5,
                                   store=self.home / "guard-receive")
        self.outbox = Outbox(self.web, self.channel, self.outgoing, self.deferred,
                             self.home / "threads")
        self.progress = Progress(self.web, self.channel, self.spool.active,
                                 cfg.paths.state, self.home)
        self.intake: Intake | None = None  # once auth.test said who the app is
        self.socket: SocketModeClient | None = None
        self.heartbeat.update(receive=time.monotonic(), progress=time.monotonic())

    def loops(self) -> list:
        return [self.receive_forever, self.send_forever, self.progress_forever]

    # -- receiving ------------------------------------------------------------------

    def identify(self) -> None:
        """auth.test: the app's bot user and workspace (refusals depend on both)."""
        who = self.web.auth_test().data
        if not isinstance(who, dict) or not events.ID.match(str(who.get("user_id"))) or \
                not events.ID.match(str(who.get("team_id"))):
            raise RuntimeError("auth.test did not say which bot user and team this is")
        authorizer = Authorizer(self.lookup, self.slack.authorized, who["team_id"],
                                self.slack.cache_ttl)
        self.intake = Intake(self.slack, self.repo_id, self.channel, self.home,
                             self.spool.incoming, self.attachments, self.staging,
                             self.conversations, authorizer, self.lookup, who["user_id"])
        logger.info("connected to Slack workspace %s as %s", who["team_id"], who["user_id"])

    def receive_forever(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                if self.intake is None:
                    self.identify()
                if self.socket is None:
                    self.socket = SocketModeClient(str(self.slack.app_token), web_client=self.web,
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
                        min(self.CHUNK, until - time.monotonic())):
                    self.heartbeat["receive"] = time.monotonic()
                delay = min(delay * 2, BACKOFF_MAX)
        if self.socket is not None:
            self.socket.close()

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
        quarantined: list[bool] = []

        def quarantine(failures: list[dict]) -> None:
            self._set_aside(key, payload, failures)
            quarantined.append(True)

        intake = self.intake
        taken = self.receive_guard.value(key, lambda: intake.take(found), quarantine)
        if taken is None:  # failed: acknowledged only once it is set aside
            return bool(quarantined)
        if taken.state == COMMITTED and taken.fresh and taken.where and taken.task_id:
            threading.Thread(target=self.progress.accepted,
                             args=(taken.task_id, taken.where, taken.title),
                             daemon=True).start()
        return True

    def greet(self, started: events.ThreadStarted) -> None:
        marker = self.home / "greeted" / digest(f"{started.channel}:{started.thread_ts}")
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

    def _set_aside(self, key: str, payload: Any, failures: list[dict]) -> None:
        name = f"event-{digest(key)}"
        self.failed.put(name, {"kind": "slack event", "repo": self.repo_id, "key": key,
                               "payload": payload, "failures": failures, "time": utc_now()})
        if self.intake is not None:
            self.intake.write_marker(key, {"state": "quarantined",
                                           "record": f"{self.failed.path}/{name}"})
        logger.error("quarantined Slack message %s: %s", key,
                     "; ".join(f.get("reason", "") for f in failures))

    # -- sending --------------------------------------------------------------------

    def take_reply(self, name: str) -> None:
        self.outbox.compose(name)

    def attempt(self, name: str, delivery: dict) -> None:
        try:
            self.outbox.steps(name, delivery)
        except Exception as e:
            self.defer(name, delivery, api.describe(e), self.slack.retry_limit,
                       self.slack.retry_delay, what=f"reply {name}",
                       at_least=api.retry_after(e) or 0.0)
            return
        self.deferred.remove(name)
        self.remove_tree(self.deferred.path / f"{name}.files")
        for task_id in delivery["tasks"]:
            self.remove_tree(self.attachments / task_id)
        self.progress.finished(delivery["tasks"])
        logger.info("reply %s delivered to %s in %d message(s)", name,
                    delivery["where"]["channel"], len(delivery["chunks"]),
                    extra={"task": delivery["tasks"][0]})

    # -- progress -------------------------------------------------------------------

    def progress_forever(self) -> None:
        while not self.stopping.wait(0.5):
            self.heartbeat["progress"] = time.monotonic()
            try:
                self.progress.tick()
            except Exception:
                logger.exception("progress display failed; going on")

    # -- upkeep ---------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    logging.getLogger("airut.slack.sdk").setLevel(logging.WARNING)
    serve("slack", argv, SlackChannel, config_mod.slack_secrets, __doc__.split("\n")[0],
          logger)


if __name__ == "__main__":
    main()
