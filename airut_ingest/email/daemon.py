"""airut-email@<repo>: a repository's mailbox in, its replies out.

Receiving (one thread): IMAP IDLE, with a scan of the whole inbox on every wake-up
and at least every imap.poll_interval seconds (IDLE misses messages on some
servers). Every message is examined (intake.examine); an accepted one becomes a
task record in incoming/, and only then is it removed from the mailbox. A marker
written before the record remembers which task a message became, so a crash
anywhere in between neither loses the message nor makes a second task of it.

Sending (another thread): reply records from outgoing/email-<repo>/ go out over
SMTP, threaded; a sent-marker per task makes each go out once. A refused or failed
send moves the mail to deferred/email-<repo>/ and is retried with back-off, then
quarantined in failed/email-<repo>/ with the reason. Acknowledgments of new
conversations travel the same deferred path.
"""

from __future__ import annotations

import argparse
import base64
import email
import email.parser
import email.policy
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import sdnotify

from airut_core import config as config_mod
from airut_core import conversation, log
from airut_core.config import Config, ConfigError
from airut_core.paths import Spool
from airut_core.records import ReplyRecord, TaskRecord
from airut_core.spool import Doorbell, RecordError, Stage, new_name, utc_now, write_atomic
from airut_ingest.email import compose, intake
from airut_ingest.email.compose import Thread
from airut_ingest.email.mailbox import Mailbox, send

logger = logging.getLogger("airut.email")

IDLE_CHUNK = 10.0  # seconds per IDLE round: stop and the watchdog stay responsive
BACKOFF_MAX = 300.0
SENT_MAX_AGE = 30 * 86400


