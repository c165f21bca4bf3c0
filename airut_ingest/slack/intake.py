"""A Slack message becomes a task record, at most once, before its envelope is acked.

A marker per message (channel and ts) remembers what became of it, as the email
channel's do: the record is staged whole, the marker says pending and names it, one
rename publishes it into incoming/, the thread map records the thread's
conversation, the marker says committed; only then is the envelope acknowledged.
Slack redelivers an envelope that was not acked (and sends a message with a mention
twice, as app_mention and as message): a committed or refused marker answers those,
and a pending one is finished from its staged record. Never two tasks, never none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from airut_core import log
from airut_core.config import SlackConfig
from airut_core.records import TaskRecord
from airut_core.spool import (
    RecordError,
    Stage,
    dump,
    fsync_dir,
    load,
    new_name,
    utc_now,
    write_atomic,
)
from airut_ingest import files as files_mod
from airut_ingest.conversations import Conversations
from airut_ingest.slack import api, events
from airut_ingest.slack.address import Where
from airut_ingest.slack.authorize import Authorizer, display_name
from airut_ingest.slack.events import Message

logger = logging.getLogger("airut.slack")
PENDING, COMMITTED, REFUSED, IGNORED = "pending", "committed", "refused", "ignored"
TITLE_MAX = 60  # characters of a DM thread's title
MENTION = re.compile(r"<([@#!])([A-Za-z0-9^]{1,40})(?:\|([^>]{0,200}))?>")
LINK = re.compile(r"<((?:https?|mailto):[^|>]{1,2000})(?:\|([^>]{0,500}))?>")


@dataclass
class Taken:
    state: str  # committed, refused, ignored
    task_id: str | None = None
    where: Where | None = None
    fresh: bool = True  # False: a message seen before (a redelivery, a second event)
    title: str | None = None  # a new DM conversation's title: its first words


class Intake:
    def __init__(self, cfg: SlackConfig, repo_id: str, channel: str, home: Path,
                 incoming: Stage, attachments: Path, staging: Path,
                 conversations: Conversations, authorizer: Authorizer,
                 call: Callable[..., dict], bot_user: str):
        self.cfg = cfg
        self.repo_id = repo_id
        self.channel = channel
        self.incoming = incoming
        self.attachments = attachments
        self.staging = staging
        self.conversations = conversations
        self.authorizer = authorizer
        self.call = call
        self.bot_user = bot_user
        self.seen = home / "seen"
        self.threads = home / "threads"
        for d in (self.seen, self.threads, staging, attachments):
            d.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._names: dict[str, str] = {}  # user id -> display name, for mentions

    # -- one message ----------------------------------------------------------------

    def take(self, msg: Message) -> Taken:
        """What became of the message; raises when it should be tried again (the
        envelope is then not acked)."""
        with self._lock(f"{msg.channel}:{msg.thread}"):
            marker = self.marker(msg.key)
            if marker is not None and marker.get("state") == PENDING:
                logger.warning("message %s: finishing the intake of task %s after a crash",
                               msg.key, marker.get("task_id"))
                self.finish(msg.key, marker)
                return Taken(COMMITTED, marker["task_id"], Where.loads(marker["reply_to"]))
            if marker is not None:
                return Taken(str(marker.get("state")), fresh=False)
            return self._decide(msg)

    def _decide(self, msg: Message) -> Taken:
        if not msg.dm and self.cfg.allowed_channels and \
                msg.channel not in self.cfg.allowed_channels:
            logger.info("message %s: channel %s is not in allowed_channels", msg.key,
                        msg.channel)
            return Taken(IGNORED)
        mentioned = msg.kind == "app_mention" or events.mentions(msg.text, self.bot_user)
        known = self.thread(msg.channel, msg.thread)
        if not (msg.dm or mentioned or known):
            return Taken(IGNORED)  # channel chatter the app was not asked into
        if msg.user == self.bot_user:
            return Taken(IGNORED)
        verdict = self.authorizer.check(msg.user, msg.team)
        if not verdict.admitted:
            logger.warning("refused message %s from %s: %s", msg.key, msg.user, verdict.reason)
            self.write_marker(msg.key, {"state": REFUSED, "reason": verdict.reason})
            return Taken(REFUSED)
        conversation = known.get("conversation_id") if known else None
        if isinstance(conversation, str) and not self.conversations.known(conversation):
            owner = self.conversations.owner(conversation)
            if owner is None:
                logger.info("thread %s:%s: its conversation %s is gone (expired); a new "
                            "one starts", msg.channel, msg.thread, conversation)
            else:
                logger.warning("thread %s:%s names conversation %s of repository %s, not "
                               "of %s: a new conversation starts", msg.channel, msg.thread,
                               conversation, owner, self.repo_id)
            conversation = None
        elif not isinstance(conversation, str):
            conversation = None
        new = conversation is None
        if new:
            conversation = self.conversations.reserve_new()
        task_id = new_name()
        history = [] if known or msg.thread == msg.ts else self.history(msg)
        self._stage(task_id, msg, verdict.name, conversation, history)
        where = Where(msg.channel, msg.thread, msg.ts, msg.user, msg.dm)
        marker = {"state": PENDING, "task_id": task_id, "conversation_id": conversation,
                  "new": new, "reply_to": where.dumps()}
        self.write_marker(msg.key, marker)
        self.finish(msg.key, marker)
        log.for_task(logger, task_id, conversation, self.repo_id).info(
            "task from %s (%s) in %s", verdict.name, msg.user, msg.key)
        title = None
        if new and msg.dm:
            first = " ".join(self.readable(msg.text).split())
            title = (first[:TITLE_MAX - 1] + "…" if len(first) > TITLE_MAX else first) or None
        return Taken(COMMITTED, task_id, where, title=title)

    def finish(self, key: str, marker: dict) -> None:
        """From a pending marker on: publish the staged record (unless a crash came
        after), remember the thread, mark the message committed."""
        task_id = marker["task_id"]
        staged = self.staging / f"{task_id}.json"
        if staged.exists():
            os.rename(staged, self.incoming.file(task_id))
            fsync_dir(self.incoming.path)
        where = Where.loads(marker["reply_to"])
        self.remember_thread(where.channel, where.thread_ts, marker["conversation_id"])
        self.write_marker(key, {**marker, "state": COMMITTED})

    # -- the record -----------------------------------------------------------------

    def _stage(self, task_id: str, msg: Message, name: str, conversation: str,
               history: list[dict]) -> None:
        files = [*[f for h in history for f in events.files_of(h.get("files"))], *msg.files]
        saved, notes = self._save_files(task_id, files) if files else (None, [])
        text = self.readable(msg.text)
        if history:
            text = self.preamble(history) + "\n\n" + text
        if notes:
            text += "\n\n" + "\n".join(f"[airut: {n}]" for n in notes)
        where = Where(msg.channel, msg.thread, msg.ts, msg.user, msg.dm)
        task = TaskRecord(repo=self.repo_id, channel=self.channel, reply_to=where.dumps(),
                          sender=f"{name} ({msg.user})" if name != msg.user else msg.user,
                          text=text, conversation_id=conversation,
                          attachments_dir=str(saved) if saved else None, task_id=task_id)
        write_atomic(self.staging / f"{task_id}.json", dump(task.to_dict()), mode=0o640)

    def _save_files(self, task_id: str, items: list[events.File]) -> tuple[Path | None,
                                                                           list[str]]:
        """Downloaded whole, fsynced, then renamed into attachments/<task>; what could
        not be fetched is said in the task's text."""
        final = self.attachments / task_id
        tmp = self.attachments / f".{task_id}.new"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o750)
        taken: set[str] = set()
        notes = []
        for item in items:
            name = files_mod.safe_name(item.name, taken)
            if item.size is not None and item.size > self.cfg.max_file_bytes:
                notes.append(f"the file {name} ({item.size} bytes) is over the limit of "
                             f"{self.cfg.max_file_bytes} bytes and was not fetched")
                continue
            try:
                api.download(self.cfg, item.url, tmp / name, self.cfg.max_file_bytes)
            except api.FileRefused as e:
                logger.warning("file %s (%s) not fetched: %s", item.id, name, e)
                notes.append(f"the file {name} was not fetched: {e}")
                continue
            taken.add(name)
        if not taken:
            shutil.rmtree(tmp, ignore_errors=True)
            return None, notes
        fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(self.attachments)
        return final, notes

    def history(self, msg: Message) -> list[dict]:
        """The thread's messages before this one (a first mention mid-thread)."""
        if not self.cfg.history_max:
            return []
        data = self.call("conversations.replies", channel=msg.channel, ts=msg.thread,
                         limit=min(self.cfg.history_max + 1, 1000))
        found = [m for m in data.get("messages") or [] if isinstance(m, dict)
                 and isinstance(m.get("ts"), str) and m["ts"] != msg.ts
                 and _ts_before(m["ts"], msg.ts) and m.get("user") != self.bot_user]
        return found[-self.cfg.history_max:]

    def preamble(self, history: list[dict]) -> str:
        lines = ["[Earlier messages in this Slack thread, oldest first:]"]
        for m in history:
            who = m.get("user") if isinstance(m.get("user"), str) else "a bot"
            text = m.get("text") if isinstance(m.get("text"), str) else ""
            lines.append(f"{self.name_of(who) if who != 'a bot' else who}: "
                         f"{self.readable(text[:events.TEXT_MAX])}")
        lines.append("[The request:]")
        return "\n".join(lines)

    def readable(self, text: str) -> str:
        """Slack's markup as people read it: <@U1> as @name, <#C1|general> as #general,
        links as their text and address; the app's own mention dropped."""
        text = text.replace(f"<@{self.bot_user}>", "").strip()

        def mention(m: re.Match) -> str:
            sigil, ident, label = m.groups()
            if sigil == "@":
                return f"@{label or self.name_of(ident)}"
            if sigil == "#":
                return f"#{label or ident}"
            if ident.startswith("subteam^"):
                return label or "@group"
            return f"@{label or ident}"  # <!here>, <!channel>

        text = LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) else m.group(1),
                        text)
        text = MENTION.sub(mention, text)
        return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")

    def name_of(self, user: str) -> str:
        if user not in self._names:
            found = self.authorizer.user(user)
            self._names[user] = (display_name(found) if isinstance(found, dict) else "") or user
        return self._names[user]

    # -- markers and the thread map -------------------------------------------------

    def marker(self, key: str) -> dict | None:
        return _read_json(self.seen / f"{digest(key)}.json")

    def write_marker(self, key: str, marker: dict) -> None:
        write_atomic(self.seen / f"{digest(key)}.json",
                     json.dumps({**marker, "key": key, "time": utc_now()}).encode(), mode=0o640)

    def thread(self, channel: str, thread_ts: str) -> dict | None:
        return _read_json(self.threads / f"{digest(f'{channel}:{thread_ts}')}.json")

    def remember_thread(self, channel: str, thread_ts: str, conversation: str) -> None:
        remember_thread(self.threads, channel, thread_ts, conversation)

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            if len(self._locks) > 10_000:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            return self._locks.setdefault(key, threading.Lock())


def remember_thread(threads: Path, channel: str, thread_ts: str, conversation: str) -> None:
    """The thread's conversation, one file per thread (written by intake, and by the
    outbox for a scheduled task's new message)."""
    path = threads / f"{digest(f'{channel}:{thread_ts}')}.json"
    current = _read_json(path)
    if current and current.get("conversation_id") == conversation:
        os.utime(path)  # in use: the janitor removes entries by age
        return
    write_atomic(path, json.dumps({"channel": channel, "thread_ts": thread_ts,
                                   "conversation_id": conversation,
                                   "time": utc_now()}).encode(), mode=0o640)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def _read_json(path: Path) -> dict | None:
    try:
        return load(path.read_bytes(), str(path))
    except FileNotFoundError:
        return None
    except RecordError as e:
        logger.error("unreadable state file (%s): ignored", e)
        return None


def _ts_before(a: str, b: str) -> bool:
    try:
        return float(a) < float(b)
    except ValueError:
        return False
