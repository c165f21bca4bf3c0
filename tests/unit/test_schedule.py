"""Schedules: cron translated into systemd calendar events, checked against systemd's
own calendar (`systemd-analyze calendar`) and croniter, across a DST change."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from airut_cli import generator
from airut_cli import schedule as schedule_cli
from airut_core import commands, schedule
from airut_core import config as config_mod
from airut_core.config import ConfigError
from airut_core.paths import Spool
from airut_core.records import CommandRecord, ReplyRecord, TaskRecord
from airut_core.schedule import ScheduleError
from airut_core.spool import Stage
from airut_ingest.email import compose
from airut_ingest.email.compose import Thread


@pytest.mark.parametrize("cron,tz,lines", [
    ("*/15 9-17 * * 1-5", "Europe/Helsinki",
     ["Mon,Tue,Wed,Thu,Fri *-*-* 09,10,11,12,13,14,15,16,17:00,15,30,45:00 Europe/Helsinki"]),
    ("0 7 1,15 * mon", None, ["*-*-01,15 07:00:00", "Mon *-*-* 07:00:00"]),
    ("@daily", None, ["*-*-* 00:00:00"]),
    ("0 0 * * 7", None, ["Sun *-*-* 00:00:00"]),
    ("30 2 * jan-mar sun,sat", "UTC", ["Sat,Sun *-01,02,03-* 02:30:00 UTC"]),
])
def test_cron_becomes_calendar_lines(cron, tz, lines):
    assert schedule.from_cron(cron, tz) == lines


@pytest.mark.parametrize("cron,error", [
    ("0 0 L * *", "no systemd calendar equivalent"),
    ("0 0 * * 1#2", "no systemd calendar equivalent"),
    ("0 0 15W * *", "no systemd calendar equivalent"),
    ("61 * * * *", "not a valid cron expression"),
    ("* * * *", "five fields"),
])
def test_what_a_calendar_cannot_say_is_an_error(cron, error):
    with pytest.raises(ScheduleError, match=error):
        schedule.from_cron(cron)


def test_an_unknown_timezone_is_named():
    with pytest.raises(ScheduleError, match="unknown timezone 'Mars/Olympus'"):
        schedule.from_cron("0 7 * * *", "Mars/Olympus")


def systemd_next(lines: list[str], base: datetime, n: int) -> list[datetime]:
    found = set()
    for line in lines:
        out = subprocess.run(["systemd-analyze", "calendar", f"--iterations={n}",
                              f"--base-time={base:%Y-%m-%d %H:%M:%S} UTC", line],
                             capture_output=True, text=True, check=True).stdout
        for stamp in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", out):
            found.add(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC))
    return sorted(found)[:n]


@pytest.mark.parametrize("cron", ["0 7 * * *", "30 6 * * 1-5", "0 9 1,29 * sun"])
def test_the_calendar_fires_when_cron_would_across_a_dst_change(cron):
    """Helsinki moves from UTC+2 to UTC+3 on 2026-03-29: 07:00 local is 05:00 UTC
    before and 04:00 UTC after; systemd and croniter must agree on every run."""
    tz = "Europe/Helsinki"
    base = datetime(2026, 3, 20, tzinfo=UTC)
    expected = []
    it = croniter(cron, base.astimezone(ZoneInfo(tz)))
    for _ in range(16):
        expected.append(it.get_next(datetime).astimezone(UTC))
    assert systemd_next(schedule.from_cron(cron, tz), base, 16) == expected
    assert len({t.hour for t in expected}) == 2  # runs on both sides of the change


def test_on_calendar_is_checked_and_normalized_by_systemd():
    assert schedule.check_calendar("Mon..Fri 07:00", "Europe/Helsinki") == \
        "Mon..Fri *-*-* 07:00:00 Europe/Helsinki"
    with pytest.raises(ScheduleError, match="on_calendar 'bogus'"):
        schedule.check_calendar("bogus")


CONFIG = """
paths: {{spool: {root}/spool, state: {root}/state}}
repos:
  demo:
    repo_url: /srv/git/demo.git
    email: {{address: airut@corp.test, trusted_authserv_id: mx, authorized_senders: ["*@corp.test"],
            imap: {{host: mx, username: u, password: p}}, smtp: {{host: mx}}}}
    schedules:
      triage:
        cron: "0 7 * * 1-5"
        timezone: Europe/Helsinki
        prompt: Triage the new issues.
        deliver: {{channel: email, to: alice@corp.test}}
      nightly:
        on_calendar: "*-*-* 02:00"
        catch_up: true
        prompt: Run the long checks.
        model: opus
        deliver: {{channel: email, to: alice@corp.test}}
      paused:
        cron: "@hourly"
        enable: false
        prompt: x
        deliver: {{channel: email, to: alice@corp.test}}
