"""The runner's pure logic: stream-json reading, outcomes, the podman and unit lines."""

from __future__ import annotations

import json

import pytest

from airut_core.config import ResourceLimits
from airut_runner import container, outcome, prompt, stream, task_exit
from airut_runner.outcome import Exit
from airut_runner.units import TaskUnit
from tests.unit.test_records_config import task


def events(*items: dict | str) -> list[str]:
    return [i if isinstance(i, str) else json.dumps(i) for i in items]


def say(text: str) -> dict:
    return {"type": "assistant", "session_id": "s1",
            "message": {"content": [{"type": "text", "text": text}]}}


def tool() -> dict:
    return {"type": "assistant", "message": {"content": [{"type": "tool_use", "name": "Bash"}]}}


def result(text: str = "", **extra) -> dict:
    return {"type": "result", "session_id": "s1", "result": text, "total_cost_usd": 0.5,
            "num_turns": 3, "duration_ms": 1500, "usage": {"input_tokens": 10,
                                                           "output_tokens": 5}, **extra}


def test_reply_is_the_last_assistant_text():
    summary = stream.parse(events({"type": "system", "subtype": "init", "session_id": "s1"},
                                  say("first"), tool(), say("final answer"), result("final")))
    assert summary.session_id == "s1"
    assert summary.reply_text() == "final answer"
    assert summary.usage() == {"cost_usd": 0.5, "turns": 3, "duration_ms": 1500,
                               "input_tokens": 10, "output_tokens": 5}


def test_a_much_longer_recent_text_anchors_the_reply():
    long = "Here is the full report. " * 10
    summary = stream.parse(events(say(long), tool(), say("Done.")))
    assert summary.reply_text() == f"{long.strip()}\n\nDone."


def test_anchor_only_looks_four_texts_back():
    long = "x" * 500
    summary = stream.parse(events(say(long), *[say("short") for _ in range(5)]))
    assert summary.reply_text() == "short"


def test_several_results_are_joined():
    summary = stream.parse(events(say("a"), result("one"), result("two")))
    assert summary.reply_text() == "one\n\ntwo"


def test_without_assistant_text_the_result_is_used_then_a_placeholder():
    assert stream.parse(events(result("only result"))).reply_text() == "only result"
    assert stream.parse([]).reply_text() == stream.NO_OUTPUT


def test_non_json_lines_become_the_error_tail():
    summary = stream.parse(events("Error: image not known", "", {"type": "system"}))
    assert summary.error_tail() == "Error: image not known"
    summary = stream.parse(events(result("API Error: 500 boom", is_error=True)))
    assert summary.is_error and summary.error_tail() == "API Error: 500 boom"


@pytest.mark.parametrize(("exit", "stop", "expected"), [
    (Exit(service_result="success", exit_status="0"), False, "success"),
    (Exit(service_result="exit-code", exit_status="1"), False, "failed"),
    (Exit(service_result="timeout", exit_status="15"), False, "timeout"),
    (Exit(service_result="oom-kill"), False, "out_of_memory"),  # cgroup v2
    (Exit(service_result="exit-code", exit_status="137", memory_limit_hits=12), False,
     "out_of_memory"),  # cgroup v1: killed while at the limit
    (Exit(service_result="exit-code", exit_status="137"), False, "failed"),  # killed, not OOM
    (Exit(service_result="success", oom_kills=1), False, "out_of_memory"),
    (Exit(service_result="signal", exit_status="TERM"), True, "stopped"),
    # v1: a timeout killed with SIGKILL after the grace, the limit counter raised by
    # page-cache reclaim: still a timeout.
    (Exit(service_result="timeout", exit_status="9", memory_limit_hits=40), False, "timeout"),
    (Exit(service_result="timeout", oom_kills=1), False, "out_of_memory"),
    (Exit(service_result="lost"), False, "failed"),
])
def test_outcome_classification(exit, stop, expected):
    assert outcome.classify(exit, stop) == expected


def test_marker_becomes_exit():
    marker = {"service_result": "exit-code", "exit_status": "137", "memory_limit_hits": 3,
              "task_id": "t"}
    assert Exit.from_marker(marker).out_of_memory


