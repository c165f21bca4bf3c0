"""Record schemas and configuration: what is accepted, and what the errors say."""

from __future__ import annotations

import pytest

from airut_cli.main import main as cli
from airut_core import config
from airut_core.config import ConfigError
from airut_core.records import ControlRecord, ReplyRecord, TaskRecord
from airut_core.spool import RecordError


def task(**overrides):
    fields = {"repo": "demo", "channel": "local", "reply_to": "me", "sender": "me",
              "text": "hi"}
    return TaskRecord(**{**fields, **overrides})


def test_task_record_round_trip():
    record = task(conversation_id="0a1b2c3d", model="opus")
    data = record.to_dict()
    assert data["schema"] == "airut.task/1"
    assert TaskRecord.from_dict(data) == record


def test_envelope_members_are_not_part_of_the_schema():
    data = {**task().to_dict(), "failures": [{"reason": "x"}], "state": {"unit": "u"}}
    assert TaskRecord.from_dict(data).text == "hi"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("task_id", "../../etc/passwd", "not a valid task id"),
    ("conversation_id", "ABC", "not a valid conversation id"),
    ("channel", "../outgoing", "not a valid channel name"),
    ("repo", "a/b", "not a valid repository id"),
    ("text", 5, "text: expected a string, got the number 5"),
])
def test_task_record_rejects_bad_fields(field, value, message):
    data = {**task().to_dict(), field: value}
    with pytest.raises(RecordError, match=message):
        TaskRecord.from_dict(data, "incoming/x")


def test_missing_and_unknown_fields_are_named():
    data = task().to_dict()
    del data["sender"]
    with pytest.raises(RecordError, match="incoming/x: sender: required key is missing"):
        TaskRecord.from_dict(data, "incoming/x")
    with pytest.raises(RecordError, match="unknown key colour"):
        TaskRecord.from_dict({**task().to_dict(), "colour": "red"})


def test_other_kinds_and_versions_are_refused():
    with pytest.raises(RecordError, match=r"expected an airut\.task record"):
        TaskRecord.from_dict({**task().to_dict(), "schema": "airut.reply/1"})
    with pytest.raises(RecordError, match="version 2 is not understood"):
        TaskRecord.from_dict({**task().to_dict(), "schema": "airut.task/2"})


def test_reply_and_control_records():
    reply = ReplyRecord(task_id="t1", conversation_id=None, repo="demo", channel="local",
                        reply_to="me", text="done", outcome="success")
    assert ReplyRecord.from_dict(reply.to_dict()) == reply
    with pytest.raises(RecordError, match="outcome: must be one of"):
        ReplyRecord.from_dict({**reply.to_dict(), "outcome": "great"})
    stop = ControlRecord(task_id="t1")
    assert ControlRecord.from_dict(stop.to_dict()).action == "stop"


# -- configuration ---------------------------------------------------------------------

def test_empty_file_gives_defaults():
    cfg = config.parse("", "/etc/airut/airut.yaml")
    assert cfg.repos == {}
    assert cfg.execution.max_concurrent == 3
    assert cfg.paths.spool == "/var/spool/airut"


def test_repository_settings_and_sizes():
    cfg = config.parse("""
repos:
  demo:
    repo_url: https://example.com/demo.git
    model: opus
    resource_limits: {memory: 512M, cpus: 1, timeout: 60}
""", "f.yaml")
    limits = cfg.repo("demo").resource_limits
    assert limits.memory == 512 << 20 and limits.cpus == 1.0 and limits.timeout == 60
    assert limits.pids_limit == 1024


def test_env_tag_reads_the_environment(monkeypatch):
    monkeypatch.setenv("AIRUT_TEST_KEY", "sk-ant-secret")
    cfg = config.parse("repos: {demo: {repo_url: x, secrets: {ANTHROPIC_API_KEY: "
                       "!env AIRUT_TEST_KEY}}}", "f.yaml")
    assert cfg.repo("demo").secrets == {"ANTHROPIC_API_KEY": "sk-ant-secret"}


@pytest.mark.parametrize(("text", "message"), [
    ("repos: {demo: {repo_url: x, secrets: {K: !env AIRUT_TEST_UNSET}}}",
     "f.yaml: repos.demo.secrets.K: environment variable AIRUT_TEST_UNSET is not set"),
    ("repos: {demo: {repo_url: x, resource_limits: {memory: lots}}}",
     "f.yaml: repos.demo.resource_limits.memory: expected a size like 512M or 2G"),
    ("repos: {demo: {repo_url: x, resource_limits: {timeout: 5}}}",
     "repos.demo.resource_limits.timeout: must be at least 10"),
    ("repos: {demo: {}}", "f.yaml: repos.demo.repo_url: required key is missing"),
    ("repos: {demo: {repo_url: x, colour: red}}", "repos.demo: unknown key colour"),
    ("repos: {'a b': {repo_url: x}}", "not a valid repository id"),
    ("execution: {max_concurrent: many}", "execution.max_concurrent: expected an integer"),
    ("repos: [1, 2]", "repos: expected a mapping, got a list"),
    ("repos: {demo: {repo_url: x, effort: extreme}}", "effort: must be one of"),
    ("repos:\n  demo: [\n", "f.yaml: not valid YAML"),
])
def test_errors_name_the_file_and_the_key(text, message, monkeypatch):
    monkeypatch.delenv("AIRUT_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as info:
        config.parse(text, "f.yaml")
    assert message in str(info.value)


def test_unknown_repository_lists_the_configured_ones():
    cfg = config.parse("repos: {demo: {repo_url: x}}", "f.yaml")
    with pytest.raises(ConfigError, match="no repository 'other' is configured "
                                          r"\(configured: demo\)"):
        cfg.repo("other")


def test_check_config_command(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("repos: {demo: {repo_url: /srv/git/demo.git}}")
    with pytest.raises(SystemExit) as exit_:
        cli(["--config", str(good), "check-config"])
    assert exit_.value.code == 0
    assert "repository demo: /srv/git/demo.git" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("repos: {demo: {repo_url: x, resource_limits: {cpus: fast}}}")
    with pytest.raises(SystemExit) as exit_:
        cli(["--config", str(bad), "check-config"])
    assert exit_.value.code == 2
    assert f"{bad}: repos.demo.resource_limits.cpus: expected a number" in capsys.readouterr().err


def test_config_is_taken_before_or_after_the_subcommand(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("repos: {demo: {repo_url: /srv/git/demo.git}}")
    bad = tmp_path / "bad.yaml"
    bad.write_text("repos: [")
    for argv in (["--config", str(good), "check-config"], ["check-config", "--config", str(good)],
                 ["--config", str(bad), "check-config", "--config", str(good)]):  # the last wins
        with pytest.raises(SystemExit) as exit_:
            cli(argv)
        assert exit_.value.code == 0, argv
        assert "repository demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli(["check-config", "--config", str(bad)])
    assert exit_.value.code == 2 and str(bad) in capsys.readouterr().err


def test_missing_configuration_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the configuration"):
        config.load(tmp_path / "nope.yaml")
