"""The agent and the sender are adversaries: attacks on the runner (root on the host).

Each test attacks through the real parts: a task container running the real Claude
Code CLI writes what an agent can write (links, forged stream lines, files), or a
channel's record carries what a hostile sender or a broken channel could put there.
After each attack the runner must still serve the next task.
"""

from __future__ import annotations

import json
import time

from airut_core.records import TaskRecord
from airut_core.spool import Stage, new_name
from tests.system.lab import bash, say
from tests.system.test_runner import imaged_repo


def put_task(lab, **fields) -> str:
    """A task record written into incoming/ as a channel would, bypassing `airut submit`."""
    record = TaskRecord(channel="local", reply_to="tester", sender="tester@corp.test",
                        **{"repo": "demo", "text": "hello", **fields}).to_dict()
    Stage(lab.spool / "incoming").put(record["task_id"], record)
    return record["task_id"]


def runner_alive(lab, text: str = "still serving") -> None:
    marker = lab.scenario("alive", [say("{prompt}")])
    reply = lab.submit(f"{marker} {text}", repo="demo", timeout=90)
    assert reply["outcome"] == "success", reply
    assert text in reply["text"]


# -- the agent's files --------------------------------------------------------------

def test_a_link_the_agent_leaves_in_the_inbox_is_not_followed(lab):
    lab.guest("rm", "-f", "/etc/airut-pwned")  # the guest's root survives between runs
    plant = lab.scenario("plant-link", [
        bash("ln -s /etc/airut-pwned /inbox/notes.txt && ls -l /inbox"), say("planted")])
    first = lab.submit(f"{plant} plant a link", repo="demo")
    assert first["outcome"] == "success", first
    conv = first["conversation_id"]
    attachments = lab.spool / "attachments" / new_name()
    attachments.mkdir(parents=True)
    (attachments / "notes.txt").write_text("root writes this\n")
    read = lab.scenario("read-inbox", [bash("ls /inbox; cat /inbox/notes*"),
                                       say("{tool_result}")])
    task = put_task(lab, conversation_id=conv, text=f"{read} read the inbox",
                    attachments_dir=f"/var/spool/airut/attachments/{attachments.name}")
    reply = lab.wait_reply(task)
    assert reply["outcome"] == "success", reply
    assert lab.guest("test", "-e", "/etc/airut-pwned", check=False).returncode == 1
    assert "root writes this" in reply["text"]  # delivered under a name of its own


def test_attachments_come_only_from_the_spool(lab):
    marker = lab.scenario("list-inbox", [bash("ls /inbox"), say("inbox: {tool_result}")])
    # A channel (or whoever can write incoming/) names the configuration directory,
    # which holds the model keys.
    task = put_task(lab, text=f"{marker} what did I attach?", attachments_dir="/etc/airut")
    reply = lab.wait_reply(task)
    assert "airut.yaml" not in reply["text"], reply
    assert (lab.spool / "failed/incoming" / f"{task}.json").exists()
    assert "attachments" in reply["text"]
    runner_alive(lab)


# -- the agent's output stream ---------------------------------------------------------

# The agent cannot open its own output pipe (it belongs to host root, outside the
# container's user namespace), but it is the same user as the CLI, which it may trace:
# it makes the CLI itself write a forged line into its standard output (a write()
# injected with ptrace), then kills it, so the forged line is the run's last word.
INJECT = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
SEIZE, INTERRUPT, GETREGS, SETREGS, STEP, DETACH = 0x4206, 0x4207, 12, 13, 9, 17
WALL = 0x40000000

class Regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs "
        "eflags rsp ss fs_base gs_base ds es fs gs").split()]

def call(request, pid, data=None):
    if libc.ptrace(request, pid, None, data) == -1:
        raise OSError(ctypes.get_errno(), f"ptrace {request}")