def test_reply_texts_tell_the_user_what_happened():
    limits = ResourceLimits(memory=512 << 20, timeout=600)
    ok = stream.parse(events(say("All done."), result("All done.")))
    assert outcome.reply_text("success", ok, limits) == (
        "All done.\n\n*Cost: $0.5000 · 3 turns · 1.5 s*")
    assert "512 MiB" in outcome.reply_text("out_of_memory", ok, limits)
    assert "after 10 min" in outcome.reply_text("timeout", ok, limits)
    failed = stream.parse(events("Error: no such image"))
    text = outcome.reply_text("failed", failed, limits)
    assert "error occurred" in text and "```\nError: no such image\n```" in text


def test_podman_command_line(tmp_path):
    run = container.AgentRun(container_name="airut-t1", conversation_dir=tmp_path, image="img",
                             claude_binary="/cache/claude", network="podman", model="opus",
                             env_file=tmp_path / "t1.env", uid_base=1_000_000_000,
                             effort="high", resume_session="s1")
    argv = run.argv()
    assert argv[:6] == ["/usr/bin/podman", "run", "--rm", "--init", "--cgroups=split",
                        "--interactive"]
    for sub, target in container.MOUNTS:
        assert f"--volume={tmp_path / sub}:{target}:rw" in argv
    assert "--volume=/cache/claude:/opt/claude/claude:ro" in argv
    assert "--cap-drop=ALL" in argv
    assert "--cap-add=CHOWN,DAC_OVERRIDE,FOWNER,SETGID,SETUID" in argv
    assert "--security-opt=no-new-privileges" in argv
    assert "--uidmap=0:1000000000:65536" in argv and "--gidmap=0:1000000000:65536" in argv
    assert "--entrypoint=/opt/claude/claude" in argv
    tail = argv[argv.index("img") + 1:]
    assert tail == ["--resume", "s1", "--model", "opus", "--effort",
                    "high", "-p", "-", "--output-format", "stream-json", "--verbose",
                    "--dangerously-skip-permissions"]


def test_container_environment_forces_the_sandbox_settings():
    text = container.env_file_text({"ANTHROPIC_API_KEY": "k", "IS_SANDBOX": "0"},
                                   "http://model:8765")
    env = dict(line.split("=", 1) for line in text.splitlines())
    assert env["ANTHROPIC_API_KEY"] == "k"
    assert env["ANTHROPIC_BASE_URL"] == "http://model:8765"
    assert env["IS_SANDBOX"] == "1"
    assert env["CLAUDE_CODE_DISABLE_BACKGROUND_TASKS"] == "1"
    with pytest.raises(ValueError, match="cannot be passed"):
        container.env_file_text({"K": "two\nlines"}, None)


def test_host_name_becomes_the_gateway_address():
    assert container.host_url("http://host.containers.internal:8765", "10.89.3.1") == (
        "http://10.89.3.1:8765")
    assert container.host_url("https://api.anthropic.com", "10.89.3.1") == (
        "https://api.anthropic.com")
    assert container.host_url(None, "10.89.3.1") is None


def test_task_unit_properties(tmp_path):
    unit = TaskUnit(name="airut-task-c-t.service", argv=["/usr/bin/podman", "run", "$HOME"],
                    stdin_file=tmp_path / "p", stdout_file=tmp_path / "e", spool_dir="/spool",
                    task_id="t", conversation_id="c", repo="r",
                    limits=ResourceLimits(timeout=60, memory=256 << 20, cpus=0.5,
                                          pids_limit=64), stop_grace=7)
    props = unit.properties()
    assert props[b"MemoryMax"] == 256 << 20
    assert props[b"MemorySwapMax"] == 0  # v2: past the limit is an OOM kill, not swapping
    # v2: podman's split cgroups need the subtree delegated, or ExecStopPost cannot start;
    # delegation turns OOMPolicy's default to continue, so it is set.
    assert props[b"Delegate"] is True
    assert props[b"OOMPolicy"] == b"stop"
    assert props[b"CPUQuotaPerSecUSec"] == 500_000
    assert props[b"TasksMax"] == 64
    assert props[b"RuntimeMaxUSec"] == 60_000_000
    assert props[b"TimeoutStopUSec"] == 7_000_000
    assert props[b"Slice"] == b"airut-tasks.slice"
    assert props[b"LogExtraFields"] == [b"AIRUT_TASK=t", b"AIRUT_CONVERSATION=c",
                                        b"AIRUT_REPO=r"]
    # systemd would expand $HOME: a literal dollar is doubled.
    assert props[b"ExecStart"][0][1][-1] == b"$$HOME"
    assert props[b"ExecStopPost"][0][1][-5:] == [b"airut_runner.task_exit", b"--stage",
                                                 b"finished", b"/spool", b"t"]


