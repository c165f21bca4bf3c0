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



# -- script mode ------------------------------------------------------------------------------

PROBE = "airut-schedule@mail--probe.service"


def fire_probe(lab, script: str) -> str:
    """trigger.sh on the default branch of the mail repository, then one firing (systemctl
    start returns when the oneshot has ended); the firing's journal lines."""
    lab.guest("sh", "-ec", "cd /tmp/seed && git fetch -q /srv/git/demo.git main && "
              "git reset -q --hard FETCH_HEAD")
    lab.put_file("/tmp/seed/trigger.sh", script + "\n")
    lab.guest("sh", "-ec", "cd /tmp/seed && git add trigger.sh && "
              "git -c user.name=T -c user.email=t@x commit -qm trigger && "
              "git push -q /srv/git/demo.git main")
    since = lab.guest("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    lab.guest("systemctl", "start", PROBE, timeout=120)
    return lab.journal("-u", PROBE, "--since", since)


def prompts(lab) -> set[str]:
    """Every text the model was sent (a prompt is sent again with each turn)."""
    texts = set()
    for request in lab.model_requests():
        for message in (request.get("body") or {}).get("messages", []):
            content = message.get("content")
            parts = content if isinstance(content, list) else [{"text": content}]
            texts |= {p.get("text") or "" for p in parts if isinstance(p, dict)}
    return texts


def test_a_trigger_command_without_output_sends_nothing(lab):
    before = len(lab.mailbox(*ALICE))
    conversations = set((lab.state / "conversations").iterdir())
    journal = fire_probe(lab, "test -f README.md  # quiet: nothing to report")
    assert "its trigger command printed nothing; no task" in journal
    assert set((lab.state / "conversations").iterdir()) == conversations
    time.sleep(2)
    assert len(lab.mailbox(*ALICE)) == before


def test_a_trigger_commands_output_becomes_the_prompt(lab):
    lab.scenario("sched-probe", [say("probe answered")])
    before = len(lab.mailbox(*ALICE))
    journal = fire_probe(lab, "echo '[[scenario:sched-probe]] 3 new issues'; echo $GH_TOKEN")
    assert "queued" in journal
    [mail] = wait_for_mail(lab, before + 1)[before:]
    assert mail["Subject"].endswith("] probe")
    assert mail.get_body(("plain",)).get_content().startswith("probe answered")
    [prompt] = [p for p in prompts(lab) if "3 new issues" in p]
    assert "scheduled task 'probe'" in prompt
    assert "ghp_" in prompt and "REAL" not in prompt  # the sandbox's surrogate


def test_a_failing_or_hanging_trigger_command_is_reported(lab):
    lab.scenario("sched-probe", [say("failure reported")])
    before = len(lab.mailbox(*ALICE))
    fire_probe(lab, "echo '[[scenario:sched-probe]] starting'; echo broken >&2; exit 4")
    wait_for_mail(lab, before + 1)
    [prompt] = [p for p in prompts(lab) if "broken" in p and "Exit code: 4" in p]
    assert "Command: sh trigger.sh" in prompt and "starting" in prompt
    fire_probe(lab, "echo '[[scenario:sched-probe]] waiting'; sleep 60")
    wait_for_mail(lab, before + 2)
    [prompt] = [p for p in prompts(lab) if "Exit code: 124" in p]
    assert "past its timeout" in prompt and "waiting" in prompt
