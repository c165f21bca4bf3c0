"""What a thread shows while its task waits and runs: the 👀 reaction, the DM's
"is working" status while the task is prepared, and the agent's plan (its latest
TodoWrite) as one message, updated in place at most once a second.

Read from the runner's claimed records (active/) and the conversation's
events.jsonl, the agent's own output: hostile, read by airut_core.timeline. Nothing
here can fail a task: every Slack call is best-effort and logged.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from slack_sdk import WebClient

from airut_core import paths, schema, tasks, timeline
from airut_core.spool import RecordError, Stage, write_atomic
from airut_ingest.slack import api, mrkdwn
from airut_ingest.slack.address import Where

logger = logging.getLogger("airut.slack")
PLAN_INTERVAL = 1.0  # seconds between two updates of one plan message
STATUS = "is working on this…"
MARKS = {"completed": "✅", "in_progress": "🔄"}


class Progress:
    def __init__(self, web: WebClient, channel: str, active: Stage, state_dir: Path,
                 home: Path):
        self.web = web
        self.channel = channel
        self.active = active
        self.state_dir = Path(state_dir)
        self.plans = home / "plans"
        self.plans.mkdir(parents=True, exist_ok=True)
        self.reader = timeline.Reader()
        self.status_set: set[str] = set()  # tasks whose DM status is shown
        self._last: dict[str, float] = {}
        self._shown: dict[str, dict | None] = {}  # plan messages posted, by task

    def accepted(self, task_id: str, where: Where, title: str | None = None) -> None:
        """Right after the envelope's ack. A new DM conversation gets its title (the
        History tab's name for it) from its first message."""
        self._call("reactions.add", channel=where.channel, timestamp=where.ts,
                   name="eyes")
        if where.dm and title:
            self._call("assistant.threads.setTitle", channel_id=where.channel,
                       thread_ts=where.thread_ts, title=title)
        if where.dm:
            self._call("assistant.threads.setStatus", channel_id=where.channel,
                       thread_ts=where.thread_ts, status=STATUS)
            self.status_set.add(task_id)

    def tick(self) -> None:
        """One look at this channel's claimed tasks."""
        for name in self.active.names():
            try:
                record = self.active.read(name)
            except (OSError, RecordError):
                continue
            if record.get("channel") != self.channel:
                continue
            state = tasks.state_of(record)
            try:
                where = Where.loads(str(record.get("reply_to")))
            except ValueError:
                continue
            if tasks.phase(state) == "preparing" or not where.thread_ts:
                continue  # not running yet, or a scheduled task (no thread until it answers)
            if name in self.status_set:  # running: the composer is free again
                self.status_set.discard(name)
                self._call("assistant.threads.setStatus", channel_id=where.channel,
                           thread_ts=where.thread_ts, status="")
            try:
                self._plan(name, record, state, where)
            except Exception:  # one task's unreadable output is not the others' problem
                logger.exception("the plan of task %s cannot be shown", name)

    def _plan(self, task_id: str, record: dict, state: dict, where: Where) -> None:
        offset = schema.count(state.get("events_offset"))
        conversation = record.get("conversation_id")
        if offset is None or not isinstance(conversation, str) or \
                not paths.CONVERSATION_ID.match(conversation):
            return
        if time.monotonic() - self._last.get(task_id, 0.0) < PLAN_INTERVAL:
            return
        events = paths.conversation_dir(self.state_dir, conversation) / "events.jsonl"
        todos = self.reader.read(events, offset).todos
        if not todos:
            return
        text = render_plan(todos)
        posted = self._posted(task_id)
        if posted and posted["text"] == text:
            return
        self._last[task_id] = time.monotonic()
        if posted:
            if self._call("chat.update", channel=where.channel, ts=posted["ts"], text=text):
                self._remember(task_id, {**posted, "text": text})
            return
        answer = self._call("chat.postMessage", channel=where.channel,
                            thread_ts=where.thread_ts, text=text)
        if answer and isinstance(answer.get("ts"), str):
            self._remember(task_id, {"ts": answer["ts"], "text": text})

    def finished(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self.status_set.discard(task_id)
            self._last.pop(task_id, None)
            self._shown.pop(task_id, None)
            (self.plans / f"{task_id}.json").unlink(missing_ok=True)

    def _posted(self, task_id: str) -> dict | None:
        """The task's plan message (its ts and text): kept here, and on disk for a
        restarted daemon, which reads it once."""
        if task_id not in self._shown:
            try:
                data = json.loads((self.plans / f"{task_id}.json").read_bytes())
            except (OSError, ValueError):
                data = None
            ok = isinstance(data, dict) and isinstance(data.get("ts"), str) and \
                isinstance(data.get("text"), str)
            self._shown[task_id] = data if ok else None
        return self._shown[task_id]

    def _remember(self, task_id: str, data: dict) -> None:
        write_atomic(self.plans / f"{task_id}.json", json.dumps(data).encode(), mode=0o640)
        self._shown[task_id] = data

    def _call(self, method: str, **args: object) -> dict | None:
        try:
            return self.web.api_call(method, json=args).data  # type: ignore[return-value]
        except Exception as e:
            logger.warning("%s failed: %s", method, api.describe(e))
            return None


def render_plan(todos: list[dict[str, str]]) -> str:
    lines = ["*Plan*"]
    for todo in todos[:50]:
        mark = MARKS.get(todo.get("status", ""), "⚪")
        lines.append(f"{mark} {mrkdwn.escape(todo.get('content', ''))}")
    return "\n".join(lines)
