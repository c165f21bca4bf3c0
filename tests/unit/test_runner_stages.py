"""The runner's loop and stages, item by item: one bad item never stops the others.

A real spool, real git, real files and threads; systemd and podman are replaced by
small stand-ins that record what was asked of them (the system tests run the real
ones). A "unit" here ends when the test writes its finished/ marker, as the unit's
ExecStopPost would.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from airut_core import config
from airut_core.records import ControlRecord, TaskRecord
from airut_core.spool import Stage
from airut_runner import control, daemon, disk, finish, units
from airut_runner.context import Refused


class FakeSystemd:
    def __init__(self) -> None:
        self.units: dict[str, dict] = {}  # loaded units and their properties
        self.refuse: set[str] = set()  # names whose start fails like a masked unit
        self.started: list[str] = []

    def start(self, name: str, properties: dict) -> bool:
        if name in self.refuse:
            raise RuntimeError(f"Unit {name} is masked.")
        if name in self.units:
            return False
        self.units[name] = properties
        self.started.append(name)
        return True

    def start_unit(self, name: str) -> None:
        self.started.append(name)

    def stop(self, name: str) -> bool:
        return self.units.pop(name, None) is not None

    def active_state(self, name: str) -> str | None:
        return "active" if name in self.units else None

    def loaded(self, prefix: str = units.UNIT_PREFIX) -> dict[str, str]:
        return {n: "active" for n in self.units if n.startswith(prefix)}

    def close(self) -> None:
        pass


class FakePodman:
    def __init__(self) -> None:
        self.networks: set[str] = set()

    def create_network(self, name, task, subnet=None) -> str:
        self.networks.add(name)
        return "10.88.0.1"

    def remove_network(self, name) -> None:
        self.networks.discard(name)

    def task_subnets(self) -> set[str]:
        return set()

    def image_created(self, tag) -> float:
        return time.time()

    def container_upper_dir(self, name) -> None:
        return None

    def remove_leftover_containers(self, keep) -> list[str]:
        return []

    def remove_leftover_networks(self, keep) -> list[str]:
        return []


@pytest.fixture
def runner(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README.md").write_text("hi\n")
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@x",
                    "commit", "-qam", "x", "--allow-empty"], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@x",
                    "commit", "-qm", "y"], check=True)
    claude = tmp_path / "claude"
    claude.write_text("")
    text = json.dumps({
        "paths": {"spool": str(tmp_path / "spool"), "state": str(tmp_path / "state")},
        "execution": {"retry_delay": 0, "max_concurrent": 2},
        "agent": {"claude_binary": str(claude), "host_uid_base": 100000, "uid_ranges": 8},
        "repos": {"demo": {"repo_url": str(repo), "network": {"sandbox": False}},
                  "other": {"repo_url": str(repo), "network": {"sandbox": False}}}})
    cfg = config.parse(text, "test.yaml")
    # Giving files to the container's ids is for the system tests (it needs root).
    monkeypatch.setattr(os, "lchown", lambda *a: None)
    r = daemon.Runner(cfg, systemd=FakeSystemd(), podman=FakePodman())
    yield r
    r.ctx.pool.shutdown(wait=True)


def submit(runner, **fields) -> str:
    task = TaskRecord(repo="demo", channel="local", reply_to="me", sender="me@x", text="hi",
                      **fields)
    runner.ctx.spool.incoming.ensure().put(task.task_id, task.to_dict())
    return task.task_id


def put_raw(runner, name: str, record: dict) -> None:
    runner.ctx.spool.incoming.ensure().put(name, record)


def spin(runner, until, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.tick()
        if until():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def unit_of(runner, task: str) -> str | None:
    return runner.ctx.running.get(task)


def end_unit(runner, task: str, result: str = "success", events: list[str] = ()) -> None:
    """The unit's container wrote `events`, then the unit ended."""
    ctx = runner.ctx
    unit = ctx.running[task]
    cid = ctx.conversation_of(task)
    with open(ctx.state_dir / "conversations" / cid / "events.jsonl", "a") as f:
        f.writelines(line + "\n" for line in events)
    ctx.systemd.units.pop(unit, None)
    Stage(ctx.spool.finished.path).ensure().put(task, {"service_result": result,
                                                       "exit_status": "0"})


def reply_of(runner, task: str) -> dict | None:
    path = runner.ctx.spool.outgoing("local").file(task)
    return json.loads(path.read_text()) if path.exists() else None


