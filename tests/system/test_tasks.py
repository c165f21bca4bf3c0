"""Tasks end to end: real systemd units, real podman, the real Claude Code CLI.

Each test scripts the demo model (the stand-in for Anthropic's API) with its own
scenario, submits through `airut submit` in the guest, and checks what systemd,
the workspace, the spool and the model saw.
"""

from __future__ import annotations

import json
import time

from airut_core.config import Size

SLOW_BASH = [{"tool": "Bash", "input": {"command": "sleep 4; echo made-by-agent > created.txt"}},
             {"text": "I slept and created created.txt."}]


def test_task_runs_in_a_transient_unit_with_its_limits(lab):
    marker = lab.scenario("unit-limits", SLOW_BASH)
    task = lab.submit_no_wait(f"{marker} please work slowly", repo="demo")

    unit = lab.wait_for_unit(task)
    listed = lab.guest("systemctl", "list-units", "airut-task-*").stdout
    assert unit in listed
    props = lab.unit_properties(unit, "MemoryMax", "TasksMax", "CPUQuotaPerSecUSec",
                                "RuntimeMaxUSec", "Slice", "ActiveState")
    assert props["MemoryMax"] == str(Size.parse("4G", "")), props  # the defaults
    assert props["TasksMax"] == "1024"
    assert props["CPUQuotaPerSecUSec"] == "2s"
    assert props["RuntimeMaxUSec"] == "30min"
    assert props["Slice"] == "airut-tasks.slice"
    assert props["ActiveState"] == "active"
    # The container is inside the unit's cgroup (--cgroups=split), so limits apply to it.
    cgroup = lab.guest("systemctl", "show", unit, "-p", "ControlGroup").stdout.split("=", 1)[1]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tree = lab.guest("systemd-cgls", "--no-pager", "-l", cgroup.strip()).stdout
        payload = tree.partition("libpod-payload")[2]  # the container's own processes
        if "/opt/claude/claude" in payload:
            break
        time.sleep(0.1)
    assert "/opt/claude/claude" in payload, tree

    reply = lab.wait_reply(task)
    assert reply["outcome"] == "success", reply
    assert reply["unit"] == unit
    assert reply["text"].startswith("I slept and created created.txt.")
    assert "Cost: $" in reply["text"]
    workspace = lab.conversation_dir(reply["conversation_id"]) / "workspace"
    assert (workspace / "created.txt").read_text() == "made-by-agent\n"
    assert unit not in lab.task_units()  # collected once finished
    # Every line about the task carries its id in the journal.
    journal = lab.journal(f"AIRUT_TASK={task}")
    assert "claimed task" in journal and "task finished: success" in journal


def test_memory_limit_kills_the_agent_and_the_reply_says_so(lab):
    # Twelve processes of 40 MiB each: together past the 320 MiB limit, each smaller
    # than the agent, so the kernel picks the agent itself.
    hog = ("for i in $(seq 12); do perl -e '$x = \"a\" x (40 << 20); sleep 30' & done; "
           "wait")
    marker = lab.scenario("oom", [{"tool": "Bash", "input": {"command": hog}},
                                  {"text": "I allocated a gigabyte."}])
    reply = lab.submit(f"{marker} use a lot of memory", repo="small")
    assert reply["outcome"] == "out_of_memory", reply
    assert "ran out of memory" in reply["text"] and "320 MiB" in reply["text"]
    assert "I allocated a gigabyte" not in reply["text"]


def test_runtime_limit_stops_the_task_and_the_reply_says_so(lab):
    marker = lab.scenario("forever", [{"tool": "Bash", "input": {"command": "sleep 100"}},
                                      {"text": "I woke up."}])
    started = time.monotonic()
    reply = lab.submit(f"{marker} sleep for a long time", repo="small")
    elapsed = time.monotonic() - started
    assert reply["outcome"] == "timeout", reply
    assert "time limit" in reply["text"] and "reply to resume" in reply["text"]
    assert elapsed < 10 + 5 + 10  # RuntimeMaxSec, the stop grace, start-up
    assert not [u for u in lab.task_units() if reply["task_id"] in u]


def test_second_message_resumes_the_session(lab):
    marker = lab.scenario("echo-resume", [{"text": "You said: {prompt}"}])
    first = lab.submit(f"{marker} the password is swordfish", repo="demo")
    assert first["outcome"] == "success", first
    conv = first["conversation_id"]
    session = lab.conversation(conv)["session_id"]
    assert session

    second = lab.submit(f"{marker} what was the password?", conversation=conv)
    assert second["outcome"] == "success", second
    assert second["conversation_id"] == conv
    assert "You said:" in second["text"] and "what was the password?" in second["text"]

    requests = [r for r in lab.model_requests()
                if "what was the password?" in json.dumps(r["body"])]
    assert requests, "the model never saw the second message"
    history = json.dumps(requests[0]["body"]["messages"])
    assert "the password is swordfish" in history  # the earlier prompt
    assert "You said:" in history  # and the earlier answer
    state = lab.conversation(conv)
    assert state["session_id"] == session
    assert [r["outcome"] for r in state["replies"]] == ["success", "success"]


