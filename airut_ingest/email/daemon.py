"""airut-email@<repo>: a repository's mailbox in, its replies out.

Receiving (one thread): IMAP IDLE, with a scan of the whole inbox on every wake-up
and at least every imap.poll_interval seconds (IDLE misses messages on some
servers). Every message is read in the examiner, a child process (examiner.py), so
a message that stalls, bloats or crashes the parser ends the child, not the daemon;
and it is examined under a guard (airut_core.guard, with its count on disk, so even
a message during which the daemon keeps dying is set aside): an accepted one
becomes a task record in incoming/, a rejected one is logged; only then is it
removed from the mailbox. A message that fails three times, or that is beyond what
airut reads, is moved to the quarantine folder on the IMAP server, with a record of
the reasons in failed/email-<repo>/. The mailbox never stops on one message.

An intake marker per message remembers what became of it. The task record is
staged whole first; the marker, pending, names it; one rename publishes it into
incoming/; the marker says committed. After a crash anywhere, a committed message
is only removed from the mailbox (its task may long be merged into another), and
a pending one is finished from its staged record: never a second task, never none.

Sending (another thread): reply records from outgoing/email-<repo>/ become one mail
per distinct sender of the tasks the reply answers (merged follow-ups may come from
several), each threaded under that sender's message; each waits in
deferred/email-<repo>/ and goes out over SMTP; a sent-marker per mail makes each go
out once. A refused or failed send is retried with back-off, then quarantined in
failed/email-<repo>/ with the reasons. Acknowledgments travel the same path. A reply
record that cannot be composed is retried under the guard, then quarantined; the
replies after it go out.
"""

from __future__ import annotations

import base64
import email
import email.parser
import email.policy
import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from airut_core import config as config_mod
from airut_core import log
from airut_core.config import Config, ConfigError
from airut_core.guard import Guard, Permanent
from airut_core.records import ReplyRecord, TaskRecord
from airut_core.spool import (
    RecordError,
    dump,
    fsync_dir,
    new_name,
    utc_now,
    write_atomic,
)
from airut_ingest import files as files_mod
from airut_ingest.channel import GUARD_DELAY, GUARD_LIMIT, Channel, forget_missing, serve
from airut_ingest.email import compose, intake, parse
from airut_ingest.email.compose import Thread
from airut_ingest.email.examiner import Examiner
from airut_ingest.email.mailbox import Mailbox, send

logger = logging.getLogger("airut.email")

IDLE_CHUNK = 10.0  # seconds per IDLE round: stop and the watchdog stay responsive
BACKOFF_MAX = 300.0
# Deaths of the daemon while working on one message or reply before it is set aside.
# Mail is read in the examiner process, so a message cannot kill the daemon: its
# deaths are kills from outside or restarts, no evidence against the item in hand.
CRASH_LIMIT = 5
MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[!-;=?-~]{1,250}>)", re.IGNORECASE | re.MULTILINE)

# What an intake marker says became of a message.
PENDING, COMMITTED, REJECTED, QUARANTINED = "pending", "committed", "rejected", "quarantined"


