"""Runner parts with real git and a real filesystem: mirror, images, outbox, outcomes."""

from __future__ import annotations

import os
import subprocess

import pytest

from airut_core import config
from airut_core.config import ConfigError, ResourceLimits
from airut_runner import images, outbox, outcome, prompt, stream
from airut_runner.mirror import Mirror
from airut_runner.outcome import Exit
from tests.unit.test_records_config import task
from tests.unit.test_runner_logic import events, result, say


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=T", "-c", "user.email=t@x", *args], cwd=cwd,
                   check=True, capture_output=True)


@pytest.fixture
def upstream(tmp_path):
    work = tmp_path / "work"
    (work / ".airut/container").mkdir(parents=True)
    (work / ".airut/container/Dockerfile").write_text("FROM base\n")
    (work / "README.md").write_text("hi\n")
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    git(work, "add", "-A")
    git(work, "commit", "-qm", "one")
    bare = tmp_path / "upstream.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    return work, bare


def push(work, bare, path, text):
    (work / path).write_text(text)
    git(work, "commit", "-qam", "change")
    git(work, "push", "-q", str(bare), "main")


def test_mirror_clones_then_fetches_and_workspaces_point_at_the_real_url(tmp_path, upstream):
    work, bare = upstream
    mirror = Mirror(tmp_path / "state", "demo", str(bare))
    mirror.update()
    assert mirror.default_branch() == "main"
    ws = tmp_path / "ws"
    mirror.clone_workspace(ws)
    origin = subprocess.run(["git", "remote", "get-url", "origin"], cwd=ws, capture_output=True,
                            text=True).stdout.strip()
    assert origin == str(bare)
    assert (ws / "README.md").read_text() == "hi\n"
    # Separate objects: the workspace can be given to another owner without the mirror.
    ws_objects = {p.stat().st_ino for p in (ws / ".git/objects").rglob("*") if p.is_file()}
    mirror_objects = {p.stat().st_ino for p in mirror.path.rglob("objects/*/*")}
    assert not ws_objects & mirror_objects

    push(work, bare, "README.md", "changed\n")
    mirror.update()
    ws2 = tmp_path / "ws2"
    mirror.clone_workspace(ws2)
    assert (ws2 / "README.md").read_text() == "changed\n"


def test_mirror_errors_name_the_repository(tmp_path):
    mirror = Mirror(tmp_path / "state", "demo", str(tmp_path / "missing.git"))
    with pytest.raises(RuntimeError, match=r"cannot clone .*missing\.git"):
        mirror.update()
    assert not mirror.path.exists()


def test_image_tag_follows_the_default_branch_content(tmp_path, upstream):
    work, bare = upstream
    mirror = Mirror(tmp_path / "state", "demo", str(bare))
    mirror.update()
    first = images.resolve(mirror, ".airut/container", "localhost/base")
    assert first.built_here and first.tag.startswith("localhost/airut-repo:")
    assert images.resolve(mirror, ".airut/container/", "x").tag == first.tag
    push(work, bare, "README.md", "unrelated\n")
    mirror.update()
    assert images.resolve(mirror, ".airut/container", "x").tag == first.tag
    push(work, bare, ".airut/container/Dockerfile", "FROM base\nRUN true\n")
    mirror.update()
    second = images.resolve(mirror, ".airut/container", "x")
    assert second.tag != first.tag
    context = tmp_path / "ctx"
    mirror.export(second.tree, context)
    assert (context / "Dockerfile").read_text() == "FROM base\nRUN true\n"
    assert images.resolve(mirror, "elsewhere", "localhost/base").tag == "localhost/base"
    assert not images.resolve(mirror, "elsewhere", "localhost/base").built_here


def test_podman_timestamps_parse():
    epoch = images.epoch("2026-11-26T19:04:09.297041656Z")
    assert epoch == pytest.approx(1795719849.297, abs=0.01)
    assert images.epoch("2026-11-26T19:04:09+01:00") == pytest.approx(1795716249, abs=1)
    assert images.epoch(1700000000) == 1700000000.0
    assert images.epoch("nonsense") is None
    assert images.is_stale(0, 24) and not images.is_stale(1e12, 24)


def test_build_unit(tmp_path):
    spec = images.ImageSpec(tag="localhost/airut-repo:abc", tree="abcdef")
    props = images.BuildUnit(spec=spec, context=tmp_path, repo="demo", spool_dir="/s",
                             timeout=600, no_cache=True).properties()
    argv = [a.decode() for a in props[b"ExecStart"][0][1]]
    assert argv[:3] == ["/usr/bin/podman", "build", "--no-cache"]
    assert "--tag=localhost/airut-repo:abc" in argv and "--pull=never" in argv
    assert [a.decode() for a in props[b"ExecStopPost"][0][1]][-4:] == [
        "--stage", "builds", "/s", "abc"]


