"""The operator's commands' own logic: durations, unit names, queue depths, the task
list from conversations and the spool, the journal query of `airut logs`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from airut_cli import operate
from airut_core import config as config_mod
from airut_core import conversation
from airut_core.conversation import Conversation, ReplySummary
from airut_core.paths import Spool
from airut_core.records import TaskRecord
from airut_core.tasks import queue_depths

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200),
                                               ("1.5d", 129600)])
def test_since_takes_a_duration(text, seconds):
    assert operate.parse_since(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "2", "2w", "h", "-"])
def test_since_refuses_what_is_not_a_duration(text):
    with pytest.raises(ValueError, match="expected a duration like 90s"):
        operate.parse_since(text)


def test_a_task_unit_names_its_task_and_a_build_unit_none():
    assert operate._task_of("airut-task-0a857bea-20261202T064742534-592dc2.service") \
        == "20261202T064742534-592dc2"
    assert operate._task_of("airut-build-3f2a.service") == "-"


@pytest.fixture
def cfg(tmp_path: Path) -> config_mod.Config:
    text = f"paths: {{spool: {tmp_path}/spool, state: {tmp_path}/state}}\n" \
           "repos: {demo: {repo_url: x}, other: {repo_url: y}}\n"
    return config_mod.parse(text, "airut.yaml")


def test_tasks_come_from_conversations_and_the_spool_newest_first(cfg):
    state = Path(cfg.paths.state)
    (state / "conversations").mkdir(parents=True)
    for cid, repo, task, when in (("0000000a", "demo", "20261101T000000000-aaaaaa", "2026-11-01"),
                                  ("0000000b", "other", "20261102T000000000-bbbbbb",
                                   "2026-11-02")):
        (state / "conversations" / cid).mkdir()
        conversation.save(state, Conversation(
            conversation_id=cid, repo=repo, model="sonnet", replies=[ReplySummary(
                task_id=task, outcome="success", time=f"{when}T10:00:00+00:00",
                sender="alice@corp.test", duration_ms=2500, cost_usd=0.05,
                unit=f"airut-task-{cid}-{task}.service")]))
    spool = Spool(cfg.paths.spool)
    waiting = TaskRecord(repo="demo", channel="local", reply_to="t", sender="bob", text="hi")
    spool.incoming.ensure().put(waiting.task_id, waiting.to_dict())
    found = operate.tasks(cfg)
    assert [t.outcome for t in found] == ["queued", "success", "success"]
    assert found[1].task == "20261102T000000000-bbbbbb" and found[1].duration_s == 2.5
    assert [t.repo for t in operate.tasks(cfg, repo="demo")] == ["demo", "demo"]
    # Finished long ago: out of --since; waiting work is always shown.
    assert [t.outcome for t in operate.tasks(cfg, since=timedelta(hours=1))] == ["queued"]
    depths = queue_depths(Path(cfg.paths.spool))
    assert depths["incoming"] == 1 and depths["active"] == 0


def test_logs_match_the_task_and_its_unit_and_refuse_a_bad_id(cfg, monkeypatch):
    monkeypatch.setattr(operate, "task_units", lambda cfg, task: [f"airut-task-x-{task}.service"])
    command = operate.logs_command(cfg, "20261202T000000000-bbbbbb", follow=True)
    assert command[-4:] == ["AIRUT_TASK=20261202T000000000-bbbbbb", "+",
                            "UNIT=airut-task-x-20261202T000000000-bbbbbb.service", "-f"]
    with pytest.raises(ValueError, match="not a task id"):
        operate.logs_command(cfg, "x; rm -rf /", follow=False)


def test_check_names_a_repository_without_its_credentials():
    """`airut check` talks to the real git; what it says of an unreachable URL must not
    carry the token in it (the runner's mirror hides it the same way)."""
    from airut_cli.check import Failed, _repository

    with pytest.raises(Failed) as e:
        _repository("http://airut:TOKEN-SECRET@127.0.0.1:1/demo.git")
    assert "TOKEN-SECRET" not in str(e.value)
    assert str(e.value).startswith("cannot reach http://127.0.0.1:1/demo.git: ")


def test_what_others_wrote_is_shown_not_obeyed(capsys):
    line = operate.TaskLine("20261102T000000000-bbbbbb", None, "demo",
                            "\x1b]52;c;cm0gLXJmIH4=\x07eve@x", "success", "2026-11-02T10:00")
    operate.print_tasks([line])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b]52;c;" in out