class EmailChannel(Channel):
    KIND = "email"
    MARKER_DIRS = ("seen", "sent")
    ITEMS = "mail(s)"
    CHUNK = IDLE_CHUNK

    def __init__(self, cfg: Config, repo_id: str):
        repo = cfg.repo(repo_id)
        if repo.email is None:
            raise ConfigError(f"{cfg.source}: repos.{repo_id} has no email block")
        super().__init__(cfg, repo_id, logger)
        self.email = repo.email
        self.seen = self.home / "seen"
        self.sent = self.home / "sent"
        for d in (self.seen, self.sent, self.attachments):
            d.mkdir(parents=True, exist_ok=True)
        self.receive_guard = Guard("message", logger, limit=GUARD_LIMIT, delay=GUARD_DELAY,
                                   store=self.home / "guard-receive", crash_limit=CRASH_LIMIT)
        self.examiner = Examiner(intake.Rules.of(self.email))
        self.heartbeat["receive"] = time.monotonic()

    def loops(self) -> list:
        return [self.receive_forever, self.send_forever]

    # -- receiving ------------------------------------------------------------------

    def receive_forever(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            box = Mailbox(self.email.imap)
            try:
                self.examiner.start()  # ready before the first message
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
                self.scan(box)
                wait = self.email.imap.poll_interval
                due = self.receive_guard.next_due()  # a message backing off
                next_scan = time.monotonic() + (wait if due is None else min(wait, due + 0.1))
            if box.wait(min(IDLE_CHUNK, max(0.0, next_scan - time.monotonic()))):
                next_scan = 0.0  # the server rang: scan now

    def scan(self, box: Mailbox) -> None:
        seen = set()
        for uid in box.waiting():
            if self.stopping.is_set():
                return
            self.heartbeat["receive"] = time.monotonic()
            seen.add(self.take(box, uid))
        forget_missing(self.receive_guard, seen)

    def take(self, box: Mailbox, uid: int) -> str | None:
        """One message: examined under the guard, then released from the mailbox as its
        marker says. Errors of the IMAP connection propagate (the loop reconnects).
        Returns the message's key."""
        size = box.size(uid)
        if size is None:
            return None
        if size > self.email.max_message_bytes:
            raw = box.fetch_header(uid)
            if raw is None:
                return None
            key = message_key(raw)
            if self._marker(key) is None:
                reason = (f"the message has {size} bytes, over max_message_bytes "
                          f"({self.email.max_message_bytes}); it was not read")
                self.receive_guard.run(key, lambda: self._set_aside(
                    key, raw, [{"time": utc_now(), "reason": reason}], size))
        else:
            raw = box.fetch(uid)
            if raw is None:
                return None
            key = message_key(raw)
            marker = self._marker(key)
            if marker is None:
                self.examiner.start()  # one that cannot start is no message's failure
                self.receive_guard.run(
                    key, lambda: self.intake(raw, key),
                    quarantine=lambda failures: self._set_aside(key, raw, failures, size))
            elif marker.get("state") == PENDING:  # a crash came in between
                logger.warning("message %s: finishing the intake of task %s after a crash",
                               key, marker.get("task_id"))
                self.receive_guard.run(
                    key, lambda: self.finish_intake(key, marker),
                    quarantine=lambda failures: self._set_aside(key, raw, failures, size))
        self._release(box, uid, key)
        return key

    def _release(self, box: Mailbox, uid: int, key: str) -> None:
        """Only once the marker says what became of it (design.md, spool rule 7)."""
        state = (self._marker(key) or {}).get("state")
        if state in (COMMITTED, REJECTED):
            box.remove(uid)
        elif state == QUARANTINED:
            folder = self.email.imap.quarantine_folder
            try:
                box.quarantine(uid, folder)
            except IMAPClientAbortError:
                raise  # the connection: reconnect and try again
            except IMAPClientError as e:  # the server refused: never block the mailbox
                logger.error("cannot move message %s to the folder %r (%s); removing it "
                             "from the inbox: a copy is in %s", key, folder, e, self.failed.path)
                box.remove(uid)
            else:
                logger.warning("moved message %s to the folder %r", key, folder)
            # Forgotten once out of the inbox: an operator who moves it back (the cause
            # fixed) has it examined afresh.
            (self.seen / f"{key}.json").unlink(missing_ok=True)
        # else: it failed and backs off; the next scan tries it again

    def intake(self, raw: bytes, key: str) -> None:
        """Examine a message and commit its task: the work the guard watches."""
        verdict = intake.decide(self.examiner.read(raw, tick=self._alive),
                                self.conversations.known)
        if not verdict.accepted:
            logger.warning("rejected mail from %s (%s): %s; subject %r", verdict.sender or "?",
                           verdict.reason, verdict.detail, verdict.subject)
            self._write_marker(key, {"state": REJECTED, "reason": verdict.reason,
                                     "message_id": verdict.message_id})
            return
        if verdict.dropped_reference:
            logger.warning("mail from %s names conversation %s, which is not one of "
                           "repository %s: it starts a new conversation; subject %r",
                           verdict.sender, verdict.dropped_reference, self.repo_id,
                           verdict.subject)
        new = verdict.conversation_id is None
        if new:  # chosen and reserved here, so the acknowledgment can name it
            verdict.conversation_id = self.conversations.reserve_new()
        task_id = new_name()
        self._stage(task_id, verdict)
        marker = {"state": PENDING, "task_id": task_id, "message_id": verdict.message_id,
                  "conversation_id": verdict.conversation_id, "new": new,
                  "reply_to": _thread(verdict).dumps()}
        self._write_marker(key, marker)
        self.finish_intake(key, marker)
        log.for_task(logger, task_id, verdict.conversation_id, self.repo_id).info(
            "task from %s: %r", verdict.sender, verdict.subject)

    def _alive(self) -> None:
        self.heartbeat["receive"] = time.monotonic()

    def finish_intake(self, key: str, marker: dict) -> None:
        """From a pending marker on: publish the staged record (unless that happened
        before a crash), queue the acknowledgment, mark the message committed."""
        task_id = marker["task_id"]
        staged = self.staging / f"{task_id}.json"
        if staged.exists():
            os.rename(staged, self.spool.incoming.file(task_id))
            fsync_dir(self.spool.incoming.path)
        if marker.get("new") and self.email.acknowledge:
            self._queue_ack(task_id, Thread.loads(marker["reply_to"]),
                            marker["conversation_id"])
        self._write_marker(key, {**marker, "state": COMMITTED})

    def _marker(self, key: str) -> dict | None:
        try:
            data = json.loads((self.seen / f"{key}.json").read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as e:
            logger.error("unreadable intake marker %s (%s): examining the message again",
                         key, e)
            return None
        return data if isinstance(data, dict) else None

    def _write_marker(self, key: str, marker: dict) -> None:
        data = json.dumps({**marker, "time": utc_now()}).encode()
        write_atomic(self.seen / f"{key}.json", data, mode=0o640)

    def _stage(self, task_id: str, verdict: intake.Verdict) -> None:
        """The task record, whole, in the channel's own staging directory (on the spool's
        file system): one rename publishes it into incoming/."""
        attachments_dir = None
        if verdict.attachments:
            attachments_dir = str(self._save_attachments(task_id, verdict.attachments))
        text = verdict.text
        if verdict.notes:
            text += "\n\n" + "\n".join(f"[airut: {n}]" for n in verdict.notes)
        task = TaskRecord(repo=self.repo_id, channel=self.channel,
                          reply_to=_thread(verdict).dumps(), sender=verdict.sender, text=text,
                          conversation_id=verdict.conversation_id,
                          attachments_dir=attachments_dir, model=verdict.model,
                          task_id=task_id)
        write_atomic(self.staging / f"{task_id}.json", dump(task.to_dict()), mode=0o640)

    def _save_attachments(self, task_id: str, items: list[parse.Attachment]) -> Path:
        """Written whole and fsynced before the record names them: the message is
        expunged after the commit, and these are then the only copy."""
        final = self.attachments / task_id
        tmp = self.attachments / f".{task_id}.new"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o750)
        for item in items:
            fd = os.open(tmp / item.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o640)
            with os.fdopen(fd, "wb") as f:
                f.write(item.data)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(self.attachments)
        return final

    def _queue_ack(self, task_id: str, thread: Thread, conversation_id: str) -> None:
        msg = compose.acknowledgment(self.email.address, thread, conversation_id,
                                     self.email.dashboard_url)
        self.deferred.put(f"ack-{task_id}", _pending(msg, f"ack-{task_id}"))

    def _set_aside(self, key: str, raw: bytes, failures: list[dict], size: int) -> None:
        """Quarantine: a copy of the message (or of its header, when it was too big to
        read) and the record of the reasons first, then the marker that sends the
        message to the quarantine folder."""
        name = f"message-{key[:32]}"
        write_atomic(self.failed.path / f"{name}.eml", raw, self.failed.tmp, mode=0o640)
        self.failed.put(name, {"kind": "email message", "repo": self.repo_id,
                               "message_key": key, "size": size, **_describe(raw),
                               "folder": self.email.imap.quarantine_folder,
                               "failures": failures, "time": utc_now()})
        self._write_marker(key, {"state": QUARANTINED, "record": f"{self.failed.path}/{name}"})
        logger.error("quarantined message %s (%s): %s", key, _describe(raw).get("subject"),
                     "; ".join(f.get("reason", "") for f in failures))

    # -- sending --------------------------------------------------------------------

    def take_reply(self, name: str) -> None:
        """A reply record becomes one mail per distinct sender, each in deferred/ (the
        whole message, attachments included), before the record is removed."""
        try:
            reply = ReplyRecord.from_dict(self.outgoing.read(name), f"{self.channel}/{name}")
        except FileNotFoundError:
            return
        except RecordError as e:
            raise Permanent(str(e)) from e
        mails = self.recipients(name, reply)
        files, notes = self._reply_files(name, reply)
        for key, thread, also in mails:
            if (self.sent / key).exists() or self.deferred.exists(key):
                continue  # composed, or even sent, before a crash
            msg = compose.reply(self.email.address, reply, thread, files, notes, also)
            self.deferred.put(key, _pending(msg, key))
        self.outgoing.remove(name)
        self.remove_tree(self.outgoing.path / f"{name}.files")
        for task_id in [*reply.merged_task_ids, reply.task_id]:
            self.remove_tree(self.attachments / task_id)
        # send_waiting goes on with deferred/, where these are due at once.

    def recipients(self, name: str, reply: ReplyRecord) -> list[tuple[str, Thread, list[str]]]:
        """(sent-marker key, thread, the sender's other messages it answers) for each
        distinct sender the reply answers: the reply's own first, then those of merged
        tasks, each under its own message; one mail answers all of a sender's merged
        messages (In-Reply-To names each of them)."""
        threads = [Thread.loads(reply.reply_to)]  # Unsendable: nobody to send it to
        for i, other in enumerate(reply.merged_reply_to):
            try:
                threads.append(Thread.loads(other))
            except compose.Unsendable as e:  # a task of another channel, say
                logger.warning("reply %s: merged task %d has no mail address (%s)", name,
                               i + 1, e)
        mails: dict[str, tuple[str, Thread, list[str]]] = {}
        for i, thread in enumerate(threads):
            address = thread.to.lower()
            if address in mails:
                if thread.message_id:
                    mails[address][2].append(thread.message_id)
                continue
            mails[address] = (name if i == 0 else f"{name}+{i}", thread, [])
        return list(mails.values())

    def _reply_files(self, name: str, reply: ReplyRecord) -> tuple[list[tuple[str, bytes]],
                                                                     list[str]]:
        """The reply's files, read without following links, from its own directory only;
        what cannot be attached is named in the text instead."""
        if not reply.attachments:
            return [], []
        where = self.outgoing.path / f"{name}.files"
        if os.path.normpath(reply.attachments_dir or "") != str(where):
            return [], [f"{len(reply.attachments)} file(s) were not attached: they are not "
                        "where this channel reads reply files"]
        files, notes, taken = [], [], set()
        try:
            dir_fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as e:
            return [], [f"the reply's files could not be read: {e.strerror}"]
        try:
            for raw_name in reply.attachments:
                shown = parse.safe_name(raw_name, taken)
                try:
                    files.append((shown, files_mod.read_plain_file(raw_name, dir_fd)))
                    taken.add(shown)
                except (OSError, ValueError) as e:
                    notes.append(f"the file {shown} could not be attached: {e}")
        finally:
            os.close(dir_fd)
        return files, notes

    def attempt(self, name: str, pending: dict) -> None:
        key = pending["sent_key"]
        if (self.sent / key).exists():
            self.deferred.remove(name)  # sent before a crash
            return
        msg = email.message_from_bytes(base64.b64decode(pending["mail"]),
                                       policy=email.policy.default)
        try:
            send(self.email.smtp, msg)
        except Exception as e:
            self.defer(name, pending, str(e), self.email.retry_limit, self.email.retry_delay,
                       what=f"mail {key} to {msg['To']}", verb="send")
            return
        write_atomic(self.sent / key, b"", mode=0o640)
        self.deferred.remove(name)
        logger.info("sent %s to %s", "acknowledgment" if key.startswith("ack-") else "reply",
                    msg["To"], extra={"task": key.removeprefix("ack-").partition("+")[0]})

    # -- upkeep ---------------------------------------------------------------------


def _thread(verdict: intake.Verdict) -> Thread:
    return Thread(to=verdict.sender, subject=verdict.subject, message_id=verdict.message_id,
                  references=verdict.references)


def _pending(msg, key: str) -> dict:
    return {"sent_key": key, "to": str(msg["To"]), "attempts": 0, "next_attempt": 0,
            "mail": base64.b64encode(bytes(msg)).decode()}


def message_key(raw: bytes) -> str:
    """The Message-ID when there is one (what deduplication is about), else the bytes.

    Read from the raw header block with one bounded regular expression: this runs
    before anything else, on any bytes."""
    head = re.split(rb"\r?\n\r?\n", raw[:262144], maxsplit=1)[0]
    m = MESSAGE_ID.search(head)
    return hashlib.sha256(m.group(1) if m else raw).hexdigest()[:40]


def _describe(raw: bytes) -> dict:
    """What a quarantine record says about a message, whatever the bytes."""
    try:  # the header only: the body may be what cannot be parsed
        msg = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(raw)
        return {"message_id": parse.message_id(msg), "subject": parse.subject(msg)[:200],
                "from": " ".join(parse.raw_headers(msg, "From"))[:200]}
    except Exception as e:
        return {"unreadable": f"{type(e).__name__}: {e}"[:500]}


def main(argv: list[str] | None = None) -> None:
    serve("email", argv, EmailChannel, config_mod.email_secrets, __doc__.split("\n")[0],
          logger)
