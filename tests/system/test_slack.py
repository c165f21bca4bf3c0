"""The Slack channel in the lab: airut-slack@chat under systemd, the real runner,
podman and Claude Code CLI against the demo model; only Slack is the local fake
(tests/slackfake.py), which runs in this process and listens on the guest's loopback.
"""

from __future__ import annotations

import json
import time

import pytest

from airut_core.records import TaskRecord
from airut_ingest.slack.intake import digest
from tests.slackfake import BOT_USER, FakeSlack
from tests.system.conftest import SLACK_PORT
from tests.system.forward import listen_in
from tests.system.lab import bash, say, wait_until

UNIT = "airut-slack@chat.service"
ALICE = "U0ALICE"


@pytest.fixture(scope="module")
def slack(lab):
    fake = FakeSlack(sock=listen_in(lab.leader, SLACK_PORT), ack_timeout=3)
    fake.add_user(ALICE, "Alice")
    # restart: airut.target (started by other tests) may run it already, backing off
    # from a Slack that was not there yet.
    lab.guest("systemctl", "restart", UNIT)
    wait_until(lambda: fake.connections, 30, "the daemon's Socket Mode connection")
    yield fake
    lab.guest("systemctl", "stop", UNIT, check=False)
    fake.close()


def reply_in(fake: FakeSlack, channel: str, thread: str, count: int = 1,
             timeout: float = 120) -> list[dict]:
    return wait_until(lambda: len(answers(fake, channel, thread)) >= count
                      and answers(fake, channel, thread), timeout, f"{count} repl(ies)")


def answers(fake: FakeSlack, channel: str, thread: str) -> list[dict]:
    """The bot's messages in the thread, uploads and the plan message left out."""
    return [m for m in fake.bot_messages(channel, thread)
            if not m["text"].startswith("*Plan*") and not m.get("files")]


def task_of(lab, ts: str) -> TaskRecord | None:
    """The task a message became, wherever the runner has it now."""
    for path in [*(lab.spool / "incoming").glob("*.json"),
                 *(lab.spool / "active").glob("*.json")]:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("channel") == "slack-chat" and ts in record.get("reply_to", ""):
            return TaskRecord.from_dict({k: v for k, v in record.items()
                                         if k not in ("state", "failures")})
    return None


def conversation_of(lab, channel: str, thread: str) -> dict:
    """The thread's conversation, by the daemon's own thread map."""
    entry = lab.state / "slack/chat/threads" / f"{digest(f'{channel}:{thread}')}.json"
    return lab.conversation(json.loads(entry.read_text())["conversation_id"])


def test_a_dm_runs_and_the_follow_up_resumes_the_session(lab, slack):
    marker = lab.scenario("slack-hello", [say("Hello from **Slack**: {prompt}")])
    first = slack.message("D0ALICE", ALICE, f"{marker} how are things?")
    slack.push(first)
    [answer] = reply_in(slack, "D0ALICE", first["ts"])
    assert answer["text"].startswith("Hello from *Slack*:") and "how are things?" in answer["text"]
    wait_until(lambda: slack.reactions.get(("D0ALICE", first["ts"])) == {"white_check_mark"},
               20, "✅")
    follow = slack.message("D0ALICE", ALICE, f"{marker} and now?", thread_ts=first["ts"])
    slack.push(follow)
    second = reply_in(slack, "D0ALICE", first["ts"], count=2)[-1]
    assert "and now?" in second["text"]
    conv = conversation_of(lab, "D0ALICE", first["ts"])
    assert [r["channel"] for r in conv["replies"]] == ["slack-chat", "slack-chat"]
    assert conv.get("session_id")  # the second run resumed the first one's session


def test_a_channel_mention_engages_and_a_plain_follow_up_continues(lab, slack):
    marker = lab.scenario("slack-channel", [say("channel answer: {prompt}")])
    top = slack.message("C0TEAM", ALICE, f"<@{BOT_USER}> {marker} first", kind="app_mention")
    slack.push(top)
    slack.push({**top, "type": "message"})  # Slack sends a mention twice
    reply_in(slack, "C0TEAM", top["ts"])
    slack.push(slack.message("C0TEAM", ALICE, f"{marker} no mention needed",
                             thread_ts=top["ts"]))
    texts = [m["text"] for m in reply_in(slack, "C0TEAM", top["ts"], count=2)]
    assert "no mention needed" in texts[1]
    time.sleep(2)
    assert len(answers(slack, "C0TEAM", top["ts"])) == 2  # one task per message