UNIT = "airut.slice/airut-tasks.slice/airut-task-c-t.service"


@pytest.mark.parametrize(("proc_cgroup", "expected"), [
    # cgroup v2, delegated unit: systemd runs ExecStopPost in <unit>/.control
    (f"0::/{UNIT}/.control\n", UNIT),
    (f"0::/{UNIT}\n", UNIT),
    # cgroup v1 (and hybrid): the memory hierarchy's line decides
    (f"12:pids:/{UNIT}\n5:memory:/{UNIT}/.control\n0::/{UNIT}\n", f"memory/{UNIT}"),
    (f"5:memory:/{UNIT}\n1:name=systemd:/{UNIT}\n", f"memory/{UNIT}"),
])
def test_exit_helper_reads_the_units_own_memory_counters(tmp_path, proc_cgroup, expected):
    (tmp_path / UNIT / ".control").mkdir(parents=True)
    (tmp_path / UNIT / "memory.events").write_text("oom_kill 2\n")
    (tmp_path / UNIT / ".control/memory.events").write_text("oom_kill 0\n")
    # The slice's counters add up every task's kills on v2: never the ones to read.
    (tmp_path / "airut.slice/airut-tasks.slice/memory.events").write_text("oom_kill 7\n")
    cgroup = task_exit.memory_cgroup(proc_cgroup, root=tmp_path)
    assert cgroup == tmp_path / expected
    if not expected.startswith("memory/"):
        assert task_exit.oom_kills(cgroup) == 2


def test_exit_helper_without_a_memory_controller_reports_no_kills(tmp_path):
    assert task_exit.memory_cgroup(f"0::/{UNIT}\n", root=tmp_path) is None
    assert task_exit.oom_kills(None) == 0


def test_prompt_carries_sender_and_time():
    text = prompt.compose([task(created="2026-11-26T18:55:01.000+00:00", sender="ann@x")],
                          ["a.txt"])
    assert "the airut command line" in text
    assert "/inbox/: a.txt" in text
    assert text.endswith("[ann@x 2026-11-26 18:55:01 UTC]\nhi\n")


def test_seccomp_profile_refuses_only_new_user_namespaces():
    base = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read", "clone", "clone3", "unshare", "write"], "action": "SCMP_ACT_ALLOW",
         "args": []},
        {"names": ["setns"], "action": "SCMP_ACT_ALLOW", "args": [],
         "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}
    profile = container.no_userns_profile(base)
    assert profile["syscalls"][0]["names"] == ["read", "write"]
    assert base["syscalls"][0]["names"][1] == "clone"  # the original is untouched
    rules = {(r["names"][0], r["action"]): r for r in profile["syscalls"][2:]}
    allow = rules[("clone", "SCMP_ACT_ALLOW")]["args"][0]
    assert (allow["value"], allow["valueTwo"], allow["op"]) == (
        0x10000000, 0, "SCMP_CMP_MASKED_EQ")
    deny = rules[("unshare", "SCMP_ACT_ERRNO")]
    assert deny["errnoRet"] == 1 and deny["args"][0]["valueTwo"] == 0x10000000
    assert rules[("clone3", "SCMP_ACT_ERRNO")]["errnoRet"] == 38  # ENOSYS: libc falls back


def test_podman_line_carries_the_seccomp_profile(tmp_path):
    run = container.AgentRun(container_name="c", conversation_dir=tmp_path, image="img",
                             claude_binary="/c", network="n", model="m", env_file=tmp_path,
                             uid_base=1_000_065_536, seccomp_profile="/p.json")
    argv = run.argv()
    assert "--security-opt=seccomp=/p.json" in argv
    assert "--uidmap=0:1000065536:65536" in argv


def test_a_huge_number_in_the_stream_is_just_a_bad_line():
    summary = stream.parse(events(say("the answer"), '{"type":"result","num_turns":'
                                  + "9" * 5000 + "}"))
    assert summary.reply_text() == "the answer"
