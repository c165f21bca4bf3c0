"""`airut submit` and friends against a spool on disk."""

from __future__ import annotations

import threading

import pytest

from airut_core import config, conversation
from airut_core.conversation import Conversation
from airut_core.paths import Spool
from airut_core.records import ControlRecord, ReplyRecord, TaskRecord
from airut_ingest import local


@pytest.fixture
def cfg(tmp_path):
    return config.parse(f"""
paths: {{spool: {tmp_path}/spool, state: {tmp_path}/state}}
repos: {{demo: {{repo_url: /srv/git/demo.git}}, other: {{repo_url: x}}}}
""", "test.yaml")


def test_submit_writes_a_valid_task_record(cfg):
    task = local.submit(cfg, "do it", repo="demo")
    spool = Spool(cfg.paths.spool)
    assert spool.incoming.names() == [task.task_id]
    record = TaskRecord.from_dict(spool.incoming.read(task.task_id))
    assert record == task
    assert record.channel == "local" and record.conversation_id is None


def test_submit_refuses_what_cannot_run(cfg):
    with pytest.raises(local.SubmitError, match="empty"):
        local.submit(cfg, "  \n", repo="demo")
    with pytest.raises(local.SubmitError, match="no repository 'nope'"):
        local.submit(cfg, "x", repo="nope")
    with pytest.raises(local.SubmitError, match="no conversation 0123abcd"):
        local.submit(cfg, "x", conversation_id="0123abcd")
    with pytest.raises(local.SubmitError, match="invalid conversation id"):
        local.submit(cfg, "x", conversation_id="../../etc")
    assert Spool(cfg.paths.spool).incoming.names() == []


def test_continuing_a_conversation_finds_its_repository(cfg, tmp_path):
    cdir = tmp_path / "state/conversations/0123abcd"
    cdir.mkdir(parents=True)
    conversation.save(cfg.paths.state, Conversation("0123abcd", repo="other", model="m"))
    task = local.submit(cfg, "more", conversation_id="0123abcd")
    assert task.repo == "other" and task.conversation_id == "0123abcd"
    with pytest.raises(local.SubmitError, match="belongs to repository other"):
        local.submit(cfg, "more", repo="demo", conversation_id="0123abcd")


def test_wait_returns_the_reply_when_it_arrives(cfg):
    outgoing = Spool(cfg.paths.spool).outgoing("local").ensure()
    reply = ReplyRecord(task_id="t1", conversation_id="0123abcd", repo="demo",
                        channel="local", reply_to="me", text="done", outcome="success")
    threading.Timer(0.2, lambda: outgoing.put("t1", reply.to_dict())).start()
    assert local.wait_for_reply(cfg, "t1", timeout=10) == reply
    assert local.wait_for_reply(cfg, "t1", timeout=0) == reply  # still there for others


def test_a_merged_task_is_answered_by_the_reply_that_names_it(cfg):
    outgoing = Spool(cfg.paths.spool).outgoing("local").ensure()
    reply = ReplyRecord(task_id="t3", conversation_id="0123abcd", repo="demo",
                        channel="local", reply_to="me", text="all three", outcome="success",
                        merged_task_ids=["t1", "t2"])
    outgoing.put("t3", reply.to_dict())
    assert local.wait_for_reply(cfg, "t1", timeout=0) == reply
    assert local.wait_for_reply(cfg, "t2", timeout=0) == reply
    assert local.wait_for_reply(cfg, "t4", timeout=0) is None


def test_wait_times_out_quietly(cfg):
    assert local.wait_for_reply(cfg, "t-none", timeout=0.2) is None


def test_stop_writes_a_control_record(cfg):
    local.request_stop(cfg, "t1")
    control = Spool(cfg.paths.spool).control
    (name,) = control.names()
    assert ControlRecord.from_dict(control.read(name)).task_id == "t1"


def test_agent_text_cannot_drive_the_terminal():
    from airut_cli.main import printable
    text = "done\x1b]52;c;ZXZpbA==\x07 \x1b[31mred\x1b[0m\n\tnext\u202eevil"
    shown = printable(text)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert shown.startswith("done\\x1b]52;c;") and "\n\tnext" in shown
