"""The runner in depth: outcomes, hardening, images, scheduling, outbox, housekeeping.

Real systemd units, real podman, the real Claude Code CLI; the demo model plays
the API, including its failures.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from tests.system.lab import WRITE_ALLOWLIST, bash, say

# -- outcomes --------------------------------------------------------------------------

def test_rejected_credentials_get_an_explicit_reply(lab):
    reply = lab.submit("[[scenario:error-401]] hello", repo="demo")
    assert reply["outcome"] == "auth_failed", reply
    assert "model credentials were rejected" in reply["text"]
    assert "repos.demo.masked_secrets" in reply["text"]


@pytest.mark.parametrize(("status", "outcome", "words"), [
    (429, "rate_limited", "rate-limiting"), (529, "overloaded", "overloaded")])
def test_rate_limit_and_overload_keep_the_session(lab, status, outcome, words):
    marker = lab.scenario(f"remember-{status}", [say("Noted: {prompt}")])
    first = lab.submit(f"{marker} the colour is teal", repo="demo")
    conv = first["conversation_id"]
    session = lab.conversation(conv)["session_id"]

    reply = lab.submit(f"[[scenario:error-{status}]] and now?", conversation=conv)
    assert reply["outcome"] == outcome, reply
    assert words in reply["text"] and "Nothing was lost" in reply["text"]
    assert lab.conversation(conv)["session_id"] == session

    again = lab.submit(f"{marker} what was the colour?", conversation=conv)
    assert again["outcome"] == "success", again
    request = next(r for r in lab.model_requests() if "what was the colour?" in json.dumps(r))
    assert "the colour is teal" in json.dumps(request["body"]["messages"])  # context kept


def test_prompt_too_long_retries_once_in_a_fresh_session(lab):
    answer = lab.scenario("long-first", [say("The plan: build the rocket.")])
    first = lab.submit(f"{answer} make a plan", repo="demo")
    conv = first["conversation_id"]
    old_session = lab.conversation(conv)["session_id"]
    # The resumed session hits the context limit; a fresh one answers.
    marker = lab.scenario("too-long-when-resumed", [say("Fresh answer.")],
                          error_only_when_resumed=True,
                          error={"status": 400, "type": "invalid_request_error",
                                 "message": "prompt is too long: 212345 tokens > 200000"})
    reply = lab.submit(f"{marker} go on", conversation=conv)
    assert reply["outcome"] == "success", reply
    assert reply["text"].startswith("(The conversation had grown too long")
    assert "Fresh answer." in reply["text"]
    state = lab.conversation(conv)
    assert state["session_id"] and state["session_id"] != old_session
    fresh = [r for r in lab.model_requests() if "could not be continued" in json.dumps(r["body"])]
    assert fresh, "the fresh session never got the recovery prompt"
    assert "The plan: build the rocket." in json.dumps(fresh[-1]["body"])
    assert "retrying once in a fresh session" in lab.journal(f"AIRUT_CONVERSATION={conv}")


def test_unresumable_session_retries_in_a_fresh_session(lab):
    marker = lab.scenario("lost-session", [say("Answer: {prompt}")])
    first = lab.submit(f"{marker} first words", repo="demo")
    conv = first["conversation_id"]
    state_file = lab.conversation_dir(conv) / "conversation.json"
    state = json.loads(state_file.read_text())
    state["session_id"] = "11111111-2222-3333-4444-555555555555"  # the CLI has no such session
    state_file.write_text(json.dumps(state))
    reply = lab.submit(f"{marker} second words", conversation=conv)
    assert reply["outcome"] == "success", reply
    assert reply["text"].startswith("(The agent's previous session could not be resumed")
    assert "second words" in reply["text"]
    assert lab.conversation(conv)["session_id"] != state["session_id"]


def test_prompt_too_long_in_a_new_conversation_says_so(lab):
    lab.scenario("too-long-new", error={"status": 400, "type": "invalid_request_error",
                                        "message": "prompt is too long: 300000 tokens"})
    reply = lab.submit("[[scenario:too-long-new]] a huge message", repo="demo")
    assert reply["outcome"] == "prompt_too_long", reply
    assert "too long for the model's context" in reply["text"]


def test_container_failure_reply_carries_the_output_tail(lab):
    marker = lab.scenario("crash", [bash("echo about to crash >&2; kill -9 $PPID"),
                                    say("never")])
    reply = lab.submit(f"{marker} crash the agent", repo="demo")
    assert reply["outcome"] == "failed", reply
    assert "An error occurred" in reply["text"] and "```" in reply["text"]


# -- the container -----------------------------------------------------------------------

def test_container_root_is_not_host_root(lab):
    marker = lab.scenario("whoami", [
        bash("id -u; touch made-in-container; ls -ln made-in-container"),
        say("{tool_result}")])
    reply = lab.submit(f"{marker} who am I", repo="demo")
    assert reply["outcome"] == "success", reply
    made = lab.conversation_dir(reply["conversation_id"]) / "workspace" / "made-in-container"
    base = lab.conversation(reply["conversation_id"])["uid_base"]
    assert made.stat().st_uid == base and made.stat().st_gid == base
    assert base >= 1_000_000_000
    assert reply["text"].startswith("0\n")  # root inside its own namespace


def test_container_sees_only_its_own_mounts_and_few_capabilities(lab):
    marker = lab.scenario("mounts", [
        bash("awk '{print $5}' /proc/self/mountinfo | sort -u | tr '\\n' ' '; echo; "
             "grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status"),
        say("{tool_result}")])
    reply = lab.submit(f"{marker} what do I see", repo="demo")
    assert reply["outcome"] == "success", reply
    mounts = set(reply["text"].splitlines()[0].split())
    binds = {m for m in mounts if m.split("/")[1] in ("workspace", "inbox", "outbox", "storage",
                                                        "root", "opt")}
    assert binds == {"/workspace", "/inbox", "/outbox", "/storage", "/root/.claude",
                     "/opt/claude/claude"}
    assert not any(m.startswith(("/var/lib/airut", "/etc/airut", "/var/spool")) for m in mounts)
    caps = int(re.search(r"CapEff:\s*([0-9a-f]+)", reply["text"]).group(1), 16)
    # CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, SETGID 6, SETUID 7
    assert caps == (1 << 0) | (1 << 1) | (1 << 3) | (1 << 6) | (1 << 7)
    assert re.search(r"NoNewPrivs:\s*1", reply["text"])


def test_cpu_quota_is_enforced(lab):
    burn = ("for i in 1 2; do timeout 3 sh -c 'while :; do :; done' & done; wait; times")
    marker = lab.scenario("burn", [bash(burn), say("{tool_result}")])
    reply = lab.submit(f"{marker} burn two cores for three seconds", repo="cpu")
    assert reply["outcome"] == "success", reply
    # `times` prints the shell's, then its children's user and system time.
    lines = [line.split() for line in reply["text"].splitlines()
             if re.fullmatch(r"\d+m[\d.]+s \d+m[\d.]+s", line.strip())]
    assert len(lines) == 2, reply["text"]
    used = sum(int(m) * 60 + float(s) for m, s in (re.match(r"(\d+)m([\d.]+)s", t).groups()
                                                   for t in lines[1]))
    assert used < 2.5, f"{used:.2f} s of CPU in 3 s with CPUQuota=50% ({reply['text']!r})"


def test_fork_bomb_stops_at_tasks_max_and_the_host_is_fine(lab):
    marker = lab.scenario("bomb", [bash("b() { b | b & }; b; sleep 25"), say("done")])
    task = lab.submit_no_wait(f"{marker} fork forever", repo="bomb")
    unit = lab.wait_for_unit(task)
    samples, saturated, limits = [], 0, set()
    deadline = time.monotonic() + 20
    while saturated < 10 and time.monotonic() < deadline:
        props = lab.unit_properties(unit, "TasksCurrent", "TasksMax", "LoadState")
        if props.get("LoadState") != "loaded":
            break  # the bomb left the agent no room and the task ended: asserted below
        if props.get("TasksCurrent", "").isdigit():
            samples.append(int(props["TasksCurrent"]))
            limits.add(props["TasksMax"])
            saturated = saturated + 1 if samples[-1] >= 126 else 0
    assert limits == {"128"}
    # A fork bomb doubles in microseconds: held at the limit for ten readings in a
    # row, and never above it, the limit is what stops it.
    ended = props.get("LoadState") != "loaded"
    assert saturated >= 10 or (ended and samples and max(samples) >= 126), \
        f"never held at the limit: {samples[-20:]}"
    assert max(samples) <= 128, max(samples)
    started = time.monotonic()
    lab.guest("true")  # the guest still starts processes at once
    assert time.monotonic() - started < 2
    lab.guest("airut", "stop", task)
    reply = lab.wait_reply(task, timeout=60)
    # Stopped, or failed when the bomb left the agent itself no room for a thread.
    assert reply["outcome"] in ("stopped", "failed"), reply
    assert not [u for u in lab.task_units() if task in u]


# -- images from the default branch -------------------------------------------------------

def imaged_repo(version: str) -> str:
    """/srv/git/imaged.git whose image writes `version` into /etc/image-version."""
    return f"""
