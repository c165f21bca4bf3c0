"""The email daemon's take, commit and send, as logic: the mailbox is a small stand-in
with the four operations the daemon uses (tests/system/test_email.py runs the same
code against real dovecot and postfix), the spool and the state are real directories."""

from __future__ import annotations

import email
import email.policy
import json
import multiprocessing
import os
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from airut_core import config, conversation
from airut_core.conversation import Conversation
from airut_core.records import ReplyRecord
from airut_ingest import files
from airut_ingest.email import compose, daemon, parse
from airut_ingest.email.compose import Thread
from airut_ingest.email.daemon import COMMITTED, PENDING, EmailChannel
from airut_ingest.email.examiner import ExaminerUnavailable
from tests.unit.test_email import PASS, config_text, deep_mime, mail


class Box:
    """An inbox: uid -> raw message; what the daemon did to each is recorded."""

    def __init__(self, *messages: bytes):
        self.messages = dict(enumerate(messages, start=1))
        self.removed: list[int] = []
        self.quarantined: list[tuple[int, str]] = []

    def waiting(self) -> list[int]:
        return sorted(self.messages)

    def size(self, uid: int) -> int | None:
        return len(self.messages[uid]) if uid in self.messages else None

    def fetch(self, uid: int) -> bytes | None:
        return self.messages.get(uid)

    def fetch_header(self, uid: int, limit: int = 65536) -> bytes | None:
        raw = self.messages.get(uid)
        return raw.split(b"\n\n", 1)[0][:limit] if raw is not None else None

    def remove(self, uid: int) -> None:
        del self.messages[uid]
        self.removed.append(uid)

    def quarantine(self, uid: int, folder: str) -> None:
        del self.messages[uid]
        self.quarantined.append((uid, folder))


@pytest.fixture
def channel(tmp_path) -> EmailChannel:
    cfg = config.parse(config_text(tmp_path, extra="max_message_bytes: 100K"), "f")
    ch = EmailChannel(cfg, "demo")
    ch.receive_guard.delay = ch.send_guard.delay = 0  # no waiting between attempts
    return ch


def incoming(ch: EmailChannel) -> list[dict]:
    return [ch.spool.incoming.read(n) for n in ch.spool.incoming.names()]


def scan_until_empty(ch: EmailChannel, box: Box, rounds: int = 5) -> None:
    for _ in range(rounds):
        ch.scan(box)
        if not box.messages:
            return


# -- receiving ------------------------------------------------------------------------

def test_an_accepted_mail_becomes_a_task_then_leaves_the_mailbox(channel):
    box = Box(mail(message_id="<a1@corp.test>"))
    channel.scan(box)
    [task] = incoming(channel)
    assert box.removed == [1] and task["sender"] == "alice@corp.test"
    assert task["conversation_id"] and task["channel"] == "email-demo"
    marker = channel._marker(daemon.message_key(mail(message_id="<a1@corp.test>")))
    assert marker["state"] == COMMITTED and marker["task_id"] == task["task_id"]
    assert channel.deferred.names() == [f"ack-{task['task_id']}"]
    assert list(channel.staging.iterdir()) == []


def test_rejected_and_malformed_senders_leave_without_a_task(channel):
    box = Box(mail(sender="bob@corp.test", message_id="<r1@x>"),
              mail(message_id="<r2@x>").replace(b"From: Alice <alice@corp.test>", b'From: "'),
              mail(message_id="<r3@x>").replace(b"From: Alice <alice@corp.test>", b"From: a@["))
    channel.scan(box)
    assert box.removed == [1, 2, 3] and incoming(channel) == []