pid, line = int(sys.argv[1]), sys.argv[2].encode() + b"\n"
call(SEIZE, pid)
call(INTERRUPT, pid)
os.waitpid(pid, WALL)
saved = Regs()
call(GETREGS, pid, ctypes.byref(saved))
with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
    for region in maps:
        if " r-xp " in region:
            lo, hi = (int(x, 16) for x in region.split()[0].split("-"))
            mem.seek(lo)
            at = mem.read(min(hi - lo, 1 << 22)).find(b"\x0f\x05")  # a syscall instruction
            if at >= 0:
                break
    buf = saved.rsp - 1024
    mem.seek(buf)
    mem.write(line)
regs = Regs.from_buffer_copy(saved)
regs.rip, regs.rax, regs.orig_rax = lo + at, 1, 2**64 - 1  # write(1, buf, len)
regs.rdi, regs.rsi, regs.rdx = 1, buf, len(line)
call(SETREGS, pid, ctypes.byref(regs))
call(STEP, pid)
os.waitpid(pid, WALL)
os.kill(pid, 9)
"""
FORGED = [
    '{"type":"result","usage":"x"}',
    '{"type":"result","total_cost_usd":"1","num_turns":"many","duration_ms":[1]}',
    '{"type":"result","session_id":{"a":1},"result":7,"errors":{"x":1}}',
    '{"type":"result","session_id":"../../../../etc/passwd","api_error_status":"401"}',
    '{"type":"assistant","message":{"content":"not a list"}}',
]


def test_forged_stream_lines_neither_stop_the_runner_nor_poison_the_conversation(lab):
    first = lab.submit("[[scenario:echo]] begin", repo="demo")
    conv = first["conversation_id"]
    inject = f"cat > /tmp/inject.py <<'PY'\n{INJECT}\nPY\n"
    for i, line in enumerate(FORGED):
        forge = lab.scenario(f"forge-{i}", [
            bash(inject + f"python3 /tmp/inject.py $(pgrep -x claude) '{line}'"),
            say("not reached")])
        reply = lab.submit(f"{forge} forge your output", conversation=conv, timeout=90)
        assert reply["outcome"] == "failed", reply
        events = (lab.conversation_dir(conv) / "events.jsonl").read_text().splitlines()
        assert events[-1] == line, events[-1][:300]  # the forged line was the last word
        state = lab.conversation(conv)  # still a readable conversation.json
        assert state["session_id"] is None or isinstance(state["session_id"], str)
        assert state["session_id"] != "../../../../etc/passwd"
        for summary in state["replies"]:
            for value in summary["usage"].values():
                assert isinstance(value, int | float) and not isinstance(value, bool)
    again = lab.scenario("after-forge", [say("resumed fine")])
    follow = lab.submit(f"{again} are you there?", conversation=conv, timeout=90)
    assert follow["outcome"] == "success", follow
    runner_alive(lab)


def test_hostile_text_in_the_answer_reaches_the_user_harmlessly(lab):
    # What the agent says is the model's text: lone surrogates (valid JSON escapes, no
    # valid Unicode) and terminal control sequences, in an answer of half a megabyte.
    text = "start \ud800 middle \x1b]52;c;ZXZpbA==\x07 " + "x" * 500_000 + " end"
    marker = lab.scenario("hostile-text", [say(text)])
    out = lab.guest("airut", "submit", "--repo", "demo", f"{marker} say it", check=False,
                    timeout=130)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("start \ufffd middle \\x1b]52;c;"), out.stdout[:100]
    assert "[airut: the answer was cut at 100000 characters]" in out.stdout
    assert "\x1b" not in out.stdout
    runner_alive(lab)


# -- records from channels ---------------------------------------------------------------

def test_records_with_wrong_types_are_quarantined_and_the_loop_goes_on(lab):
    bad = []
    for i, fields in enumerate([{"conversation_id": ["a", "b"]}, {"text": {"x": 1}},
                                {"repo": 7}, {"attachments_dir": ["x"]}]):
        name = f"20200101T00000000{i}-bad{i:03d}"
        record = {"schema": "airut.task/1", "repo": "demo", "channel": "local",
                  "reply_to": "x", "sender": "x", "text": "x", "task_id": name, **fields}
        Stage(lab.spool / "incoming").put(name, record)
        bad.append(name)
    runner_alive(lab)
    for name in bad:
        assert not (lab.spool / "incoming" / f"{name}.json").exists(), name
        assert any((lab.spool / "failed" / stage / f"{name}.json").exists()
                   for stage in ("incoming", "active")), name


def test_a_stop_request_for_a_vanished_unit_does_not_stall_the_loop(lab):
    marker = lab.scenario("vanish", [bash("sleep 100"), say("never")])
    task = lab.submit_no_wait(f"{marker} vanish", repo="demo")
    unit = lab.wait_for_unit(task)
    pid = lab.guest("systemctl", "show", "-p", "MainPID", "--value",
                    "airut-runner").stdout.strip()
    lab.guest("kill", "-STOP", pid)
    try:
        lab.guest("systemctl", "stop", unit)
        (lab.spool / "finished" / f"{task}.json").unlink(missing_ok=True)  # its marker lost
        lab.guest("airut", "stop", task)
    finally:
        lab.guest("kill", "-CONT", pid)
    reply = lab.wait_reply(task, timeout=60)
    assert reply["outcome"] in ("stopped", "failed"), reply
    runner_alive(lab)


def test_a_conversation_of_another_repository_is_not_continued(lab):
    secret = lab.scenario("remember-secret", [say("Noted: {prompt}")])
    first = lab.submit(f"{secret} the launch code is 0000", repo="demo")
    conv = first["conversation_id"]
    probe = lab.scenario("what-code", [bash("ls /workspace; echo; cat /workspace/* | head"),
                                       say("{tool_result}")])
    task = put_task(lab, repo="cpu", conversation_id=conv, text=f"{probe} what is the code?")
    reply = lab.wait_reply(task)
    assert reply["conversation_id"] != conv, reply
    assert lab.conversation(reply["conversation_id"])["repo"] == "cpu"
    assert lab.conversation(conv)["replies"][-1]["task_id"] == first["task_id"]
    request = next(r for r in lab.model_requests() if "what is the code?" in json.dumps(r))
    assert "launch code" not in json.dumps(request["body"]["messages"])
    assert "belongs to repository demo" in lab.journal(f"AIRUT_TASK={task}")


def test_a_conversation_waits_while_its_task_waits_for_a_retry(lab):
    first = lab.submit("[[scenario:echo]] start", repo="demo")
    conv = first["conversation_id"]
    config = lab.root / "etc/airut/airut.yaml"
    original = config.read_text()
    lab.guest("mv", "/srv/git/demo.git", "/srv/git/demo.git.away")
    try:
        config.write_text(original.replace("retry_delay: 0.2", "retry_delay: 4"))
        lab.reload_runner()
        a = put_task(lab, conversation_id=conv, text="[[scenario:echo]] A")
        deadline = time.monotonic() + 20
        while "cannot fetch" not in lab.journal(f"AIRUT_TASK={a}"):
            assert time.monotonic() < deadline, "A never failed to fetch"
            time.sleep(0.2)
        assert (lab.spool / "active" / f"{a}.json").exists()
        # A cannot fetch and waits for its retry in active/; B arrives meanwhile.
        b = put_task(lab, conversation_id=conv, text="[[scenario:echo]] B")
        time.sleep(2)
        assert (lab.spool / "incoming" / f"{b}.json").exists(), "B must wait for A"
    finally:
        lab.guest("mv", "/srv/git/demo.git.away", "/srv/git/demo.git")
        config.write_text(original)
        lab.reload_runner()
    ra, rb = lab.wait_reply(a, timeout=90), lab.wait_reply(b, timeout=90)
    assert ra["outcome"] == "success" and rb["outcome"] == "success", (ra, rb)
    order = [r["task_id"] for r in lab.conversation(conv)["replies"]]
    assert order.index(a) < order.index(b), order


def test_a_build_unit_that_cannot_start_does_not_hold_a_slot(lab):
    lab.guest("sh", "-ec", imaged_repo("masked"))
    tree = lab.guest("git", "-C", "/srv/git/imaged.git", "rev-parse",
                     "main:.airut/container").stdout.strip()
    unit = f"airut-build-{tree[:20]}.service"
    lab.guest("systemctl", "mask", unit)  # StartTransientUnit now fails for this name
    try:
        reply = lab.submit("[[scenario:echo]] build me", repo="imaged", timeout=90)
        assert reply["outcome"] == "failed", reply
        time.sleep(2)
        status = lab.guest("systemctl", "show", "-p", "StatusText", "--value",
                           "airut-runner").stdout
        assert "waiting for an image" not in status, status
    finally:
        lab.guest("systemctl", "unmask", unit)
    runner_alive(lab)


# -- disk ---------------------------------------------------------------------------------

def fill(lab, path: str) -> dict:
    """A task of repository disk (64 MiB) writing 200 MiB into path: its reply."""
    name = lab.scenario(f"fill-{path.strip('/').replace('/', '-')}", [
        bash(f"dd if=/dev/zero of={path} bs=1M count=200 status=none; sleep 60"),
        say("never")])
    return lab.submit(f"{name} fill {path}", repo="disk", timeout=120)


def test_a_task_over_its_disk_budget_is_stopped_and_told(lab):
    reply = fill(lab, "/workspace/big")
    assert reply["outcome"] == "disk_limit", reply
    assert "disk limit of 64 MiB" in reply["text"]
    assert "repos.disk.resource_limits.disk" in reply["text"]
    conv = reply["conversation_id"]
    assert (lab.conversation_dir(conv) / "workspace/big").exists()  # the work stays
    # Starting over the limit, a task that makes room runs to its end.
    clean = lab.scenario("make-room", [bash("rm /workspace/big && echo removed"),
                                       say("{tool_result}")])
    after = lab.submit(f"{clean} make room", conversation=conv, timeout=120)
    assert after["outcome"] == "success", after
    assert after["text"].startswith("removed")


def test_writes_into_the_containers_own_filesystem_count_too(lab):
    reply = fill(lab, "/var/tmp/big")
    assert reply["outcome"] == "disk_limit", reply


# -- the container ------------------------------------------------------------------------

def test_each_conversation_is_its_own_user(lab):
    marker = lab.scenario("touch-file", [bash("touch /workspace/mine && id -u"),
                                         say("{tool_result}")])
    first = lab.submit(f"{marker} one", repo="demo")
    second = lab.submit(f"{marker} two", repo="demo")
    owners = []
    for reply in (first, second):
        assert reply["outcome"] == "success", reply
        assert reply["text"].startswith("0")  # root inside its own namespace
        conv = reply["conversation_id"]
        uid = (lab.conversation_dir(conv) / "workspace/mine").stat().st_uid
        assert uid == lab.conversation(conv)["uid_base"] and uid >= 1_000_000_000
        owners.append(uid)
    assert owners[0] != owners[1]


NESTED = ("unshare -U true; echo unshare=$?; python3 -c \"import ctypes, os; "
          "libc = ctypes.CDLL(None, use_errno=True); "
          "r = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0); "
          "os._exit(0) if r == 0 else None; os.waitpid(r, 0) if r > 0 else None; "
          "print('clone=' + ('ok' if r > 0 else str(ctypes.get_errno())))\"")


def test_nested_user_namespaces_are_refused_unless_allowed(lab):
    marker = lab.scenario("nested-userns", [bash(NESTED), say("{tool_result}")])
    denied = lab.submit(f"{marker} nest", repo="demo")
    assert "unshare=1" in denied["text"] and "clone=1" in denied["text"], denied
    allowed = lab.submit(f"{marker} nest", repo="nested")
    assert "unshare=0" in allowed["text"] and "clone=ok" in allowed["text"], allowed


def test_the_workspace_holds_no_repository_credentials(lab):
    lab.guest("sh", "-ec", "cd /srv/git/demo.git && git update-server-info")
    lab.guest("systemd-run", "--unit=lab-git-http", "--", "python3", "-m", "http.server",
              "8099", "--bind", "127.0.0.1", "--directory", "/srv/git")
    try:
        marker = lab.scenario("read-origin", [
            # What grep finds is printed between two marker lines (matched with their
            # newline, which the command's own text lacks); the session's transcript
            # (projects/) holds this very command, token included, and is left out.
            bash("git -C /workspace remote -v; printf '%s\\n' FOUND-{; grep -rl "
                 "--exclude-dir=projects TOKEN-SECRET /workspace/.git /root/.claude; "
                 "printf '%s\\n' }-FOUND"), say("{tool_result}")])
        reply = lab.submit(f"{marker} where from?", repo="private", timeout=120)
    finally:
        lab.guest("systemctl", "stop", "lab-git-http", check=False)
    assert reply["outcome"] == "success", reply
    assert "http://127.0.0.1:8099/demo.git" in reply["text"]
    origin, _, rest = reply["text"].partition("FOUND-{\n")
    assert "TOKEN-SECRET" not in origin and "}-FOUND" in rest
    assert rest.partition("}-FOUND")[0].strip() == ""  # no file holds the token
    conv = reply["conversation_id"]
    config = (lab.conversation_dir(conv) / "workspace/.git/config").read_text()
    assert "TOKEN-SECRET" not in config and "airut:" not in config


def test_outbox_names_from_the_agent_are_made_safe(lab):
    long_name = "文" * 90 + ".txt"  # 274 bytes: more than a file name may hold elsewhere
    marker = lab.scenario("odd-names", [
        bash("printf bad > \"$(printf '/outbox/bad\\377\\376name.txt')\"; "
             f"printf long > /outbox/{long_name[:80]}; printf ok > /outbox/plain.txt; ls /outbox"),
        say("sent")])
    reply = lab.submit(f"{marker} odd names", repo="demo")
    assert reply["outcome"] == "success", reply
    names = reply["attachments"]
    assert "plain.txt" in names and len(names) == 3, names
    for name in names:
        assert name.isprintable() and len(name.encode()) <= 200  # no lone surrogates
        assert (lab.spool / "outgoing/local" / f"{reply['task_id']}.files" / name).exists()
    assert any(n.startswith("bad") and n.endswith("name.txt") for n in names)


def test_an_api_error_about_the_request_keeps_the_session(lab):
    remember = lab.scenario("keep-me", [say("Noted: {prompt}")])
    first = lab.submit(f"{remember} the word is heron", repo="demo")
    conv = first["conversation_id"]
    session = lab.conversation(conv)["session_id"]
    lab.scenario("bad-model", error={"status": 400, "type": "invalid_request_error",
                                     "message": "model: claude-nonesuch is not a valid model"})
    reply = lab.submit("[[scenario:bad-model]] and now?", conversation=conv)
    assert reply["outcome"] == "failed", reply
    assert not reply["text"].startswith("(The agent's previous session")
    assert lab.conversation(conv)["session_id"] == session


def test_the_runner_can_write_only_airuts_own_directories(lab):
    props = lab.unit_properties("airut-runner.service", "ProtectSystem", "ReadWritePaths")
    assert props["ProtectSystem"] == "strict"
    pid = lab.guest("systemctl", "show", "-p", "MainPID", "--value",
                    "airut-runner").stdout.strip()
    # In the runner's own view of the filesystem, a write that went astray (the bug the
    # agent's links would need) fails; airut's directories stay writable.
    for path in ("/etc/airut-runner-probe", "/usr/local/airut-probe", "/root/airut-probe"):
        denied = lab.guest("nsenter", "-t", pid, "-m", "touch", path, check=False)
        assert denied.returncode != 0, path
    for path in ("/var/lib/airut/probe", "/var/spool/airut/probe"):
        lab.guest("nsenter", "-t", pid, "-m", "sh", "-c", f"touch {path} && rm {path}")


def test_a_task_waits_out_a_proxy_restart(lab):
    workers = ("airut-proxy@0.service", "airut-proxy@1.service")  # the lab's two
    lab.guest("systemctl", "stop", *workers)
    try:
        task = lab.submit_no_wait("[[scenario:echo]] after the restart", repo="demo")
        deadline = time.monotonic() + 30
        while "waiting for the network sandbox" not in lab.journal(f"AIRUT_TASK={task}"):
            assert time.monotonic() < deadline, "the task never waited for the proxy"
            time.sleep(0.2)
    finally:
        lab.guest("systemctl", "start", *workers)
    reply = lab.wait_reply(task)
    assert reply["outcome"] == "success", reply  # a restart is no reason to fail a task