rm -rf /tmp/imaged /srv/git/imaged.git && mkdir -p /tmp/imaged/.airut/container && cd /tmp/imaged
git init -q -b main
printf 'FROM localhost/airut-base:latest\\nRUN echo {version} > /etc/image-version\\n' \\
  > .airut/container/Dockerfile
{WRITE_ALLOWLIST}
git add -A && git -c user.name=T -c user.email=t@x commit -qm 'Container {version}'
git clone -q --bare /tmp/imaged /srv/git/imaged.git
"""


MERGE_V2 = """
cd /tmp/imaged && git pull -q /srv/git/imaged.git main
sed -i s/v1/v2/ .airut/container/Dockerfile
git -c user.name=T -c user.email=t@x commit -qam 'Container v2, reviewed'
git push -q /srv/git/imaged.git main
"""


def test_image_comes_from_the_default_branch_not_the_workspace(lab):
    lab.guest("sh", "-ec", imaged_repo("v1"))
    marker = lab.scenario("image-version", [bash("cat /etc/image-version"),
                                            say("version {tool_result}")])
    edit = lab.scenario("edit-dockerfile", [
        bash("sed -i s/v1/hacked/ .airut/container/Dockerfile && "
             "git -c user.name=a -c user.email=a@x commit -qam mine && cat /etc/image-version"),
        say("version {tool_result}")])

    first = lab.submit(f"{edit} change your own container", repo="imaged", timeout=180)
    assert first["outcome"] == "success", first
    assert first["text"].startswith("version v1")
    conv = first["conversation_id"]
    workspace_file = lab.conversation_dir(conv) / "workspace/.airut/container/Dockerfile"
    assert "hacked" in workspace_file.read_text()
    assert "building image localhost/airut-repo:" in lab.journal(f"AIRUT_TASK={first['task_id']}")

    second = lab.submit(f"{marker} which version now?", conversation=conv)
    assert second["text"].startswith("version v1"), second  # the workspace edit changed nothing

    lab.guest("sh", "-ec", MERGE_V2)
    third = lab.submit(f"{marker} and after the merge?", conversation=conv, timeout=180)
    assert third["text"].startswith("version v2"), third
    builds = lab.journal("SYSLOG_IDENTIFIER=airut-build")
    assert builds.count("COMMIT localhost/airut-repo:") >= 2, builds


def test_concurrent_tasks_build_an_image_once(lab):
    lab.guest("sh", "-ec", imaged_repo("once"))
    marker = lab.scenario("image-once", [bash("cat /etc/image-version"), say("{tool_result}")])
    tasks = [lab.submit_no_wait(f"{marker} task {i}", repo="imaged") for i in range(3)]
    replies = [lab.wait_reply(t, timeout=180) for t in tasks]
    assert [r["text"].split("\n")[0] for r in replies] == ["once"] * 3, replies
    tag = re.findall(r"image (localhost/airut-repo:\w+)",
                     lab.journal(f"AIRUT_TASK={tasks[0]}"))[0]
    builds = lab.journal("SYSLOG_IDENTIFIER=airut-build", f"AIRUT_IMAGE={tag}")
    assert builds.count(f"COMMIT {tag}") == 1, builds


def test_a_broken_dockerfile_is_answered_with_the_build_log(lab):
    lab.guest("sh", "-ec", imaged_repo("broken").replace(
        "RUN echo broken > /etc/image-version", "RUN echo it-broke-here && false"))
    reply = lab.submit("[[scenario:echo]] build me", repo="imaged", timeout=180)
    assert reply["outcome"] == "failed", reply
    assert "failed to build" in reply["text"] and "Fix .airut/container/Dockerfile" in reply[
        "text"]
    assert "it-broke-here" in reply["text"]  # the end of the build's own log
    task = reply["task_id"]
    assert (lab.spool / "failed/active" / f"{task}.json").exists()
    # The task's network (made before the build) goes with it.
    assert lab.guest("podman", "network", "exists", f"airut-{task}",
                     check=False).returncode == 1


# -- scheduling ---------------------------------------------------------------------------

def interval_scenario(lab, name: str, seconds: float) -> str:
    return lab.scenario(name, [
        bash(f"s=$(date +%s.%N); sleep {seconds}; echo {name} $s $(date +%s.%N) >> /storage/log"),
        say("ok")])


def intervals(lab, conv: str) -> dict[str, tuple[float, float]]:
    text = (lab.conversation_dir(conv) / "storage/log").read_text()
    return {n: (float(a), float(b)) for n, a, b in (line.split() for line in text.splitlines())}


def test_conversations_run_in_parallel_and_each_in_order(lab):
    quick = lab.scenario("hello", [say("hi")])
    conv_a = lab.submit(f"{quick} start A", repo="demo")["conversation_id"]
    conv_b = lab.submit(f"{quick} start B", repo="demo")["conversation_id"]
    a1, a2, b1 = (interval_scenario(lab, n, 3) for n in ("a1", "a2", "b1"))
    t_a1 = lab.guest("airut", "submit", "--no-wait", "--conversation", conv_a, f"{a1} one")
    t_b1 = lab.guest("airut", "submit", "--no-wait", "--conversation", conv_b, f"{b1} one")
    t_a2 = lab.guest("airut", "submit", "--no-wait", "--conversation", conv_a, f"{a2} two")
    for t in (t_a1, t_b1, t_a2):
        assert lab.wait_reply(t.stdout.strip())["outcome"] == "success"
    a, b = intervals(lab, conv_a), intervals(lab, conv_b)
    assert a["a2"][0] >= a["a1"][1], "a conversation's tasks overlapped"
    assert b["b1"][0] < a["a1"][1] and a["a1"][0] < b["b1"][1], "conversations did not overlap"


def test_follow_ups_while_a_task_runs_become_one_next_task(lab):
    slow = interval_scenario(lab, "slow", 4)
    first = lab.submit_no_wait(f"{slow} the first message", repo="demo")
    lab.wait_for_unit(first)
    conv_id = json.loads((lab.spool / "active" / f"{first}.json").read_text())["conversation_id"]
    echo = lab.scenario("echo-all", [say("Got: {prompt}")])
    follow = [lab.guest("airut", "submit", "--no-wait", "--conversation", conv_id,
                        f"{echo} follow-up {i}").stdout.strip() for i in (1, 2, 3)]
    assert lab.wait_reply(first)["outcome"] == "success"
    replies = [lab.wait_reply(t) for t in follow]
    assert len({r["task_id"] for r in replies}) == 1, "the follow-ups were not merged"
    merged = replies[0]
    assert merged["task_id"] == follow[-1] and merged["merged_task_ids"] == follow[:2]
    for i in (1, 2, 3):
        assert f"follow-up {i}" in merged["text"]
    assert len(re.findall(r"\[\S+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\]", merged["text"])) == 3
    started = lab.journal(f"AIRUT_CONVERSATION={conv_id}").count("started unit")
    assert started == 2, f"{started} units ran for the conversation"


# -- outbox and housekeeping ------------------------------------------------------------------

def test_outbox_files_travel_with_the_reply(lab):
    make = ("cd /outbox && echo report > report.txt && printf x > b.csv && "
            "ln -s /etc/passwd link && mkdir sub && echo in > sub/f && "
            "head -c 2000000 /dev/zero > big.bin")
    marker = lab.scenario("outbox", [bash(make), say("Files are ready.")])
    reply = lab.submit(f"{marker} send me files", repo="demo")
    assert reply["outcome"] == "success", reply
    assert reply["attachments"] == ["b.csv", "report.txt"]
    files = lab.spool / "outgoing/local" / f"{reply['task_id']}.files"
    assert reply["attachments_dir"] == f"/var/spool/airut/outgoing/local/{files.name}"
    assert (files / "report.txt").read_text() == "report\n"
    for skipped in ("link (links are not sent)", "sub/ (directories", "big.bin"):
        assert skipped in reply["text"]
    left = sorted(os.listdir(lab.conversation_dir(reply["conversation_id"]) / "outbox"))
    assert left == ["big.bin", "link", "sub"]  # sent files are cleared, the rest waits


def test_housekeeping_removes_old_conversations_and_unused_images(lab):
    quick = lab.scenario("old", [say("hi")])
    old = lab.submit(f"{quick} soon forgotten", repo="demo")
    kept = lab.submit(f"{quick} still fresh", repo="demo")
    path = lab.conversation_dir(old["conversation_id"]) / "conversation.json"
    month_ago = time.time() - 30 * 86400
    os.utime(path, (month_ago, month_ago))
    lab.guest("sh", "-ec", imaged_repo("prune-me"))
    marker = lab.scenario("prune-image", [say("ok")])
    assert lab.submit(f"{marker} build it", repo="imaged", timeout=180)["outcome"] == "success"
    old_tag = re.findall(r"image (localhost/airut-repo:\w+)", lab.journal(
        "SYSLOG_IDENTIFIER=airut-runner"))[-1]
    lab.guest("sh", "-ec", MERGE_V2.replace("s/v1/v2/", "s/prune-me/replacement/"))
    assert lab.submit(f"{marker} rebuild", repo="imaged", timeout=180)["outcome"] == "success"

    lab.guest("systemctl", "reload", "airut-runner")  # starts airut-housekeeping.service
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (path.parent.exists() or lab.guest(
            "podman", "image", "exists", old_tag, check=False).returncode == 0):
        time.sleep(0.2)
    assert not path.parent.exists()
    assert lab.conversation_dir(kept["conversation_id"]).exists()
    assert lab.guest("podman", "image", "exists", old_tag, check=False).returncode == 1
    assert lab.guest("podman", "image", "exists", "localhost/airut-base:latest",
                     check=False).returncode == 0  # not airut's to prune
    journal = lab.journal("-u", "airut-housekeeping")
    assert f"removed conversation {old['conversation_id']}" in journal
    assert "pruned" in journal and old_tag in journal


def test_restarted_runner_removes_what_a_crash_left_behind(lab):
    lab.guest("podman", "create", "--name", "airut-20200101T000000000-dead00",
              "--label", "airut.task=20200101T000000000-dead00",
              "localhost/airut-base:latest", "true")
    lab.guest("podman", "create", "--name", "airut-not-a-task", "localhost/airut-base:latest",
              "true")  # not airut's: a name alone proves nothing
    lab.guest("podman", "network", "create", "--label", "airut.task=20200101T000000000-dead00",
              "airut-20200101T000000000-dead00")
    lab.guest("systemctl", "restart", "airut-runner")
    assert lab.guest("podman", "container", "exists", "airut-20200101T000000000-dead00",
                     check=False).returncode == 1
    assert lab.guest("podman", "network", "exists", "airut-20200101T000000000-dead00",
                     check=False).returncode == 1
    journal = lab.journal("-u", "airut-runner")
    assert "removed leftover container airut-20200101T000000000-dead00" in journal
    assert "removed leftover network airut-20200101T000000000-dead00" in journal
    assert lab.guest("podman", "container", "exists", "airut-not-a-task",
                     check=False).returncode == 0
    lab.guest("podman", "rm", "airut-not-a-task")
    marker = lab.scenario("after-cleanup", [say("fine")])
    assert lab.submit(f"{marker} still working?", repo="demo")["outcome"] == "success"