def test_a_message_that_keeps_failing_is_quarantined_and_the_next_one_goes_on(channel,
                                                                          monkeypatch):
    real = channel.examiner.read

    def read(raw, tick):
        if b"poison" in raw:
            raise RuntimeError("cannot cope")
        return real(raw, tick)
    monkeypatch.setattr(channel.examiner, "read", read)
    box = Box(mail(body="poison", message_id="<p1@x>"), mail(message_id="<g1@x>"))
    channel.scan(box)
    assert box.removed == [2] and len(incoming(channel)) == 1  # the good one went on
    assert 1 in box.messages  # the bad one waits, still in the inbox
    scan_until_empty(channel, box)
    assert box.quarantined == [(1, "airut-quarantine")]
    [name] = [n for n in channel.failed.names() if n.startswith("message-")]
    record = channel.failed.read(name)
    assert [f["reason"] for f in record["failures"]] == ["RuntimeError: cannot cope"] * 3
    assert record["message_id"] == "<p1@x>"
    assert (channel.failed.path / f"{name}.eml").read_bytes() == mail(body="poison",
                                                                      message_id="<p1@x>")
    # Moved back into the inbox by an operator, the cause fixed: examined afresh.
    monkeypatch.setattr(channel.examiner, "read", real)
    box = Box(mail(body="poison", message_id="<p1@x>"))
    channel.scan(box)
    assert box.removed == [1] and len(incoming(channel)) == 2


def _die_in_take(spool_root: str) -> None:
    cfg = config.parse(config_text(Path(spool_root), extra="max_message_bytes: 100K"), "f")
    ch = EmailChannel(cfg, "demo")
    ch.examiner.read = lambda *a, **k: os._exit(9)  # a kill from outside, the watchdog's
    ch.scan(Box(mail(message_id="<killer@x>")))


def _die_reading(tmp_path: Path, times: int) -> None:
    ctx = multiprocessing.get_context("fork")
    for _ in range(times):
        p = ctx.Process(target=_die_in_take, args=(str(tmp_path),))
        p.start()
        p.join(20)
        assert p.exitcode == 9


def test_a_message_during_which_the_daemon_keeps_dying_is_set_aside(channel, tmp_path):
    _die_reading(tmp_path, daemon.CRASH_LIMIT)
    box = Box(mail(message_id="<killer@x>"))
    channel.scan(box)  # not examined once more
    assert box.quarantined == [(1, "airut-quarantine")] and incoming(channel) == []
    [name] = channel.failed.names()
    assert len(channel.failed.read(name)["failures"]) == daemon.CRASH_LIMIT


def test_a_few_kills_from_outside_do_not_set_an_innocent_message_aside(channel, tmp_path):
    """bench/chaos lost a good mail this way: killed three times while reading it."""
    _die_reading(tmp_path, daemon.GUARD_LIMIT)
    box = Box(mail(message_id="<killer@x>"))
    channel.scan(box)
    assert box.removed == [1] and len(incoming(channel)) == 1 and channel.failed.names() == []


def test_an_examiner_that_cannot_start_sets_no_message_aside(channel):
    channel.examiner.command = [sys.executable, "-c", "import sys; sys.exit(3)"]
    box = Box(mail(message_id="<e1@x>"))
    for _ in range(daemon.CRASH_LIMIT + 1):
        with pytest.raises(ExaminerUnavailable):  # the receive loop: degraded, retrying
            channel.scan(box)
    assert box.messages and not box.quarantined and channel.failed.names() == []
    assert channel.receive_guard.failures(daemon.message_key(box.messages[1])) == []


def test_a_message_over_the_size_limit_is_quarantined_unread(channel, monkeypatch):
    monkeypatch.setattr(channel.examiner, "read", lambda *a, **k: pytest.fail("examined"))
    box = Box(mail(body="x" * 200_000, message_id="<big@x>"))
    channel.scan(box)
    assert box.quarantined == [(1, "airut-quarantine")]
    [name] = channel.failed.names()
    assert "over max_message_bytes" in channel.failed.read(name)["failures"][0]["reason"]


def test_a_crash_before_the_publication_is_finished_with_the_same_task(channel, monkeypatch):
    raw = mail(message_id="<c1@x>")
    def crash(key, marker):
        raise OSError("the process ends here")
    monkeypatch.setattr(channel, "finish_intake", crash)  # after the marker, before publishing
    channel.scan(Box(raw))
    monkeypatch.undo()
    marker = channel._marker(daemon.message_key(raw))
    assert marker["state"] == PENDING and incoming(channel) == []
    box = Box(raw)
    channel.scan(box)
    [task] = incoming(channel)
    assert task["task_id"] == marker["task_id"] and box.removed == [1]