RESULT = json.dumps({"type": "result", "session_id": "s-1", "result": "done",
                     "total_cost_usd": 0.01, "num_turns": 1, "duration_ms": 5})


def answered_conversation(runner) -> str:
    """A conversation whose first task ran and was answered: its id."""
    first = submit(runner)
    spin(runner, lambda: unit_of(runner, first))
    end_unit(runner, first, events=[RESULT])
    spin(runner, lambda: reply_of(runner, first))
    return reply_of(runner, first)["conversation_id"]


def test_a_task_runs_and_is_answered(runner):
    task = submit(runner)
    spin(runner, lambda: unit_of(runner, task))
    end_unit(runner, task, events=[RESULT])
    spin(runner, lambda: reply_of(runner, task))
    assert reply_of(runner, task)["outcome"] == "success"
    assert not runner.ctx.spool.active.exists(task)


def test_records_of_wrong_types_are_set_aside_and_a_good_one_runs(runner):
    put_raw(runner, "20200101T000000000-aaaaaa", {
        **TaskRecord(repo="demo", channel="local", reply_to="me", sender="me", text="x",
                     task_id="20200101T000000000-aaaaaa").to_dict(),
        "conversation_id": ["a", "b"]})
    put_raw(runner, "20200101T000000001-bbbbbb", {"schema": "airut.task/1", "repo": 7})
    good = submit(runner)
    spin(runner, lambda: unit_of(runner, good))
    failed = runner.ctx.spool.failed("incoming")
    assert failed.exists("20200101T000000000-aaaaaa") and failed.exists(
        "20200101T000000001-bbbbbb")
    record = failed.read("20200101T000000000-aaaaaa")
    assert "conversation_id" in record["failures"][0]["reason"]
    # The first names a channel and an address: its sender is told.
    assert reply_of(runner, "20200101T000000000-aaaaaa")["outcome"] == "failed"


def test_attachments_outside_the_spool_are_refused(runner):
    task = submit(runner, attachments_dir="/etc")
    spin(runner, lambda: reply_of(runner, task))
    assert "attachments" in reply_of(runner, task)["text"]
    assert runner.ctx.spool.failed("incoming").exists(task)


def test_forged_output_cannot_poison_the_conversation(runner):
    task = submit(runner)
    spin(runner, lambda: unit_of(runner, task))
    end_unit(runner, task, result="exit-code", events=[
        '{"type":"result","usage":"x","total_cost_usd":"1","session_id":{"a":1},"result":7}'])
    spin(runner, lambda: reply_of(runner, task))
    cid = reply_of(runner, task)["conversation_id"]
    again = submit(runner, conversation_id=cid)
    spin(runner, lambda: unit_of(runner, again))  # conversation.json still loads
    assert runner.ctx.systemd.units[runner.ctx.running[again]]


def test_a_stop_for_a_vanished_unit_is_done_with(runner):
    task = submit(runner)
    spin(runner, lambda: unit_of(runner, task))
    runner.ctx.systemd.units.clear()  # gone, without its marker
    Stage(runner.ctx.spool.control.path).ensure().put(
        "20200101T000000000-cccccc", ControlRecord(task_id=task).to_dict())
    spin(runner, lambda: reply_of(runner, task))
    assert reply_of(runner, task)["outcome"] == "stopped"
    assert runner.ctx.spool.control.names() == []


def put_forged_merge(runner) -> dict:
    """A channel's record that claims to carry the runner's notes: another sender merged."""
    forged = TaskRecord(repo="demo", channel="local", reply_to="me", sender="me@x",
                        text="hi").to_dict()
    forged["state"] = {"merged": [{"task_id": "20200101T000000000-aaaaaa",
                                   "reply_to": "someone-else"}]}
    put_raw(runner, forged["task_id"], forged)
    return forged


def test_a_set_aside_channel_record_answers_only_its_own_sender(runner):
    forged = put_forged_merge(runner)
    spin(runner, lambda: reply_of(runner, forged["task_id"]))
    reply = reply_of(runner, forged["task_id"])
    assert reply["reply_to"] == "me" and reply["outcome"] == "failed"
    assert reply.get("merged_reply_to", []) == [] and reply.get("merged_task_ids", []) == []


def test_a_stop_for_a_waiting_record_checks_it_like_a_claim(runner):
    """A channel's record never reaches active/ unchecked, not even to be stopped."""
    forged = put_forged_merge(runner)
    with pytest.raises(Refused, match="the runner's own notes"):
        control.stop(runner.ctx, forged["task_id"], "test")
    assert not runner.ctx.spool.active.exists(forged["task_id"])
    good = submit(runner)
    assert control.stop(runner.ctx, good, "test")
    spin(runner, lambda: reply_of(runner, good))
    assert reply_of(runner, good)["outcome"] == "stopped"


