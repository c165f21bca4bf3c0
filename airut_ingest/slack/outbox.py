"""Replies into Slack threads, each exactly once, retried until Slack takes them.

A reply record from outgoing/slack-<repo>/ becomes a delivery in
deferred/slack-<repo>/ (its files move along, in <name>.files/): the text rendered to
mrkdwn and cut into messages, the files to upload, the messages whose reactions end
the task. Each step done is written into the delivery before the next, so a crash or
an outage repeats nothing that Slack took: at most the one message in flight. A step
that fails (an API error, a 429 with its Retry-After, a dead connection) makes the
whole delivery wait, doubling from retry_delay (Channel.defer); after retry_limit
attempts it is quarantined in failed/slack-<repo>/ with its reasons, never dropped.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from airut_core.guard import Permanent
from airut_core.records import ReplyRecord
from airut_core.spool import RecordError, Stage, utc_now
from airut_ingest import files as files_mod
from airut_ingest.slack import api, mrkdwn
from airut_ingest.slack.address import Where
from airut_ingest.slack.intake import remember_thread

logger = logging.getLogger("airut.slack")
DONE, FAILED = "white_check_mark", "x"
WORKING = "eyes"
UPLOAD_MAX = 1 << 30  # Slack's own limit per file


class Outbox:
    """The Slack side of a delivery; the channel's loop (airut_ingest.channel) retries,
    backs off and quarantines."""

    def __init__(self, web: WebClient, channel: str, outgoing: Stage, deferred: Stage,
                 threads: Path):
        self.web = web
        self.channel = channel
        self.outgoing = outgoing
        self.deferred = deferred
        self.threads = threads

    def compose(self, name: str) -> None:
        """outgoing/NAME -> deferred/NAME, with what it takes to send it."""
        try:
            reply = ReplyRecord.from_dict(self.outgoing.read(name), f"{self.channel}/{name}")
            delivery = None if self.deferred.exists(name) else \
                delivery_of(name, reply, self.outgoing.path)
        except FileNotFoundError:
            return
        except (RecordError, ValueError) as e:  # nothing to send, or nowhere to send it
            raise Permanent(str(e)) from e
        if delivery is not None:
            self.deferred.put(name, delivery)
        files = self.outgoing.path / f"{name}.files"
        if files.exists():
            target = self.deferred.path / f"{name}.files"
            shutil.rmtree(target, ignore_errors=True)
            files.rename(target)
        self.outgoing.remove(name)

    def steps(self, name: str, d: dict) -> None:
        """The rest of a delivery, each step written into it before the next."""
        where = d["where"]
        if not where["thread_ts"]:  # a scheduled task's answer: a new message, a new thread
            answer = self.web.chat_postMessage(channel=where["channel"], text=d["chunks"][0],
                                               unfurl_links=False, unfurl_media=False)
            where["thread_ts"] = str(answer["ts"])
            if d.get("conversation"):
                remember_thread(self.threads, where["channel"], where["thread_ts"],
                                d["conversation"])
            d["posted"] = 1
            self.deferred.put(name, d)
        while d["posted"] < len(d["chunks"]):
            self.web.chat_postMessage(channel=where["channel"], thread_ts=where["thread_ts"],
                                      text=d["chunks"][d["posted"]], unfurl_links=False,
                                      unfurl_media=False)
            d["posted"] += 1
            self.deferred.put(name, d)
        if d.get("as_file") and not d.get("as_file_done"):
            self.web.files_upload_v2(channel=where["channel"], thread_ts=where["thread_ts"],
                                     content=d["as_file"], filename="response.md",
                                     title="response.md")
            d["as_file_done"] = True
            self.deferred.put(name, d)
        for entry in d["files"]:
            if entry.get("done"):
                continue
            entry["note"] = self._upload(name, where, entry["name"])
            entry["done"] = True
            self.deferred.put(name, d)
        notes = [e["note"] for e in d["files"] if e.get("note")]
        if notes and not d.get("notes_posted"):
            self.web.chat_postMessage(channel=where["channel"], thread_ts=where["thread_ts"],
                                      text="\n".join(mrkdwn.escape(n) for n in notes))
            d["notes_posted"] = True
            self.deferred.put(name, d)
        if not d.get("reacted"):
            self._react(d)
            d["reacted"] = True

    def _upload(self, name: str, where: dict, file_name: str) -> str | None:
        """One outbox file; what went wrong, said in the thread, if it cannot go."""
        folder = self.deferred.path / f"{name}.files"
        shown = files_mod.safe_name(file_name, set())
        try:
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                data = files_mod.read_plain_file(file_name, dir_fd)
            finally:
                os.close(dir_fd)
        except (OSError, ValueError) as e:
            return f"The file {shown} could not be sent: {getattr(e, 'strerror', None) or e}"
        if len(data) > UPLOAD_MAX:
            return f"The file {shown} could not be sent: it is over 1 GiB"
        try:
            self.web.files_upload_v2(channel=where["channel"], thread_ts=where["thread_ts"],
                                     content=data, filename=shown, title=shown)
        except SlackApiError as e:
            if transient(e):
                raise
            return f"The file {shown} could not be sent: {api.describe(e)}"
        return None

    def _react(self, d: dict) -> None:
        """👀 off, ✅ or ❌ on, on every message the reply answers. Not worth a retry:
        the reply is in the thread."""
        final = DONE if d["outcome"] == "success" else FAILED
        for where in d["reacting"]:
            if not where["ts"]:  # no message of anyone's: a scheduled task
                continue
            for method, emoji in (("reactions.remove", WORKING), ("reactions.add", final)):
                try:
                    self.web.api_call(method, json={"channel": where["channel"],
                                                    "timestamp": where["ts"], "name": emoji})
                except Exception as e:
                    if api.error_code(e) not in ("no_reaction", "already_reacted"):
                        logger.warning("%s %s on %s: %s", method, emoji, where["ts"],
                                       api.describe(e))

def transient(error: Exception) -> bool:
    if isinstance(error, SlackApiError) and error.response is not None:
        return error.response.status_code == 429 or error.response.status_code >= 500
    return True


def delivery_of(name: str, reply: ReplyRecord, outgoing: Path) -> dict:
    where = Where.loads(reply.reply_to)  # ValueError: nowhere to send it
    reacting = [where]
    for other in reply.merged_reply_to:
        try:
            reacting.append(Where.loads(other))
        except ValueError:
            logger.warning("reply %s: a merged task has no Slack address", name)
    text = mrkdwn.render(reply.text) or "(no text)"
    chunks = mrkdwn.split(text)
    as_file = None
    if len(chunks) > mrkdwn.CHUNKS_MAX:
        as_file = reply.text
        chunks = [chunks[0][:3000].rstrip() + "\n\n… _the whole reply is in "
                  "response.md below._"]
    files = []
    if reply.attachments:
        if os.path.normpath(reply.attachments_dir or "") == str(outgoing / f"{name}.files"):
            files = [{"name": n} for n in reply.attachments]
        else:
            chunks.append(f"{len(reply.attachments)} file(s) were not sent: they are not "
                          "where this channel reads reply files")
    return {"where": where.__dict__, "reacting": [w.__dict__ for w in reacting],
            "tasks": [reply.task_id, *reply.merged_task_ids], "outcome": reply.outcome,
            "conversation": reply.conversation_id,
            "chunks": chunks, "posted": 0, "as_file": as_file, "files": files,
            "attempts": 0, "next_attempt": 0, "created": utc_now()}