def test_runner_killed_during_a_task_finishes_it_once(lab):
    marker = lab.scenario("survive-kill", SLOW_BASH)
    task = lab.submit_no_wait(f"{marker} work through a runner crash", repo="demo")
    unit = lab.wait_for_unit(task)
    before = lab.guest("systemctl", "show", "airut-runner", "-p", "MainPID").stdout
    lab.guest("systemctl", "kill", "--signal=KILL", "airut-runner.service")
    # The task unit does not belong to the runner: it keeps running.
    assert lab.unit_properties(unit, "ActiveState")["ActiveState"] == "active"

    reply = lab.wait_reply(task)
    assert reply["outcome"] == "success", reply
    after = lab.guest("systemctl", "show", "airut-runner", "-p", "MainPID").stdout
    assert after != before, "systemd restarted the runner"
    assert f"adopted running unit {unit}" in lab.journal(f"AIRUT_TASK={task}")
    record = lab.spool / "outgoing/local" / f"{task}.json"
    written = record.stat().st_mtime_ns
    time.sleep(2)  # a second reply would have been written by now
    assert record.stat().st_mtime_ns == written
    replies = lab.conversation(reply["conversation_id"])["replies"]
    assert [r["task_id"] for r in replies] == [task]


def test_task_finishing_while_runner_is_down_gets_its_reply(lab):
    marker = lab.scenario("runner-down", SLOW_BASH)
    task = lab.submit_no_wait(f"{marker} finish while nobody watches", repo="demo")
    unit = lab.wait_for_unit(task)
    lab.guest("systemctl", "stop", "airut-runner.service")
    try:
        deadline = time.monotonic() + 60
        while unit in lab.task_units() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert unit not in lab.task_units()
        # The unit recorded its own end; nothing has replied yet.
        assert (lab.spool / "finished" / f"{task}.json").exists()
        assert not (lab.spool / "outgoing/local" / f"{task}.json").exists()
    finally:
        lab.guest("systemctl", "start", "airut-runner.service")
    reply = lab.wait_reply(task)
    assert reply["outcome"] == "success", reply
    assert not (lab.spool / "finished" / f"{task}.json").exists()


def test_stop_request_ends_a_running_task(lab):
    marker = lab.scenario("to-stop", [{"tool": "Bash", "input": {"command": "sleep 100"}},
                                      {"text": "never"}])
    task = lab.submit_no_wait(f"{marker} run until stopped", repo="demo")
    lab.wait_for_unit(task)
    started = time.monotonic()
    lab.guest("airut", "stop", task)
    reply = lab.wait_reply(task)
    assert reply["outcome"] == "stopped", reply
    assert time.monotonic() - started < 5 + 3  # the stop grace, and some slack
    assert "stopped on request" in reply["text"]


def test_task_failing_three_times_is_quarantined_with_its_reasons(lab):
    reply = lab.submit("clone a repository that does not exist", repo="broken", timeout=60)
    assert reply["outcome"] == "failed", reply
    assert "could not run this task" in reply["text"]
    assert "cannot clone /srv/git/missing.git" in reply["text"]
    record = json.loads((lab.spool / "failed/active" / f"{reply['task_id']}.json").read_text())
    assert len(record["failures"]) == 3
    assert all("cannot clone" in f["reason"] for f in record["failures"])
    assert not (lab.spool / "active" / f"{reply['task_id']}.json").exists()


def test_unreadable_record_is_quarantined_and_the_runner_goes_on(lab):
    incoming = lab.spool / "incoming"
    (incoming / "20200101T000000000-badbad.json").write_text('{"schema": "airut.task/1", "te')
    (incoming / "20200101T000000001-badbad.json").write_text(json.dumps(
        {"schema": "airut.task/1", "repo": "demo", "channel": "../../etc", "reply_to": "x",
         "sender": "x", "text": "x", "task_id": "20200101T000000001-badbad"}))
    marker = lab.scenario("after-bad", [{"text": "still here"}])
    reply = lab.submit(f"{marker} are you alive?", repo="demo")
    assert reply["outcome"] == "success" and reply["text"].startswith("still here")
    failed = lab.spool / "failed"
    assert (failed / "incoming/20200101T000000000-badbad.json").exists()
    assert (failed / "incoming/20200101T000000001-badbad.json").exists()  # checked at claim
    journal = lab.journal("-u", "airut-runner")
    assert "not valid JSON" in journal
    assert "not a valid channel name" in journal
