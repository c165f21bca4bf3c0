"""The Slack channel in-process: the real slack-sdk (Socket Mode and Web API) against
the local fake Slack (tests/slackfake.py), with a spool and state of its own. The
runner is not here: tests write the reply records it would write. (The lab's system
tests run the daemon under systemd with the real runner.)"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from airut_core import config as config_mod
from airut_core.records import ReplyRecord, TaskRecord
from airut_core.spool import Stage
from airut_ingest.slack.address import Where
from airut_ingest.slack.daemon import SlackChannel
from airut_ingest.slack.intake import PENDING
from tests.slackfake import APP_TOKEN, BOT_TOKEN, BOT_USER, FakeSlack

ALICE, BOB, GUEST, MALLORY = "U0ALICE", "U0BOB", "U0GUEST", "U0MALLORY"


def wait_for(predicate, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def fake():
    fake = FakeSlack(ack_timeout=0.8)
    fake.add_user(ALICE, "Alice")
    fake.add_user(BOB, "Bob")
    fake.add_user(GUEST, "Gus", is_restricted=True)
    yield fake
    fake.close()


class Harness:
    def __init__(self, root: Path, fake: FakeSlack, **slack: object):
        self.root = root
        self.fake = fake
        data = {"paths": {"spool": str(root / "spool"), "state": str(root / "state")},
                "repos": {"demo": {"repo_url": "/srv/git/demo.git", "slack": {
                    "bot_token": BOT_TOKEN, "app_token": APP_TOKEN,
                    "authorized": [{"workspace_members": True}], "api_url": fake.api_url,
                    "file_hosts": [fake.host], "retry_delay": 0.2, **slack}}}}
        self.cfg = config_mod.parse(json.dumps(data), "test.yaml")
        self.incoming = Stage(root / "spool" / "incoming")
        self.outgoing = Stage(root / "spool" / "outgoing" / "slack-demo")
        self.channel: SlackChannel | None = None

    def start(self) -> SlackChannel:
        self.channel = SlackChannel(self.cfg, "demo")
        self.channel.start()
        wait_for(lambda: self.channel.status == "connected", what="connected")
        return self.channel

    def stop(self) -> None:
        """The daemon stops; its websocket is closed aside (slack-sdk takes seconds)."""
        if self.channel:
            self.channel.stopping.set()
            if self.channel.socket:
                threading.Thread(target=self.channel.socket.close, daemon=True).start()

    def tasks(self) -> list[TaskRecord]:
        return [TaskRecord.from_dict(self.incoming.read(n)) for n in self.incoming.names()]

    def reply(self, task: TaskRecord, text: str, outcome: str = "success",
              files: dict[str, bytes] | None = None, merged: list[TaskRecord] = (),
              links: dict[str, str] | None = None) -> str:
        name = f"{task.task_id}"
        attachments_dir = None
        if files:
            folder = self.outgoing.path / f"{name}.files"
            folder.mkdir(parents=True)
            for fname, data in files.items():
                (folder / fname).write_bytes(data)
            for fname, target in (links or {}).items():
                os.symlink(target, folder / fname)
            attachments_dir = str(folder)
        record = ReplyRecord(task_id=task.task_id, conversation_id=task.conversation_id,
                             repo="demo", channel="slack-demo", reply_to=task.reply_to,
                             text=text, outcome=outcome,
                             merged_task_ids=[m.task_id for m in merged],
                             merged_reply_to=[m.reply_to for m in merged],
                             attachments=[*(files or {}), *(links or {})],
                             attachments_dir=attachments_dir)
        self.outgoing.put(name, record.to_dict())
        return name


@pytest.fixture
def lab(tmp_path, fake):
    harness = Harness(tmp_path, fake)
    yield harness
    harness.stop()


def start(lab: Harness, **slack: object) -> Harness:
    if slack:
        lab.__init__(lab.root, lab.fake, **slack)
    lab.start()
    return lab


def test_a_dm_becomes_one_task_and_the_reply_lands_in_its_thread(lab, fake):
    start(lab)
    event = fake.message("D0ALICE", ALICE, "Please *fix* the <https://ci.example/1|build>")
    pending = fake.push(event)
    [task] = lab.tasks()  # in incoming/ by the time the envelope was acknowledged
    assert pending.attempts == 1
    where = Where.loads(task.reply_to)
    assert (where.channel, where.thread_ts, where.ts, where.dm) == ("D0ALICE", event["ts"],
                                                                    event["ts"], True)
    assert task.sender == f"Alice ({ALICE})" and task.channel == "slack-demo"
    assert task.text == "Please *fix* the build (https://ci.example/1)"
    assert task.conversation_id  # reserved at intake, so a follow-up finds it
    wait_for(lambda: "eyes" in fake.reactions.get(("D0ALICE", event["ts"]), ()), what="👀")
    wait_for(lambda: fake.calls_of("assistant.threads.setStatus"), what="DM status")
    [title] = wait_for(lambda: fake.calls_of("assistant.threads.setTitle"), what="the title")
    assert title.args["title"] == "Please *fix* the build (https://ci.example/1)"

    lab.reply(task, "## Done\n\nFixed **two** things:\n\n- a <b>tag</b> & more\n- `x<y`")
    [answer] = wait_for(lambda: fake.bot_messages("D0ALICE", event["ts"]), what="reply")
    assert answer["text"] == ("*Done*\n\nFixed *two* things:\n\n"
                              "• a &lt;b&gt;tag&lt;/b&gt; &amp; more\n• `x&lt;y`")
    wait_for(lambda: fake.reactions[("D0ALICE", event["ts"])] == {"white_check_mark"},
             what="✅ replacing 👀")
    wait_for(lambda: not lab.channel.deferred.names(), what="delivery done")


def two_in_a_dm_thread(lab: Harness, fake: FakeSlack, texts: tuple[str, str]
                       ) -> tuple[dict, dict, TaskRecord, TaskRecord]:
    """A DM and a follow-up in its thread, each made a task: (events, tasks)."""
    first = fake.message("D0ALICE", ALICE, texts[0])
    fake.push(first)
    second = fake.message("D0ALICE", ALICE, texts[1], thread_ts=first["ts"])
    fake.push(second)
    one, two = lab.tasks()
    return first, second, one, two


def test_a_follow_up_in_the_thread_continues_the_conversation(lab, fake):
    start(lab)
    first, _, one, two = two_in_a_dm_thread(lab, fake, ("first", "second"))
    assert two.conversation_id == one.conversation_id
    assert Where.loads(two.reply_to).thread_ts == first["ts"]
    time.sleep(0.3)
    titles = [c.args["title"] for c in fake.calls_of("assistant.threads.setTitle")]
    assert titles == ["first"]  # the follow-up does not rename the conversation


def test_a_channel_mention_engages_and_the_thread_stays_engaged(lab, fake):
    start(lab)
    chatter = fake.message("C0GENERAL", ALICE, "lunch?")
    fake.push(chatter)
    assert lab.tasks() == []  # the app was not asked
    mention = fake.message("C0GENERAL", ALICE, f"<@{BOT_USER}> look at <#C0OPS|ops>",
                           kind="app_mention")
    fake.push(mention)
    # The same message arrives as `message` too: one task.
    fake.push({**mention, "type": "message"})
    [task] = lab.tasks()
    assert task.text == "look at #ops"
    later = fake.message("C0GENERAL", BOB, "and the tests too", thread_ts=mention["ts"])
    fake.push(later)
    first, second = lab.tasks()
    assert second.conversation_id == first.conversation_id and second.sender.startswith("Bob")


def test_a_mention_mid_thread_brings_the_earlier_messages_and_files(lab, fake):
    start(lab)
    top = fake.message("C0GENERAL", ALICE, "the deploy fails")
    log_file = fake.file("deploy.log", b"error: disk full\n")
    fake.message("C0GENERAL", BOB, f"here is the log, <@{ALICE}>", thread_ts=top["ts"],
                 files=[log_file])
    ask = fake.message("C0GENERAL", ALICE, f"<@{BOT_USER}> can you look?",
                       thread_ts=top["ts"], kind="app_mention")
    fake.push(ask)
    [task] = lab.tasks()
    assert "Alice: the deploy fails" in task.text
    assert "Bob: here is the log, @Alice" in task.text
    assert task.text.endswith("can you look?")
    assert (Path(task.attachments_dir) / "deploy.log").read_bytes() == b"error: disk full\n"


def test_a_file_from_a_foreign_host_is_not_fetched(lab, fake):
    start(lab)
    foreign = fake.file("evil.sh", b"#!/bin/sh", host="files.evil.test")
    good = fake.file("../../notes.txt", b"notes")
    fake.push(fake.message("D0ALICE", ALICE, "see files", files=[foreign, good]))
    [task] = lab.tasks()
    assert sorted(os.listdir(task.attachments_dir)) == ["notes.txt"]
    assert "evil.sh was not fetched: not one of Slack's file hosts" in task.text
    fetched = [c for c in fake.calls if "evil" in json.dumps(c.args)]
    assert fetched == []


@pytest.mark.parametrize("rules,admitted,refused", [
    ([{"workspace_members": True}], [ALICE], [GUEST, MALLORY]),
    ([{"user_group": "devs"}], [BOB], [ALICE, GUEST]),
    ([{"user_id": GUEST}], [GUEST], [ALICE]),
    ([{"user_id": ALICE}, {"user_group": "devs"}], [ALICE, BOB], [GUEST]),
])
def test_each_rule_admits_and_refuses_the_right_users(lab, fake, rules, admitted, refused):
    fake.add_group("devs", [BOB])
    fake.add_user(MALLORY, "Mallory", team="T0OTHER")
    start(lab, authorized=rules)
    for user in [*admitted, *refused]:
        fake.push(fake.message(f"D{user[1:]}", user, f"task from {user}"))
    assert sorted(t.text.split()[-1] for t in lab.tasks()) == sorted(admitted)


def test_bots_deactivated_users_other_teams_and_failed_lookups_are_refused(lab, fake):
    fake.add_user("U0ROBOT", "Robot", is_bot=True)
    fake.add_user("U0GONE", "Gone", deleted=True)
    fake.add_user("U0EXT", "Ext", team="T0OTHER")
    start(lab)
    fake.push(fake.message("D0ALICE", ALICE, "from a bot", bot_id="B0OTHER"))
    for user in ("U0ROBOT", "U0GONE", "U0EXT", "U0NOBODY"):
        fake.push(fake.message(f"D{user[1:]}", user, "hi"))
    fake.push(fake.message("D0ALICE", ALICE, "foreign team event", team="T0OTHER"))
    fake.fail("users.info", status=500, error="internal_error", times=1, retry_after=None)
    fake.push(fake.message("D0BOB", BOB, "lookup fails"))
    assert lab.tasks() == []
    # A failed lookup is kept only for seconds (FAILED_TTL), a good one for cache_ttl.
    lab.channel.intake.authorizer.clock = lambda: time.monotonic() + 60
    fake.push(fake.message("D0BOB", BOB, "lookup works"))
    assert [t.text for t in lab.tasks()] == ["lookup works"]


def test_allowed_channels_limit_channels_but_not_dms(lab, fake):
    start(lab, allowed_channels=["C0ALLOWED"])
    fake.push(fake.message("C0OTHER", ALICE, f"<@{BOT_USER}> here?", kind="app_mention"))
    fake.push(fake.message("C0ALLOWED", ALICE, f"<@{BOT_USER}> there", kind="app_mention"))
    fake.push(fake.message("D0ALICE", ALICE, "dm"))
    assert sorted(t.text for t in lab.tasks()) == ["dm", "there"]


def test_an_envelope_redelivered_three_times_makes_one_task(lab, fake):
    start(lab)
    fake.lose_acks = 3
    pending = fake.push(fake.message("D0ALICE", ALICE, "once"), timeout=30)
    assert pending.attempts == 4 and pending.lost_acks == 3
    assert [t.text for t in lab.tasks()] == ["once"]


def test_no_ack_while_the_record_cannot_be_written_and_one_task_after(lab, fake):
    start(lab)
    staging, away = lab.channel.staging, lab.channel.staging.with_name("intake.away")
    os.rename(staging, away)
    staging.write_text("")  # a file where the record is staged: writing it fails (as root too)
    pending = fake.push(fake.message("D0ALICE", ALICE, "keep me"), wait=False)
    wait_for(lambda: pending.attempts >= 2, what="a redelivery")
    assert pending.acked_at is None and lab.tasks() == []
    staging.unlink()
    os.rename(away, staging)
    fake.wait_ack(pending)
    assert [t.text for t in lab.tasks()] == ["keep me"]


def test_a_crash_between_commit_and_ack_makes_exactly_one_task(lab, fake):
    """The daemon died after the pending marker and the staged record: the redelivery
    to the restarted daemon finishes that task, and makes no other."""
    fake.max_redeliveries = 30  # Slack's three would be over before the restart here
    channel = lab.start()
    event = fake.message("D0ALICE", ALICE, "survive")
    channel.intake.finish = lambda key, marker: (_ for _ in ()).throw(SystemExit("killed"))
    channel.receive_guard.limit = 99  # not set aside while "dying"
    pending = fake.push(event, wait=False)
    key = f"D0ALICE:{event['ts']}"
    wait_for(lambda: channel.intake.marker(key), what="the pending marker")
    assert channel.intake.marker(key)["state"] == PENDING
    lab.stop()
    assert lab.tasks() == [] and pending.acked_at is None
    lab.start()  # a new daemon, the same state
    fake.wait_ack(pending)
    [task] = lab.tasks()
    assert task.text == "survive"


def test_a_dropped_websocket_reconnects_and_an_event_meanwhile_arrives_once(lab, fake):
    start(lab)
    before = fake.connections
    fake.request_reconnect()
    wait_for(lambda: fake.connections > before, what="reconnect on request")
    fake.drop()
    pending = fake.push(fake.message("D0ALICE", ALICE, "while away"), wait=False)
    fake.wait_ack(pending, timeout=40)
    assert [t.text for t in lab.tasks()] == ["while away"]
    assert fake.connections >= before + 2


def test_a_long_reply_is_split_and_a_very_long_one_is_a_file(lab, fake):
    start(lab)
    fake.push(fake.message("D0ALICE", ALICE, "long"))
    fake.push(fake.message("D0BOB", BOB, "longer"))
    one, two = lab.tasks()
    paragraphs = "\n\n".join(f"paragraph {i} " + "x" * 990 for i in range(50))
    assert len(paragraphs) > 50_000
    lab.reply(one, paragraphs)
    thread = Where.loads(one.reply_to).thread_ts
    parts = wait_for(lambda: len(fake.bot_messages("D0ALICE", thread)) == 2
                     and fake.bot_messages("D0ALICE", thread), what="two parts")
    assert all(len(p["text"]) <= 40_000 for p in parts)
    assert "".join(p["text"] for p in parts).count("paragraph") == 50
    huge = "\n\n".join(f"paragraph {i} " + "y" * 990 for i in range(300))
    lab.reply(two, huge)
    thread = Where.loads(two.reply_to).thread_ts
    wait_for(lambda: any(m.get("files") for m in fake.bot_messages("D0BOB", thread)),
             what="response.md")
    [upload] = [u for u in fake.uploads.values() if u["filename"] == "response.md"]
    assert upload["data"].decode() == huge


def test_reply_files_are_uploaded_and_a_failed_one_is_said(lab, fake):
    start(lab)
    fake.push(fake.message("D0ALICE", ALICE, "files please"))
    [task] = lab.tasks()
    lab.reply(task, "here", files={"report.csv": b"a,b\n1,2\n"}, links={"secret": "/etc/shadow"})
    thread = Where.loads(task.reply_to).thread_ts
    wait_for(lambda: not lab.channel.deferred.names() and not lab.outgoing.names(),
             what="delivered")
    [upload] = [u for u in fake.uploads.values() if u["filename"] == "report.csv"]
    assert upload["data"] == b"a,b\n1,2\n"
    texts = [m["text"] for m in fake.bot_messages("D0ALICE", thread)]
    assert any("The file secret could not be sent" in t for t in texts)


@pytest.mark.parametrize("status,error", [(429, "ratelimited"), (500, "internal_error")])
def test_a_reply_due_during_an_outage_is_delivered_once_it_recovers(lab, fake, status, error):
    start(lab)
    fake.push(fake.message("D0ALICE", ALICE, "during an outage"))
    [task] = lab.tasks()
    fake.fail("chat.postMessage", status=status, error=error, times=3, retry_after=1)
    lab.reply(task, "made it")
    thread = Where.loads(task.reply_to).thread_ts
    [answer] = wait_for(lambda: fake.bot_messages("D0ALICE", thread), timeout=30,
                        what="the reply after the outage")
    assert answer["text"] == "made it"
    assert len(fake.calls_of("chat.postMessage")) == 4
    time.sleep(0.5)
    assert len(fake.bot_messages("D0ALICE", thread)) == 1


def test_a_reply_that_never_gets_through_is_quarantined_with_its_reasons(lab, fake):
    start(lab, retry_limit=2)
    fake.push(fake.message("D0ALICE", ALICE, "doomed"))
    [task] = lab.tasks()
    fake.fail("chat.postMessage", status=200, error="channel_not_found", times=5,
              retry_after=None)
    name = lab.reply(task, "never")
    failed = Stage(lab.root / "spool" / "failed" / "slack-demo")
    wait_for(lambda: failed.exists(name), timeout=30, what="quarantine")
    record = failed.read(name)
    assert [f["reason"] for f in record["failures"]] == ["Slack answered channel_not_found"] * 2


def test_merged_messages_all_get_the_final_reaction(lab, fake):
    start(lab)
    first, second, one, two = two_in_a_dm_thread(lab, fake, ("one", "two"))
    lab.reply(one, "both failed", outcome="failed", merged=[two])
    for ts in (first["ts"], second["ts"]):
        wait_for(lambda ts=ts: fake.reactions.get(("D0ALICE", ts)) == {"x"}, what="❌")


def test_the_plan_is_posted_once_and_updated_in_place(lab, fake, tmp_path):
    channel = start(lab).channel
    fake.push(fake.message("D0ALICE", ALICE, "plan it"))
    [task] = lab.tasks()
    cdir = tmp_path / "state" / "conversations" / task.conversation_id
    cdir.mkdir(parents=True)
    events = cdir / "events.jsonl"
    events.write_text("")
    active = Stage(tmp_path / "spool" / "active").ensure()
    record = task.to_dict()
    record["state"] = {"unit": "airut-task-x.service", "events_offset": 0}
    active.put(task.task_id, record)

    def todo_write(*todos: tuple[str, str]) -> str:
        return json.dumps({"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": "t", "name": "TodoWrite", "input": {"todos": [
                {"content": c, "status": s} for c, s in todos]}}]}}) + "\n"

    with events.open("a") as f:
        f.write(todo_write(("read <the> code", "in_progress"), ("fix it", "pending")))
    thread = Where.loads(task.reply_to).thread_ts
    [plan] = wait_for(lambda: fake.bot_messages("D0ALICE", thread), what="plan")
    assert plan["text"] == "*Plan*\n🔄 read &lt;the&gt; code\n⚪ fix it"
    with events.open("a") as f:
        f.write(todo_write(("read <the> code", "completed"), ("fix it", "in_progress")))
    wait_for(lambda: plan.get("edits"), what="the plan updated")
    assert plan["text"] == "*Plan*\n✅ read &lt;the&gt; code\n🔄 fix it"
    assert len(fake.bot_messages("D0ALICE", thread)) == 1
    status = [c.args.get("status") for c in fake.calls_of("assistant.threads.setStatus")]
    assert status[0] and status[-1] == ""  # shown while preparing, cleared once running
    assert channel.progress.status_set == set()


def test_airut_check_logs_in_with_both_tokens_and_names_missing_scopes(lab, fake):
    from airut_cli import check

    slack = lab.cfg.repos["demo"].slack
    assert check._line("bot", lambda: check._slack(slack, "bot_token")).detail == (
        f"bot airut ({BOT_USER}) in airut-test, all 11 scopes")
    assert check._line("app", lambda: check._slack(slack, "app_token")).ok
    fake.scopes.remove("reactions:write")
    line = check._line("bot", lambda: check._slack(slack, "bot_token"))
    assert not line.ok and "lacks the scope(s) reactions:write" in line.detail
    slack.app_token = "xapp-wrong"
    line = check._line("app", lambda: check._slack(slack, "app_token"))
    assert not line.ok and "invalid_auth" in line.detail


def test_a_scheduled_answer_is_a_new_message_whose_thread_continues_it(lab, fake):
    start(lab)
    reply_to = json.dumps({"channel": "C0REPORTS", "thread_ts": "", "ts": "", "user": "",
                           "dm": False})
    task = TaskRecord(repo="demo", channel="slack-demo", reply_to=reply_to, sender="scheduler",
                      text="report", conversation_id="0a1b2c3d")
    lab.channel.conversations.reserved.mkdir(parents=True, exist_ok=True)
    (lab.channel.conversations.reserved / "0a1b2c3d").touch()  # the runner's, here
    lab.reply(task, "nightly: all green")
    [top] = wait_for(lambda: [m for m in fake.messages.get("C0REPORTS", [])
                              if m.get("user") == BOT_USER], what="the new message")
    assert "thread_ts" not in top and top["text"] == "nightly: all green"
    assert not fake.calls_of("reactions.add")  # nobody's message to react to
    follow = fake.message("C0REPORTS", ALICE, "why was it slow?", thread_ts=top["ts"])
    fake.push(follow)  # no mention: the thread is the scheduled task's conversation
    [task2] = lab.tasks()
    assert task2.conversation_id == "0a1b2c3d" and task2.text == "why was it slow?"