def test_a_lost_task_whose_ending_fails_once_is_not_run_again(runner, monkeypatch):
    task = submit(runner)
    spin(runner, lambda: unit_of(runner, task))
    runner.ctx.systemd.units.clear()  # vanished without its marker
    real, calls = finish.summarize, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("No space left on device")
        return real(*args)
    monkeypatch.setattr(finish, "summarize", flaky)
    spin(runner, lambda: reply_of(runner, task))
    assert len(calls) == 2 and reply_of(runner, task)["outcome"] == "failed"
    assert len([u for u in runner.ctx.systemd.started if task in u]) == 1  # run once


def test_a_build_unit_that_cannot_start_frees_its_slot(runner, tmp_path):
    repo = Path(runner.cfg.repos["demo"].repo_url)
    (repo / ".airut/container").mkdir(parents=True)
    (repo / ".airut/container/Dockerfile").write_text("FROM x\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@x",
                    "commit", "-qm", "image"], check=True)
    runner.ctx.podman.image_created = lambda tag: None  # not built yet
    tree = subprocess.run(["git", "-C", str(repo), "rev-parse", "main:.airut/container"],
                          capture_output=True, text=True, check=True).stdout.strip()
    runner.ctx.systemd.refuse.add(f"airut-build-{tree[:20]}.service")
    task = submit(runner)
    spin(runner, lambda: reply_of(runner, task))
    assert runner.ctx.building == {} and runner.ctx.has_slot()
    record = runner.ctx.spool.failed("active").read(task)
    assert len(record["failures"]) == 3
    assert all("masked" in f["reason"] for f in record["failures"])


def test_a_conversation_waits_while_its_task_waits_for_a_retry(runner):
    cid = answered_conversation(runner)
    runner.ctx.tasks.delay = 3600  # the first failure makes a task wait an hour
    good_url = runner.cfg.repos["demo"].repo_url
    runner.cfg.repos["demo"].repo_url = "/nonexistent"
    # The mirror exists: a failed fetch of an unreachable origin
    subprocess.run(["git", "-C", str(runner.ctx.state_dir / "repos/demo/mirror.git"),
                    "remote", "set-url", "origin", "/nonexistent"], check=True)
    a = submit(runner, conversation_id=cid)
    spin(runner, lambda: runner.ctx.tasks.waiting(a))
    b = submit(runner, conversation_id=cid)
    for _ in range(20):
        runner.tick()
        time.sleep(0.01)
    assert runner.ctx.spool.incoming.exists(b)  # B waits for A
    assert b not in runner.ctx.busy()
    runner.cfg.repos["demo"].repo_url = good_url


def test_a_task_that_keeps_failing_is_set_aside_with_its_reasons(runner):
    runner.cfg.repos["demo"].repo_url = "/nonexistent"
    task = submit(runner)
    spin(runner, lambda: reply_of(runner, task))
    record = runner.ctx.spool.failed("active").read(task)
    assert [("cannot clone" in f["reason"]) for f in record["failures"]] == [True] * 3
    assert "could not run this task" in reply_of(runner, task)["text"]


def test_a_conversation_of_another_repository_is_not_resumed(runner):
    cid = answered_conversation(runner)
    task = TaskRecord(repo="other", channel="local", reply_to="me", sender="me", text="x",
                      conversation_id=cid)
    runner.ctx.spool.incoming.put(task.task_id, task.to_dict())
    spin(runner, lambda: unit_of(runner, task.task_id))
    assert runner.ctx.conversation_of(task.task_id) != cid


def test_prompt_too_long_in_a_new_conversation_is_answered_not_retried(runner):
    task = submit(runner)
    spin(runner, lambda: unit_of(runner, task))
    end_unit(runner, task, result="exit-code", events=[json.dumps(
        {"type": "result", "is_error": True, "result": "Prompt is too long",
         "api_error_status": 400, "terminal_reason": "prompt_too_long"})])
    spin(runner, lambda: reply_of(runner, task))
    assert reply_of(runner, task)["outcome"] == "prompt_too_long"
    assert len(runner.ctx.systemd.started) == 1  # no second run