def test_outbox_sends_regular_files_within_the_cap(tmp_path):
    box, dest = tmp_path / "outbox", tmp_path / "spool/t1.files"
    box.mkdir()
    (box / "a.txt").write_text("a" * 10)
    (box / "b.txt").write_text("b" * 10)
    (box / "c.bin").write_bytes(b"c" * 100)
    (box / "link").symlink_to("/etc/passwd")
    (box / "dir").mkdir()
    os.mkfifo(box / "pipe")
    sent = outbox.collect(box, dest, max_bytes=50)
    assert sent.names == ["a.txt", "b.txt"]
    assert sorted(os.listdir(box)) == ["c.bin", "dir", "link", "pipe"]
    note = sent.note()
    assert "c.bin (100 bytes: over the 50 bytes limit" in note
    assert "link (links are not sent)" in note and "dir/ (directories" in note
    assert "pipe (not a regular file)" in note
    assert (dest / "a.txt").read_text() == "a" * 10
    # A second attempt (after a crash) keeps what already moved.
    assert outbox.collect(box, dest, max_bytes=50).names == ["a.txt", "b.txt"]


@pytest.mark.parametrize(("status", "reason", "resumed", "expected"), [
    (401, "api_error", False, "auth_failed"),
    (403, "api_error", True, "auth_failed"),
    (429, "api_error", True, "rate_limited"),
    (529, "api_error", False, "overloaded"),
    (400, "prompt_too_long", True, outcome.PROMPT_TOO_LONG),
    (400, "prompt_too_long", False, outcome.PROMPT_TOO_LONG),
    (400, "api_error", True, "failed"),  # says nothing about the session: kept
    (404, "api_error", True, "failed"),
    (400, "api_error", False, "failed"),
    (500, "api_error", True, "failed"),
])
def test_api_errors_are_classified(status, reason, resumed, expected):
    summary = stream.parse(events(result("API Error", is_error=True, api_error_status=status,
                                         terminal_reason=reason)))
    assert outcome.classify(Exit(service_result="exit-code", exit_status="1"), False, summary,
                            resumed) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("API Error: 400 messages.3.content.0: unexpected `tool_use_id` found in `tool_result` "
     "blocks", outcome.SESSION_LOST),
    ("API Error: 400 messages: thinking blocks in the latest assistant message cannot be "
     "modified", outcome.SESSION_LOST),
    ("API Error: 400 model: claude-nonesuch is not a valid model", "failed"),
    ("API Error: 400 Your credit balance is too low", "failed"),
])
def test_only_a_rejected_history_resets_the_session(text, expected):
    summary = stream.parse(events(result(text, is_error=True, api_error_status=400)))
    fail = Exit(service_result="exit-code", exit_status="1")
    assert outcome.classify(fail, False, summary, resumed=True) == expected
    assert outcome.classify(fail, False, summary, resumed=False) == "failed"


def test_missing_session_is_a_lost_session_only_when_resuming():
    summary = stream.parse(events({"type": "result", "subtype": "error_during_execution",
                                   "is_error": True, "errors": [
                                       "No conversation found with session ID: x"]}))
    fail = Exit(service_result="exit-code", exit_status="1")
    assert outcome.classify(fail, False, summary, resumed=True) == outcome.SESSION_LOST
    assert outcome.classify(fail, False, summary, resumed=False) == "failed"
    assert "No conversation found" in summary.error_tail()


def test_limits_and_stops_win_over_api_errors():
    summary = stream.parse(events(result("x", is_error=True, api_error_status=429)))
    assert outcome.classify(Exit(service_result="timeout"), False, summary) == "timeout"
    assert outcome.classify(Exit(), True, summary) == "stopped"


def test_reply_texts_for_api_errors():
    limits = ResourceLimits()
    summary = stream.parse(events(say("x"), result("Invalid API key", is_error=True)))
    auth = outcome.reply_text("auth_failed", summary, limits, "demo")
    assert "model credentials were rejected" in auth and "repos.demo.masked_secrets" in auth
    assert "The API said: Invalid API key" in auth
    limited = outcome.reply_text("rate_limited", summary, limits)
    assert "rate-limiting" in limited and "keeps its context" in limited
    note = outcome.CONTEXT_RESET_NOTE[outcome.SESSION_LOST]
    assert outcome.reply_text("success", summary, limits, note=note).startswith(note)


def test_recovery_prompt_carries_the_last_reply():
    text = prompt.compose([task()], [], recovery="The plan was X.")
    assert "could not be continued" in text
    assert "<previous-reply>\nThe plan was X.\n</previous-reply>" in text
    assert "There is no earlier reply" in prompt.compose([task()], [], recovery="")
    assert "could not be continued" not in prompt.compose([task()], [])


def test_merged_messages_keep_their_headers_in_order():
    text = prompt.compose([task(text="one", sender="a@x"), task(text="two", sender="b@y")], [])
    assert text.index("[a@x ") < text.index("one") < text.index("[b@y ") < text.index("two")


@pytest.mark.parametrize("bad", ["/abs", "../up", "a/../../b", ".."])
def test_container_path_must_stay_inside_the_repository(bad):
    with pytest.raises(ConfigError, match="container_path: not a valid relative path"):
        config.parse(f"repos: {{demo: {{repo_url: x, container_path: '{bad}'}}}}", "f.yaml")
