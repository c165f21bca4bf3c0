"""The Slack channel's pure parts: mrkdwn rendering and splitting, reading events of
any shape, the configuration's checks."""

from __future__ import annotations

import json

import pytest

from airut_core import config as config_mod
from airut_core.config import ConfigError
from airut_ingest.slack import events, mrkdwn
from airut_ingest.slack.address import Where


@pytest.mark.parametrize("markdown,expected", [
    ("**bold** and *italic* and ~~gone~~", "*bold* and _italic_ and ~gone~"),
    ("# Title\n\ntext", "*Title*\n\ntext"),
    ("a [link](<https://x.test/a|b c>) here", "a <https://x.test/a%7Cb%20c|link> here"),
    ("[mail](mailto:a@x.test) [rel](docs/a.md)", "<mailto:a@x.test|mail> rel (docs/a.md)"),
    ("<!channel> <@U123> & <script>", "&lt;!channel&gt; &lt;@U123&gt; &amp; &lt;script&gt;"),
    # markdown-it refuses javascript: links: they stay text.
    ("[click](javascript:alert(1))", "[click](javascript:alert(1))"),
    ("<https://auto.test>", "<https://auto.test>"),
    ("```python\nif a < b:\n    pass\n```", "```\nif a &lt; b:\n    pass\n```"),
    ("- [ ] todo\n- [x] done", "☐ todo\n☑ done"),
    ("1. one\n2. two\n   - nested", "1. one\n2. two\n   • nested"),
    ("> quoted\n> more", "&gt; quoted\n&gt; more"),
    ("a\n\n---\n\nb", "a\n\n———\n\nb"),
    ("| name | n |\n|---|---|\n| alpha | 1 |\n| b | 22 |",
     "```\nname  | n\n------+---\nalpha | 1\nb     | 22\n```"),
])
def test_markdown_becomes_mrkdwn(markdown, expected):
    assert mrkdwn.render(markdown) == expected


def test_split_cuts_at_paragraphs_then_lines_and_keeps_everything():
    text = "\n\n".join("p" * 300 for _ in range(10))
    chunks = mrkdwn.split(text, limit=1000)
    assert all(len(c) <= 1000 for c in chunks) and len(chunks) == 4
    assert "".join(chunks).replace("\n", "") == text.replace("\n", "")
    lines = "\n".join("l" * 90 for _ in range(30))
    assert all(len(c) <= 1000 for c in mrkdwn.split(lines, limit=1000))
    assert mrkdwn.split("x" * 2500, limit=1000) == ["x" * 1000, "x" * 1000, "x" * 500]


@pytest.mark.parametrize("payload", [
    None, [], {"event": []}, {"event": {"type": "message"}},
    {"event": {"type": "message", "user": ["U1"], "channel": "D1", "ts": "1.2"}},
    {"event": {"type": "message", "user": "U1", "channel": "D1", "ts": "not a ts"}},
    {"event": {"type": "message", "subtype": "message_changed", "user": "U1",
               "channel": "D1", "ts": "1.2"}},
    {"event": {"type": "reaction_added"}},
    {"event": {"type": "assistant_thread_started", "assistant_thread": "x"}},
])
def test_events_of_unexpected_shapes_are_ignored_with_a_reason(payload):
    found = events.read(payload)
    assert isinstance(found, events.Ignored) and found.why


def test_a_bot_message_is_ignored_as_a_bot_and_odd_fields_are_dropped():
    bot = events.read({"event": {"type": "message", "bot_id": "B1", "user": "U1",
                                 "channel": "C1", "ts": "1.2", "text": "hi"}})
    assert isinstance(bot, events.Ignored) and bot.bot
    msg = events.read({"event": {"type": "message", "user": "U1", "channel": "C1",
                                 "ts": "1.2", "text": 5, "thread_ts": {"x": 1},
                                 "files": [None, {"id": "F1"}, {"id": "F2", "name": 3,
                                                               "url_private": "https://f"}]}})
    assert isinstance(msg, events.Message)
    assert (msg.text, msg.thread_ts, msg.thread) == ("", None, "1.2")
    assert [(f.id, f.name, f.url) for f in msg.files] == [("F2", "F2", "https://f")]


def test_a_reply_address_must_be_whole():
    where = Where("D1", "1.2", "1.3", "U1", True)
    assert Where.loads(where.dumps()) == where
    for bad in ('"x"', "{}", json.dumps({"channel": "D1", "thread_ts": 1, "ts": "1",
                                         "user": "U"})):
        with pytest.raises(ValueError):
            Where.loads(bad)


BASE = {"bot_token": "xoxb-1", "app_token": "xapp-1"}


@pytest.mark.parametrize("slack,error", [
    ({"authorized": []}, "must name at least one rule"),
    ({"authorized": [{"user_id": "U1X", "user_group": "devs"}]}, "exactly one of"),
    ({"authorized": [{}]}, "exactly one of"),
    ({"authorized": [{"workspace_members": False}]}, "admits nobody"),
    ({"authorized": [{"user_id": "alice"}]}, "not a valid Slack user id"),
    ({"authorized": [{"workspace_members": True}], "api_url": "ftp://x/"}, "api_url"),
    ({"authorized": [{"workspace_members": True}], "allowed_channels": ["general"]},
     "not a valid Slack channel id"),
])
def test_slack_configuration_errors_name_the_key(slack, error):
    text = json.dumps({"repos": {"demo": {"repo_url": "/x", "slack": {**BASE, **slack}}}})
    with pytest.raises(ConfigError, match=error):
        config_mod.parse(text, "airut.yaml")


def test_slack_tokens_are_secrets_only_its_own_unit_unseals():
    text = ("repos:\n  demo:\n    repo_url: /x\n    slack:\n      bot_token: !secret slack-bot\n"
            "      app_token: !secret slack-app\n      authorized: [{workspace_members: true}]\n"
            "    email: {address: a@x, trusted_authserv_id: x, authorized_senders: [a@x],\n"
            "            imap: {host: x, username: a, password: !secret mail},\n"
            "            smtp: {host: x}}\n")
    cfg = config_mod.parse(text, "airut.yaml")
    assert config_mod.secret_names(cfg, config_mod.slack_secrets("demo")) == [
        "slack-app", "slack-bot"]
    assert config_mod.secret_names(cfg, config_mod.email_secrets("demo")) == ["mail"]
    assert not config_mod.secret_names(cfg, config_mod.task_secrets)