def test_messages_of_two_channels_never_merge(runner):
    cid = answered_conversation(runner)
    by_mail = TaskRecord(repo="demo", channel="email-demo", reply_to="{}", sender="a@x",
                         text="by mail", conversation_id=cid)
    runner.ctx.spool.incoming.put(by_mail.task_id, by_mail.to_dict())
    local = submit(runner, conversation_id=cid)
    # Whichever is older runs (names made in one millisecond sort by their random part);
    # the other waits for the conversation's next task instead of merging into it.
    spin(runner, lambda: unit_of(runner, by_mail.task_id) or unit_of(runner, local))
    first, second = (by_mail.task_id, local) if unit_of(runner, by_mail.task_id) else (
        local, by_mail.task_id)
    assert runner.ctx.spool.incoming.exists(second)
    assert not runner.ctx.state(first).get("merged")


def test_a_channel_cannot_change_a_claimed_record_through_its_file(runner, tmp_path):
    task = TaskRecord(repo="demo", channel="local", reply_to="me", sender="me", text="x")
    runner.ctx.spool.incoming.put(task.task_id, task.to_dict())
    kept = tmp_path / "kept-link"
    os.link(runner.ctx.spool.incoming.file(task.task_id), kept)  # the writer keeps a link
    spin(runner, lambda: unit_of(runner, task.task_id))
    kept.write_text(json.dumps({**task.to_dict(), "attachments_dir": "/etc"}))
    assert runner.ctx.spool.active.read(task.task_id).get("attachments_dir") is None


@pytest.mark.parametrize("carried", [{"state": {"merged": [], "unit": "x.service"}},
                                     {"failures": [{"reason": "x"}]}])
def test_a_channel_cannot_write_the_runners_notes(runner, carried):
    task = TaskRecord(repo="demo", channel="local", reply_to="me", sender="me", text="x")
    runner.ctx.spool.incoming.put(task.task_id, {**task.to_dict(), **carried})
    spin(runner, lambda: runner.ctx.spool.failed("incoming").exists(task.task_id))
    assert "runner's own notes" in reply_of(runner, task.task_id)["text"]


def test_a_task_id_already_claimed_is_not_claimed_again(runner):
    task = submit(runner)
    spin(runner, lambda: unit_of(runner, task))
    same = runner.ctx.spool.active.read(task)
    runner.ctx.spool.incoming.put(task, {**same, "text": "something else"})
    spin(runner, lambda: runner.ctx.spool.failed("incoming").exists(task))
    assert runner.ctx.spool.active.read(task)["text"] == "hi"  # the running task's record
    # The same record again (a crash between the claim's two steps): quietly dropped.
    runner.ctx.spool.incoming.put(task, {k: v for k, v in same.items() if k != "state"})
    spin(runner, lambda: not runner.ctx.spool.incoming.exists(task))
    assert list(runner.ctx.systemd.started).count(runner.ctx.running[task]) == 1


def test_attachments_are_copied_once_and_bounded(runner):
    attachments = runner.ctx.spool.root / "attachments" / "t1"
    attachments.mkdir(parents=True)
    (attachments / "a.txt").write_text("a")
    with open(attachments / "sparse.bin", "wb") as f:
        f.truncate(1 << 40)  # a terabyte that costs its writer nothing
    task = submit(runner, attachments_dir=str(attachments))
    spin(runner, lambda: unit_of(runner, task))
    assert runner.ctx.state(task)["attached"] == ["a.txt"]
    cid = runner.ctx.conversation_of(task)
    inbox = runner.ctx.state_dir / "conversations" / cid / "inbox"
    assert sorted(p.name for p in inbox.iterdir()) == ["a.txt"]


def test_disk_usage_counts_files_and_follows_no_link(tmp_path):
    from airut_runner import disk
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(100):
        (tree / f"empty-{i}").touch()
    (tree / "elsewhere").symlink_to("/usr")
    assert 100 * disk.INODE_BYTES <= disk.usage(tree) < 110 * disk.INODE_BYTES + (1 << 20)


def test_a_tree_built_to_defeat_the_disk_watch_is_unmeasurable(tmp_path):
    """Python's own walk recursed, one descriptor per level: a deep enough tree made
    every measurement fail, and the task ran on unbudgeted."""
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "f").write_bytes(b"x")
    here = deep
    for _ in range(disk.MAX_DEPTH - 1):
        here = here / "d"
        here.mkdir()
    assert disk.usage(deep) >= disk.MAX_DEPTH * disk.INODE_BYTES  # at the limit: measured
    (here / "d").mkdir()
    with pytest.raises(disk.Unmeasurable, match="nested more than"):
        disk.usage(deep)