class EmailChannel:
    def __init__(self, cfg: Config, repo_id: str):
        self.cfg = cfg
        self.repo_id = repo_id
        repo = cfg.repo(repo_id)
        if repo.email is None:
            raise ConfigError(f"{cfg.source}: repos.{repo_id} has no email block")
        self.email = repo.email
        self.channel = f"email-{repo_id}"
        self.spool = Spool(cfg.paths.spool).ensure()
        self.outgoing = self.spool.outgoing(self.channel).ensure()
        self.deferred = Stage(self.spool.root / "deferred" / self.channel).ensure()
        self.failed = self.spool.failed(self.channel)
        self.attachments = self.spool.root / "attachments"
        home = Path(cfg.paths.state) / "email" / repo_id
        self.seen = home / "seen"
        self.sent = home / "sent"
        for d in (self.seen, self.sent, self.attachments):
            d.mkdir(parents=True, exist_ok=True)
        self.stopping = threading.Event()
        self.status = "starting"
        self.heartbeat = {"receive": time.monotonic(), "send": time.monotonic()}

    # -- receiving ------------------------------------------------------------------

    def receive_forever(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            box = Mailbox(self.email.imap)
            try:
                box.connect()
                self.status = f"connected to {self.email.imap.host}"
                logger.info("connected to %s as %s", self.email.imap.host,
                            self.email.imap.username)
                delay = 1.0
                self._receive(box)
            except Exception as e:
                self.status = f"degraded: {e}; retrying in {delay:.0f} s"
                logger.warning("mailbox %s: %s; retrying in %.0f s", self.email.imap.host, e,
                               delay)
                until = time.monotonic() + delay
                while not self.stopping.wait(min(IDLE_CHUNK, until - time.monotonic())):
                    self.heartbeat["receive"] = time.monotonic()  # degraded, not stuck
                    if time.monotonic() >= until:
                        break
                delay = min(delay * 2, BACKOFF_MAX)
            finally:
                box.close()

    def _receive(self, box: Mailbox) -> None:
        next_scan = 0.0
        while not self.stopping.is_set():
            self.heartbeat["receive"] = time.monotonic()
            if time.monotonic() >= next_scan:
                for uid in box.waiting():
                    self.take(box, uid)
                next_scan = time.monotonic() + self.email.imap.poll_interval
            if box.wait(min(IDLE_CHUNK, max(0.0, next_scan - time.monotonic()))):
                next_scan = 0.0  # the server rang: scan now

    def take(self, box: Mailbox, uid: int) -> None:
        raw = box.fetch(uid)
        if raw is None:
            return
        key = _message_key(raw)
        marker = self.seen / f"{key}.json"
        verdict = intake.examine(raw, self.email, self._known)
        if marker.exists():
            done = _read_json(marker)
            if not self._committed(done["task_id"]) and verdict.accepted:
                logger.warning("message %s was not committed before a crash; committing it "
                               "as task %s", verdict.message_id, done["task_id"])
                verdict.conversation_id = done.get("conversation_id")
                self._commit(done["task_id"], verdict)
            box.remove(uid)
            return
        if not verdict.accepted:
            logger.warning("rejected mail from %s (%s): %s; subject %r", verdict.sender or "?",
                           verdict.reason, verdict.detail, verdict.subject)
            box.remove(uid)
            return
        new = verdict.conversation_id is None
        if new:  # chosen here, so the acknowledgment can name it
            verdict.conversation_id = conversation.new_id(self.cfg.paths.state)
        task_id = new_name()
        write_atomic(marker, intake_marker(task_id, verdict).encode(), mode=0o640)
        self._commit(task_id, verdict)
        self._pause_for_tests()
        box.remove(uid)
        if new and self.email.acknowledge:
            self._queue_ack(task_id, verdict)

    def _known(self, conversation_id: str) -> bool:
        return conversation.load(self.cfg.paths.state, conversation_id) is not None

    def _commit(self, task_id: str, verdict: intake.Verdict) -> None:
        attachments_dir = None
        if verdict.attachments:
            final = self.attachments / task_id
            tmp = self.attachments / f".{task_id}.new"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(mode=0o750)
            for item in verdict.attachments:
                (tmp / item.name).write_bytes(item.data)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            attachments_dir = str(final)
        text = verdict.text
        if verdict.notes:
            text += "\n\n" + "\n".join(f"[airut: {n}]" for n in verdict.notes)
        thread = Thread(to=verdict.sender, subject=verdict.subject,
                        message_id=verdict.message_id, references=verdict.references)
        task = TaskRecord(repo=self.repo_id, channel=self.channel, reply_to=thread.dumps(),
                          sender=verdict.sender, text=text,
                          conversation_id=verdict.conversation_id,
                          attachments_dir=attachments_dir, model=verdict.model,
                          task_id=task_id)
        self.spool.incoming.put(task_id, task.to_dict())
        log.for_task(logger, task_id, verdict.conversation_id, self.repo_id).info(
            "task from %s: %r", verdict.sender, verdict.subject)

    def _committed(self, task_id: str) -> bool:
        stages = [self.spool.incoming, self.spool.active, self.spool.finished, self.outgoing,
                  self.deferred, *(Stage(p) for p in (self.spool.root / "failed").glob("*"))]
        return any(s.exists(task_id) for s in stages) or (self.sent / task_id).exists()

    def _pause_for_tests(self) -> None:
        """Test seam: hold between the commit and the removal, to be killed there."""
        pause = os.environ.get("AIRUT_TEST_PAUSE_BEFORE_REMOVE")
        if pause:
            logger.info("pausing %s s between commit and removal (test)", pause)
            time.sleep(float(pause))

    def _queue_ack(self, task_id: str, verdict: intake.Verdict) -> None:
        thread = Thread(to=verdict.sender, subject=verdict.subject,
                        message_id=verdict.message_id, references=verdict.references)
        msg = compose.acknowledgment(self.email.address, thread, verdict.conversation_id,
                                     self.email.dashboard_url)
        self.deferred.put(f"ack-{task_id}", _pending(msg, f"ack-{task_id}"))

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
                bell.wait(min(wait, IDLE_CHUNK))
        finally:
            bell.close()

    def send_waiting(self) -> float:
        """Send what is due; returns seconds until the next deferred attempt."""
        for name in self.outgoing.names():
            self._send_reply(name)
        next_due = IDLE_CHUNK
        for name in self.deferred.names():
            try:
                pending = self.deferred.read(name)
            except (FileNotFoundError, RecordError):
                continue
            due = pending.get("next_attempt", 0) - time.time()
            if due > 0:
                next_due = min(next_due, due)
                continue
            self._attempt(name, pending)
        return next_due

    def _send_reply(self, name: str) -> None:
        try:
            reply = ReplyRecord.from_dict(self.outgoing.read(name), f"{self.channel}/{name}")
        except FileNotFoundError:
            return
        except RecordError as e:
            logger.error("quarantined unreadable reply %s: %s", name, e)
            self.outgoing.move_to(name, self.failed.ensure())
            return
        pending = None
        if not (self.sent / name).exists():  # else it went out before a crash
            pending = _pending(compose.reply(self.email.address, reply), name)
            # The deferred copy holds the whole message, attachments included.
            self.deferred.put(name, pending)
        self.outgoing.remove(name)
        shutil.rmtree(self.outgoing.path / f"{name}.files", ignore_errors=True)
        self._cleanup_task([*reply.merged_task_ids, reply.task_id])
        if pending is not None:
            self._attempt(name, pending)

    def _attempt(self, name: str, pending: dict) -> None:
        key = pending["sent_key"]
        if (self.sent / key).exists():
            self.deferred.remove(name)  # sent before a crash
            return
        msg = email.message_from_bytes(base64.b64decode(pending["mail"]),
                                       policy=email.policy.default)
        try:
            send(self.email.smtp, msg)
        except Exception as e:
            pending["attempts"] = pending.get("attempts", 0) + 1
            pending.setdefault("failures", []).append({"time": utc_now(), "reason": str(e)})
            if pending["attempts"] >= self.email.retry_limit:
                logger.error("giving up on mail %s to %s after %d attempts: %s", key, msg["To"],
                             pending["attempts"], e)
                self.deferred.put(name, pending)
                self.deferred.move_to(name, self.failed.ensure())
                return
            delay = min(self.email.retry_delay * 2 ** (pending["attempts"] - 1), 3600)
            pending["next_attempt"] = time.time() + delay
            self.deferred.put(name, pending)
            logger.warning("cannot send mail %s to %s (%s); retrying in %.0f s", key, msg["To"],
                           e, delay)
            return
        write_atomic(self.sent / key, b"", mode=0o640)
        self.deferred.remove(name)
        logger.info("sent %s to %s", "acknowledgment" if key.startswith("ack-") else "reply",
                    msg["To"], extra={"task": key.removeprefix("ack-")})

    def _cleanup_task(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            shutil.rmtree(self.attachments / task_id, ignore_errors=True)

    def janitor(self) -> None:
        now = time.time()
        for directory in (self.sent, self.seen):
            for entry in directory.iterdir():
                if now - entry.stat().st_mtime > SENT_MAX_AGE:
                    entry.unlink(missing_ok=True)

    def describe(self) -> str:
        waiting = len(self.outgoing.names()) + len(self.deferred.names())
        return f"{self.status}; {waiting} mail(s) to send"


def intake_marker(task_id: str, verdict: intake.Verdict) -> str:
    return json.dumps({"task_id": task_id, "message_id": verdict.message_id,
                       "conversation_id": verdict.conversation_id, "time": utc_now()})


def _pending(msg, key: str) -> dict:
    return {"sent_key": key, "to": str(msg["To"]), "attempts": 0, "next_attempt": 0,
            "mail": base64.b64encode(bytes(msg)).decode()}


def _message_key(raw: bytes) -> str:
    """The Message-ID when there is one (what deduplication is about), else the bytes."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    message_id = (headers.get("Message-ID") or "").strip()
    return hashlib.sha256(message_id.encode() if message_id else raw).hexdigest()[:40]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="airut-email", description=__doc__.split("\n")[0])
    parser.add_argument("repo", help="the repository id (the unit's instance name)")
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    log.setup(f"airut-email@{args.repo}")
    notifier = sdnotify.SystemdNotifier()
    try:
        channel = EmailChannel(config_mod.load(args.config), args.repo)
    except ConfigError as e:
        logger.error("%s", e)
        notifier.notify(f"STATUS=configuration error: {e}")
        sys.exit(78)
    for target in (channel.receive_forever, channel.send_forever):
        threading.Thread(target=target, daemon=True, name=target.__name__).start()

    def on_signal(signum: int, frame: object) -> None:
        channel.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    notifier.notify(f"READY=1\nSTATUS={channel.describe()}")
    last_janitor = 0.0
    while not channel.stopping.wait(5.0):
        stale = [k for k, t in channel.heartbeat.items() if time.monotonic() - t > 120]
        if not stale:  # both loops alive: feed the watchdog
            notifier.notify(f"WATCHDOG=1\nSTATUS={channel.describe()}")
        if time.monotonic() - last_janitor > 3600:
            channel.janitor()
            last_janitor = time.monotonic()
    notifier.notify("STOPPING=1")
