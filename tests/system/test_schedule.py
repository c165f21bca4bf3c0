"""Scheduled tasks in the lab: the generator's timers under the guest's systemd, the
firing unit, the real runner and demo model, the answer by real mail (postfix and
dovecot). The Slack delivery is in test_slack.py, beside the fake Slack."""

from __future__ import annotations

import re
import time

import yaml

from tests.system.lab import bash, say, wait_until
from tests.system.mail import signed
from tests.system.test_email import ALICE, wait_for_mail

SERVICE = "airut-schedule@mail--digest.service"
TIMER = "airut-schedule@mail--digest.timer"


def test_the_timer_is_listed_with_its_next_run(lab):
    lab.guest("systemctl", "start", TIMER)
    listed = lab.guest("systemctl", "list-timers", "--all", "--no-pager",
                       "airut-schedule@*").stdout
    assert TIMER in listed and "2099-01-01" in listed
    unit = lab.guest("systemctl", "cat", TIMER).stdout
    assert "OnCalendar=2099-01-01 00:00:00" in unit and "Persistent=no" in unit


def test_a_firing_mails_a_new_message_and_a_reply_continues_it(lab, dkim_key):
    lab.scenario("sched-digest", [say("Digest: all quiet ({prompt})")])
    before = len(lab.mailbox(*ALICE))
    lab.guest("systemctl", "start", SERVICE)  # what the timer does when it elapses
    [mail] = wait_for_mail(lab, before + 1)[before:]
    conv = re.fullmatch(r"\[ID:([0-9a-f]{8})\] digest", mail["Subject"]).group(1)
    assert mail["In-Reply-To"] is None and mail["From"] == "airut@corp.test"
    body = mail.get_body(("plain",)).get_content()
    assert body.startswith("Digest: all quiet") and "scheduled task 'digest'" in body
    journal = lab.journal("-u", SERVICE)
    assert "schedule digest of mail: task" in journal and "queued" in journal

    lab.scenario("sched-follow", [say("follow-up answered")])
    raw, _ = signed(dkim_key, "alice@corp.test", mail["Subject"],
                    "[[scenario:sched-follow]] and tomorrow?",
                    in_reply_to=mail["Message-ID"], references=mail["Message-ID"])
    lab.send_mail(raw, "alice@corp.test")
    answers = wait_for_mail(lab, before + 2)
    assert answers[-1]["Subject"] == f"Re: [ID:{conv}] digest"
    replies = lab.conversation(conv)["replies"]
    assert [r["sender"] for r in replies] == ["scheduler", "alice@corp.test"]


def test_a_firing_while_the_last_run_still_runs_is_skipped(lab):
    lab.scenario("sched-digest", [bash("sleep 8"), say("slow digest")])
    before = len(lab.mailbox(*ALICE))
    lab.guest("systemctl", "start", SERVICE)
    time.sleep(1)
    lab.guest("systemctl", "start", SERVICE)
    journal = wait_until(lambda: "skipped" in (j := lab.journal("-u", SERVICE)) and j, 20,
                         "the second firing skipped")
    assert "its previous run (task" in journal and "is still queued or running" in journal
    wait_for_mail(lab, before + 1)
    time.sleep(3)
    assert len(lab.mailbox(*ALICE)) == before + 1  # one run, one mail


def test_disabling_a_schedule_and_reloading_removes_its_timer(lab):
    lab.guest("systemctl", "start", TIMER)
    original = (lab.root / "etc/airut/airut.yaml").read_text()
    changed = yaml.safe_load(original)
    changed["repos"]["mail"]["schedules"]["digest"]["enable"] = False
    try:
        lab.put_file("/etc/airut/airut.yaml", yaml.safe_dump(changed))
        out = lab.airut("reload").stdout
        assert f"stopped {TIMER} (its schedule is gone or disabled)" in out
        listed = lab.guest("systemctl", "list-timers", "--all", "--no-pager",
                           "airut-schedule@*").stdout
        assert TIMER not in listed
    finally:
        lab.put_file("/etc/airut/airut.yaml", original)
        lab.airut("reload")
    assert TIMER in lab.guest("systemctl", "list-timers", "--all", "--no-pager",
                              "airut-schedule@*").stdout