def test_a_committed_message_is_only_removed_even_when_its_task_is_gone(channel):
    """Crash between commit and expunge, the task merged into another meanwhile."""
    raw = mail(message_id="<m1@x>")
    channel.intake(raw, daemon.message_key(raw))
    for name in channel.spool.incoming.names():  # the runner merged it: the record is gone
        channel.spool.incoming.remove(name)
    box = Box(raw)
    channel.scan(box)
    assert box.removed == [1] and incoming(channel) == []


def test_attachments_are_fsynced_before_the_task_is_published(channel, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    msg = EmailMessage()
    msg["Authentication-Results"] = PASS
    msg["From"] = "alice@corp.test"
    msg["Subject"] = "files"
    msg["Message-ID"] = "<f1@x>"
    msg.set_content("see attached")
    msg.add_attachment(b"one", maintype="application", subtype="octet-stream", filename="a.txt")
    channel.scan(Box(bytes(msg)))
    [task] = incoming(channel)
    final = Path(task["attachments_dir"])
    staged_file = next(i for i, p in enumerate(synced) if p.endswith("/a.txt"))
    published = next(i for i, p in enumerate(synced) if p == str(channel.spool.incoming.path))
    assert staged_file < published
    assert str(channel.attachments) in synced[staged_file:published]  # the rename, too
    assert (final / "a.txt").read_bytes() == b"one"


def test_a_new_conversation_id_is_reserved_at_intake(channel):
    box = Box(mail(message_id="<n1@x>"))
    channel.scan(box)
    [task] = incoming(channel)
    cid = task["conversation_id"]
    assert conversation.load(channel.cfg.paths.state, cid) is None  # the runner has not run
    follow = mail(message_id="<n2@x>", in_reply_to=f"<airut.{cid}.1.ab@corp.test>")
    channel.scan(Box(follow))
    assert [t["conversation_id"] for t in incoming(channel)] == [cid, cid]


def test_another_repositorys_conversation_starts_a_new_one(channel, caplog):
    state = channel.cfg.paths.state
    (Path(state) / "conversations" / "0a1b2c3d").mkdir(parents=True)
    conversation.save(state, Conversation(conversation_id="0a1b2c3d", repo="other",
                                          model="sonnet"))
    channel.scan(Box(mail(subject="Re: [ID:0a1b2c3d] more", message_id="<h1@x>")))
    [task] = incoming(channel)
    assert task["conversation_id"] != "0a1b2c3d"
    assert "names conversation 0a1b2c3d, which is not one of repository demo" in caplog.text
    conversation.save(state, Conversation(conversation_id="0a1b2c3d", repo="demo",
                                          model="sonnet"))
    channel.scan(Box(mail(subject="Re: [ID:0a1b2c3d] more", message_id="<h2@x>")))
    assert incoming(channel)[-1]["conversation_id"] == "0a1b2c3d"


# -- sending --------------------------------------------------------------------------------

@pytest.fixture
def outbox(monkeypatch) -> list[EmailMessage]:
    sent: list[EmailMessage] = []
    monkeypatch.setattr(daemon, "send", lambda cfg, msg: sent.append(msg))
    return sent


def reply_record(name: str, to: str = "alice@corp.test", text: str = "Done.",
                 message_id: str = "<q1@corp.test>", **extra) -> dict:
    thread = Thread(to=to, subject="Bug", message_id=message_id)
    return ReplyRecord(task_id=name, conversation_id="0a1b2c3d", repo="demo",
                       channel="email-demo", reply_to=thread.dumps(), text=text,
                       outcome="success", **extra).to_dict()


def test_merged_messages_from_several_senders_each_get_the_reply_once(channel, outbox):
    carol = Thread(to="carol@corp.test", subject="Bug", message_id="<c1@corp.test>").dumps()
    alice_again = Thread(to="Alice@corp.test", subject="Bug", message_id="<q0@corp.test>").dumps()
    channel.outgoing.put("t2", reply_record("t2", merged_task_ids=["t0", "t1"],
                                            merged_reply_to=[alice_again, carol]))
    channel.send_waiting()
    assert sorted(m["To"] for m in outbox) == ["alice@corp.test", "carol@corp.test"]
    to_carol = next(m for m in outbox if m["To"] == "carol@corp.test")
    assert to_carol["In-Reply-To"] == "<c1@corp.test>"
    # Alice's one mail answers both of her messages, each named as a parent.
    to_alice = next(m for m in outbox if m["To"] == "alice@corp.test")
    parents = to_alice["In-Reply-To"].split()
    assert len(parents) == 2 and parents[1] == "<q0@corp.test>"
    assert "<q0@corp.test>" in to_alice["References"]
    assert sorted(p.name for p in channel.sent.iterdir()) == ["t2", "t2+2"]
    # As after a crash: the reply record again, the mails already sent are not sent again.
    channel.outgoing.put("t2", reply_record("t2", merged_task_ids=["t0", "t1"],
                                            merged_reply_to=[alice_again, carol]))
    channel.send_waiting()
    assert len(outbox) == 2


def test_poison_replies_are_sent_clean_or_set_aside_and_later_replies_go_out(channel, outbox):
    files = channel.outgoing.path / "t1.files"
    files.mkdir()
    with open(os.fsencode(files) + b"/\xff\xfe-report.txt", "wb") as f:
        f.write(b"report")
    odd = os.fsdecode(b"\xff\xfe-report.txt")
    channel.outgoing.put("t1", reply_record("t1", text="lone \ud800 surrogate",
                                            attachments=[odd, "missing.txt", "../../etc/passwd"],
                                            attachments_dir=str(files)))
    channel.outgoing.put("t2", {**reply_record("t2"), "reply_to": "not json"})
    channel.outgoing.put("t3", {"schema": "airut.reply/1", "task_id": ["x"]})
    channel.outgoing.put("t4", reply_record("t4", text="the next reply"))
    channel.send_waiting()
    texts = {m["In-Reply-To"]: m.get_body(("plain",)).get_content() for m in outbox}
    assert "the next reply" in texts["<q1@corp.test>"] or len(outbox) == 2
    first = next(m for m in outbox if "surrogate" in m.get_body(("plain",)).get_content())
    assert "lone \ufffd surrogate" in first.get_body(("plain",)).get_content()
    assert [a.get_filename() for a in first.iter_attachments()] == ["\ufffd\ufffd-report.txt"]
    notes = first.get_body(("plain",)).get_content()
    assert "missing.txt could not be attached" in notes and "passwd could not be attached" in notes
    assert len(outbox) == 2
    for name in ("t2", "t3"):
        assert channel.failed.read(name)["failures"], name
    assert channel.outgoing.names() == [] and not files.exists()


def test_a_reply_that_cannot_be_composed_is_retried_then_set_aside(channel, outbox,
                                                                    monkeypatch):
    monkeypatch.setattr(compose, "reply", lambda *a: (_ for _ in ()).throw(KeyError("bug")))
    channel.outgoing.put("t1", reply_record("t1"))
    for _ in range(3):
        channel.send_waiting()
    record = channel.failed.read("t1")
    assert len(record["failures"]) == 3 and record["task_id"] == "t1"
    assert channel.outgoing.names() == []


def test_reply_html_is_sanitized():
    hostile = ("![x](https://attacker.test/p?d=1) <img src=https://attacker.test/i> "
               "[docs](https://docs.test/a) <a href='javascript:alert(1)'>js</a> "
               "<div style='background:url(https://attacker.test/c)'>s</div> "
               "<script>alert(1)</script><iframe src=https://attacker.test/f></iframe>")
    html = compose.html(hostile)
    body = html.split("<body", 1)[1]
    assert "<img" not in html and "<script" not in html and "<iframe" not in html
    assert "style=" not in body.split(">", 1)[1]
    assert 'src="' not in html and "javascript:" not in html.split("(javascript")[0]
    assert '<a href="https://docs.test/a"' in html and "docs</a> (https://docs.test/a)" in html
    assert "[image not shown: x (https://attacker.test/p?d=1)]" in html


def test_the_acknowledgment_is_sent_once(channel, outbox):
    channel.scan(Box(mail(message_id="<k1@x>")))
    channel.send_waiting()
    channel.send_waiting()
    [ack] = outbox
    assert "started working" in ack.get_body(("plain",)).get_content()
    assert ack["In-Reply-To"] == "<k1@x>"


# -- bounded parsing ----------------------------------------------------------------------

def test_names_are_capped_in_bytes_and_keep_their_extension():
    name = parse.safe_name("\u6f22" * 90 + ".txt", set())
    assert len(name.encode()) <= files.MAX_NAME_BYTES and name.endswith(".txt")
    again = parse.safe_name("\u6f22" * 90 + ".txt", {name})
    assert again != name and again.endswith("-1.txt") and len(again.encode()) <= 200


def test_deep_and_quadratic_html_is_read_quickly():
    for html in ["<div>" * 400 + "deep" + "</div>" * 400,
                 '<blockquote type="cite">q' * 3000 + "</blockquote>r" * 3000,
                 "<p>hi</p>" + '<blockquote type="cite">q</blockquote>r' * 5000,
                 "<p>hi</p>" + '<blockquote type="cite">q</blockquote>' * 5000]:
        start = time.monotonic()
        text = parse.html_to_text(html)
        assert time.monotonic() - start < 5, html[:40]
        assert "deep" in text or "q" in text or "hi" in text


def test_structures_beyond_the_limits_are_too_complex():
    many = (b"Content-Type: multipart/mixed; boundary=m\r\n\r\n"
            + b"".join(b"--m\r\n\r\npart\r\n" for _ in range(600)) + b"--m--\r\n")
    with pytest.raises(parse.TooComplex, match="MIME parts"):
        parse.check_structure(parse.load(many))
    deep = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(30))
    with pytest.raises(parse.TooComplex, match="nested"):
        parse.check_structure(parse.load(deep))