def test_reactions_and_the_dm_status_follow_the_task(lab, slack):
    """👀 while it waits and runs, the DM's "is working" status only while it is
    prepared (cleared once it runs, so the composer is free for follow-ups), ✅ at the
    end. (The plan: the last test.)"""
    marker = lab.scenario("slack-progress", [bash("sleep 4"), say("progress done")])
    msg = slack.message("D0PROG", ALICE, f"{marker} show progress")
    slack.push(msg)
    wait_until(lambda: "eyes" in slack.reactions.get(("D0PROG", msg["ts"]), ()), 10, "👀")

    def status_calls() -> list[str]:
        return [c.args.get("status") for c in slack.calls_of("assistant.threads.setStatus")
                if c.args.get("channel_id") == "D0PROG"]

    wait_until(lambda: status_calls() == ["is working on this…", ""], 60,
               "the status shown, then cleared when the task runs")
    assert answers(slack, "D0PROG", msg["ts"]) == []  # cleared before the answer
    assert slack.reactions[("D0PROG", msg["ts"])] == {"eyes"}
    [answer] = reply_in(slack, "D0PROG", msg["ts"])
    assert answer["text"].startswith("progress done")
    wait_until(lambda: slack.reactions.get(("D0PROG", msg["ts"])) == {"white_check_mark"},
               20, "✅ replacing 👀")


def test_files_travel_both_ways(lab, slack):
    marker = lab.scenario("slack-files", [
        bash("cat /inbox/notes.txt > /outbox/echo.txt && ls -A /inbox | tr '\\n' ' '"),
        say("inbox: {tool_result}")])
    notes = slack.file("notes.txt", b"from slack\n")
    foreign = slack.file("evil.txt", b"no", host="files.evil.test")
    msg = slack.message("D0FILES", ALICE, f"{marker} files", files=[notes, foreign])
    slack.push(msg)
    [answer] = reply_in(slack, "D0FILES", msg["ts"])
    assert answer["text"].split("inbox:")[1].split("\n")[0].split() == ["notes.txt"]
    wait_until(lambda: any(u["filename"] == "echo.txt" and u["data"] == b"from slack\n"
                           for u in slack.uploads.values()), 30, "the outbox file uploaded")


def test_kill_9_before_the_ack_makes_one_task_and_one_reply(lab, slack):
    """The daemon commits the task, its ack never reaches Slack, and it is killed: the
    restarted daemon gets the redelivery and acknowledges it without a second task."""
    marker = lab.scenario("slack-kill", [bash("sleep 4"), say("only once")])
    slack.max_redeliveries = 30
    slack.lose_acks = 1
    msg = slack.message("D0KILL", ALICE, f"{marker} survive a kill")
    pending = slack.push(msg, wait=False)
    wait_until(lambda: pending.lost_acks == 1, 30, "the daemon's (lost) ack")
    assert task_of(lab, msg["ts"]) is not None  # committed before it acked
    lab.guest("systemctl", "kill", "-s", "KILL", UNIT)
    slack.wait_ack(pending, timeout=60)  # the restarted daemon's
    [answer] = reply_in(slack, "D0KILL", msg["ts"])
    assert answer["text"].startswith("only once")
    time.sleep(3)
    assert len(answers(slack, "D0KILL", msg["ts"])) == 1
    restarts = lab.guest("systemctl", "show", "-p", "NRestarts", "--value", UNIT).stdout
    assert int(restarts) >= 1


def test_a_reply_due_during_a_slack_outage_arrives_after_it(lab, slack):
    marker = lab.scenario("slack-outage", [say("after the outage")])
    slack.fail("chat.postMessage", status=503, error="service_unavailable", times=3,
               retry_after=None)
    msg = slack.message("D0OUT", ALICE, f"{marker} outage")
    slack.push(msg)
    [answer] = reply_in(slack, "D0OUT", msg["ts"])
    assert answer["text"].startswith("after the outage")
    failed = [c for c in slack.calls_of("chat.postMessage")
              if c.args.get("channel") == "D0OUT"]
    assert len(failed) == 4
    journal = lab.journal("-u", UNIT)
    assert "cannot deliver reply" in journal and "service_unavailable" in journal


def test_a_mention_mid_thread_brings_the_earlier_messages(lab, slack):
    slack.add_user("U0BOB", "Bob")
    marker = lab.scenario("slack-history", [say("seen: {prompt}")])
    top = slack.message("C0HIST", ALICE, "the nightly build is red")
    slack.message("C0HIST", "U0BOB", "since <@U0ALICE>'s merge, I think",
                  thread_ts=top["ts"])
    ask = slack.message("C0HIST", ALICE, f"<@{BOT_USER}> {marker} why?",
                        thread_ts=top["ts"], kind="app_mention")
    slack.push(ask)
    [answer] = reply_in(slack, "C0HIST", top["ts"])
    assert "Alice: the nightly build is red" in answer["text"]
    assert "Bob: since @Alice's merge, I think" in answer["text"]