"""


@pytest.fixture
def cfg(tmp_path):
    return config_mod.parse(CONFIG.format(root=tmp_path), "airut.yaml")


def test_enabled_schedules_become_timers_with_their_calendars(cfg, tmp_path):
    timers = {t.instance: t for t in schedule_cli.timers(cfg)}
    assert sorted(timers) == ["demo--nightly", "demo--triage"]  # paused is disabled
    assert timers["demo--triage"].calendar == [
        "Mon,Tue,Wed,Thu,Fri *-*-* 07:00:00 Europe/Helsinki"]
    assert timers["demo--nightly"].calendar == ["*-*-* 02:00:00"]
    assert timers["demo--nightly"].persistent and not timers["demo--triage"].persistent
    out = tmp_path / "generator"
    made = generator.generate(cfg, out, Path("/usr/lib/systemd/system"))
    assert "airut-schedule@demo--triage.timer" in made
    timer = (out / "airut-schedule@demo--triage.timer").read_text()
    assert "OnCalendar=Mon,Tue,Wed,Thu,Fri *-*-* 07:00:00 Europe/Helsinki\n" in timer
    assert "Persistent=no\n" in timer
    assert (out / "airut.target.wants/airut-schedule@demo--nightly.timer").is_symlink()
    assert not (out / "airut-schedule@demo--paused.timer").exists()


def test_a_firing_queues_one_task_and_skips_while_it_still_waits(cfg):
    message = schedule_cli.fire(cfg, "demo--nightly")
    incoming = Stage(Path(cfg.paths.spool) / "incoming")
    [name] = incoming.names()
    assert message == f"schedule nightly of demo: task {name} queued"
    task = TaskRecord.from_dict(incoming.read(name))
    assert (task.channel, task.sender, task.conversation_id, task.model) == (
        "email-demo", "scheduler", None, "opus")
    assert "scheduled task 'nightly' of repository demo" in task.text
    assert task.text.endswith("Run the long checks.")
    thread = Thread.loads(task.reply_to)
    assert (thread.to, thread.subject, thread.message_id, thread.new) == (
        "alice@corp.test", "nightly", None, True)
    assert "skipped" in schedule_cli.fire(cfg, "demo--nightly")
    assert incoming.names() == [name]
    incoming.remove(name)  # the runner took it and answered
    assert "queued" in schedule_cli.fire(cfg, "demo--nightly")
    with pytest.raises(ConfigError, match="no schedule 'demo--nope'"):
        schedule_cli.fire(cfg, "demo--nope")


class StandInRunner:
    """Answers the next command request as a runner would: output files, then result."""

    def __init__(self, cfg, stdout: bytes, stderr: bytes, result: commands.Result):
        self.spool = Spool(cfg.paths.spool)
        self.state = cfg.paths.state
        self.files, self.result = {"stdout": stdout, "stderr": stderr}, result
        self.seen: list[CommandRecord] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while not self.spool.commands.names():
            time.sleep(0.01)
        [cid] = self.spool.commands.names()
        self.seen.append(CommandRecord.from_dict(self.spool.commands.read(cid)))
        run = commands.run_dir(self.state, cid)
        run.mkdir(parents=True)
        for name, data in self.files.items():
            (run / name).write_bytes(data)
        self.spool.commands.remove(cid)
        commands.write_result(run, self.result)


def script_cfg(tmp_path, limit: int = 100):
    text = CONFIG.format(root=tmp_path).replace("prompt: Run the long checks.",
                                                f"trigger_command: make report\n"
                                                f"        output_limit: {limit}")
    return config_mod.parse(text, "airut.yaml")


def test_script_mode_output_becomes_the_prompt_capped(tmp_path):
    cfg = script_cfg(tmp_path)
    runner = StandInRunner(cfg, b"x" * 150, b"", commands.Result(0, "exited"))
    assert "queued" in schedule_cli.fire(cfg, "demo--nightly")
    [request] = runner.seen
    assert request.argv == ["/bin/sh", "-c", "make report"] and request.repo == "demo"
    assert request.timeout == 300 and request.requested_by == "schedule nightly"
    incoming = Stage(Path(cfg.paths.spool) / "incoming")
    task = TaskRecord.from_dict(incoming.read(incoming.names()[0]))
    assert task.text.endswith("\n\n" + "x" * 100)
    assert not list((tmp_path / "state" / "sandbox").iterdir())  # its output removed


def test_script_mode_without_output_queues_nothing(tmp_path):
    cfg = script_cfg(tmp_path)
    StandInRunner(cfg, b" \n", b"noise", commands.Result(0, "exited"))
    assert "printed nothing; no task" in schedule_cli.fire(cfg, "demo--nightly")
    assert not Stage(Path(cfg.paths.spool) / "incoming").names()


def test_script_mode_failure_becomes_a_report_prompt(tmp_path):
    cfg = script_cfg(tmp_path)
    StandInRunner(cfg, b"partial\n", b"y" * 10000 + b"boom\n",
                  commands.Result(124, "timeout", "the command ran past its timeout"))
    schedule_cli.fire(cfg, "demo--nightly")
    incoming = Stage(Path(cfg.paths.spool) / "incoming")
    text = TaskRecord.from_dict(incoming.read(incoming.names()[0])).text
    assert "Command: make report" in text and "Exit code: 124" in text
    assert "partial" in text and text.count("y") < 4200 and "boom" in text


def test_a_scheduled_answer_is_a_new_mail_with_the_conversation_tag():
    thread = Thread(to="alice@corp.test", subject="nightly", new=True)
    reply = ReplyRecord(task_id="t1", conversation_id="0123abcd", repo="demo",
                        channel="email-demo", reply_to=thread.dumps(), text="all green",
                        outcome="success")
    msg = compose.reply("airut@corp.test", reply, Thread.loads(thread.dumps()), [], [])
    assert msg["Subject"] == "[ID:0123abcd] nightly"
    assert msg["In-Reply-To"] is None and msg["Auto-Submitted"] == "auto-generated"


@pytest.mark.parametrize("schedule_yaml,error", [
    ({"prompt": "x", "deliver": {"channel": "email", "to": "a@corp.test"}},
     "exactly one of cron and on_calendar"),
    ({"cron": "0 7 * * *", "on_calendar": "daily", "prompt": "x",
      "deliver": {"channel": "email", "to": "a@corp.test"}}, "exactly one of cron"),
    ({"cron": "0 7 * * *", "deliver": {"channel": "email", "to": "a@corp.test"}},
     "exactly one of prompt and trigger_command"),
    ({"cron": "0 7 * * *", "prompt": "x", "trigger_command": "make report",
      "deliver": {"channel": "email", "to": "a@corp.test"}},
     "exactly one of prompt and trigger_command"),
    ({"cron": "0 7 * * *", "trigger_command": " ", "deliver": {"channel": "email",
                                                             "to": "a@corp.test"}},
     "schedules.bad.trigger_command: empty"),
    ({"cron": "0 7 * * *", "trigger_command": "x", "trigger_timeout": 0,
      "deliver": {"channel": "email", "to": "a@corp.test"}}, "trigger_timeout"),
    ({"cron": "0 0 L * *", "prompt": "x", "deliver": {"channel": "email", "to": "a@corp.test"}},
     "schedules.bad: cron '0 0 L \\* \\*'"),
    ({"cron": "0 7 * * *", "timezone": "Nowhere/City", "prompt": "x",
      "deliver": {"channel": "email", "to": "a@corp.test"}}, "unknown timezone"),
    ({"cron": "0 7 * * *", "prompt": "x", "deliver": {"channel": "slack", "to": "C0123"}},
     "channel slack needs the repository's slack block"),
    ({"cron": "0 7 * * *", "prompt": "x", "deliver": {"channel": "email", "to": "a, b@x"}},
     "not one mail address"),
    ({"cron": "0 7 * * *", "prompt": "x", "deliver": {"channel": "fax", "to": "1"}},
     "must be one of email, slack"),
])
def test_schedule_errors_name_the_key(schedule_yaml, error):
    import json
    data = {"repos": {"demo": {"repo_url": "/x", "email": {
        "address": "airut@corp.test", "trusted_authserv_id": "mx",
        "authorized_senders": ["*@corp.test"], "imap": {"host": "mx", "username": "u",
                                                        "password": "p"},
        "smtp": {"host": "mx"}}, "schedules": {"bad": schedule_yaml}}}}
    with pytest.raises(ConfigError, match=error):
        config_mod.parse(json.dumps(data), "airut.yaml")