def test_the_check_command_says_quarantined(tmp_path, capsys):
    from airut_cli.main import main as cli

    cfg = tmp_path / "airut.yaml"
    cfg.write_text(config_text(tmp_path))
    eml = tmp_path / "deep.eml"
    eml.write_bytes(mail().replace(b"Content-Type: text/plain", b"Content-Type: multipart/mixed;"
                                   b" boundary=m", 1) + b"--m\r\n\r\nx\r\n" * 600)
    with pytest.raises(SystemExit):
        cli(["--config", str(cfg), "email", "check", str(eml), "--repo", "demo"])
    out = capsys.readouterr()
    assert json.loads(out.out)["reason"] == "quarantined" and "500 MIME parts" in out.err


def test_a_quarantined_message_says_so_in_the_mail_it_was(channel, monkeypatch):
    monkeypatch.setattr(channel.examiner, "read",
                        lambda *a, **k: (_ for _ in ()).throw(parse.TooComplex("too deep")))
    box = Box(mail(message_id="<tc@x>"))
    channel.scan(box)  # Permanent: at once, not three times
    assert box.quarantined == [(1, "airut-quarantine")]
    message = email.message_from_bytes(
        (channel.failed.path / f"{channel.failed.names()[0]}.eml").read_bytes(),
        policy=email.policy.default)
    assert message["Message-ID"] == "<tc@x>"


def test_mime_nested_too_deep_for_the_parser_is_quarantined_with_its_header(channel):
    box = Box(deep_mime())
    channel.scan(box)
    assert box.quarantined == [(1, "airut-quarantine")]
    [record] = [channel.failed.read(n) for n in channel.failed.names()]
    assert record["message_id"] == "<deep@x>" and record["subject"] == "deep"
    assert "RecursionError" in record["failures"][0]["reason"]