def test_guests_bots_and_other_workspaces_get_no_task(lab, slack):
    slack.add_user("U0GUEST", "Gus", is_restricted=True)
    slack.add_user("U0EXT", "Ext", team="T0ELSE")
    marker = lab.scenario("slack-refused", [say("should not run")])
    for user, extra in (("U0GUEST", {}), ("U0EXT", {}), (ALICE, {"bot_id": "B0OTHER"})):
        slack.push(slack.message(f"D0R{user[2:]}", user, f"{marker} let me in", **extra))
    journal = wait_until(lambda: (j := lab.journal("-u", UNIT)).count("refused message") >= 2
                         and j, 20, "the refusals in the journal")
    assert "user U0GUEST matches no rule" in journal
    assert "user U0EXT is of another workspace (T0ELSE)" in journal
    time.sleep(3)
    assert not any(slack.bot_messages(f"D0R{u[2:]}", m["ts"])
                   for u in ("U0GUEST", "U0EXT", ALICE)
                   for m in slack.messages.get(f"D0R{u[2:]}", []))
    assert not [r for r in lab.model_requests() if "let me in" in json.dumps(r)]


def test_a_50000_character_answer_arrives_whole_in_parts(lab, slack):
    paragraphs = "\n\n".join(f"part {i:03d} " + "z" * 990 for i in range(50))
    marker = lab.scenario("slack-long", [say(paragraphs)])
    msg = slack.message("D0LONG", ALICE, f"{marker} write a lot")
    slack.push(msg)
    parts = reply_in(slack, "D0LONG", msg["ts"], count=2)
    assert all(len(p["text"]) <= 40_000 for p in parts)
    text = "".join(p["text"] for p in parts)
    assert [f"part {i:03d}" in text for i in range(50)] == [True] * 50


def test_the_plan_is_read_as_the_daemon_s_user_and_updated_in_place(lab, slack):
    """The pinned Claude Code emits no TodoWrite in print mode, so this test adds the
    events to the running task's output itself: what it shows is that airut-slack, as
    its own user, reads the runner's claimed record and the conversation's output
    through the permissions the package sets, and keeps one message up to date."""
    marker = lab.scenario("slack-plan", [bash("sleep 10"), say("planned")])
    msg = slack.message("D0PLAN", ALICE, f"{marker} plan")
    slack.push(msg)

    def running() -> dict | None:
        for path in (lab.spool / "active").glob("*.json"):
            record = json.loads(path.read_text())
            if msg["ts"] in record.get("reply_to", "") and record.get("state", {}).get("unit"):
                return record
        return None

    record = wait_until(running, 60, "the task running")
    events = lab.conversation_dir(record["conversation_id"]) / "events.jsonl"

    def todo(*items: tuple[str, str]) -> None:
        line = {"type": "assistant", "message": {"content": [{
            "type": "tool_use", "id": "toolu_plan", "name": "TodoWrite",
            "input": {"todos": [{"content": c, "status": s, "activeForm": c}
                                for c, s in items]}}]}}
        with events.open("a") as f:
            f.write(json.dumps(line) + "\n")

    todo(("read the code", "in_progress"), ("answer", "pending"))
    plan = wait_until(lambda: [m for m in slack.bot_messages("D0PLAN", msg["ts"])
                               if m["text"].startswith("*Plan*")], 20, "the plan")[0]
    assert plan["text"] == "*Plan*\n🔄 read the code\n⚪ answer"
    todo(("read the code", "completed"), ("answer", "in_progress"))
    wait_until(lambda: plan["text"] == "*Plan*\n✅ read the code\n🔄 answer", 20,
               "the plan updated in place")
    [answer] = reply_in(slack, "D0PLAN", msg["ts"])
    assert answer["text"].startswith("planned")
    assert len([m for m in slack.bot_messages("D0PLAN", msg["ts"])
                if m["text"].startswith("*Plan*")]) == 1


def test_a_scheduled_report_is_a_new_channel_message_and_its_thread_continues(lab, slack):
    lab.scenario("sched-report", [say("Report: {prompt}")])
    lab.guest("systemctl", "start", "airut-schedule@chat--report.service")
    top = wait_until(lambda: [m for m in slack.messages.get("C0REPORTS", [])
                              if m.get("user") == BOT_USER and "thread_ts" not in m],
                     120, "the report in the channel")[0]
    assert top["text"].startswith("Report:") and "scheduled task 'report'" in top["text"]
    marker = lab.scenario("sched-report-follow", [say("follow-up: {prompt}")])
    slack.push(slack.message("C0REPORTS", ALICE, f"{marker} details please",
                             thread_ts=top["ts"]))
    answer = reply_in(slack, "C0REPORTS", top["ts"], count=2)[-1]  # the report is first
    assert "details please" in answer["text"]
    conv = conversation_of(lab, "C0REPORTS", top["ts"])
    assert [r["sender"] for r in conv["replies"]] == ["scheduler", f"Alice ({ALICE})"]
