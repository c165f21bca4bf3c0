"""The examiner: hostile mail read in a child process (a real one: these tests start
it), so a message that stalls, bloats or kills the parser ends the child, and the
next message is read by a new one."""

from __future__ import annotations

import base64
import os
import signal
import sys

import pytest

from airut_ingest.email import intake
from airut_ingest.email.examiner import Examiner, ExaminerFailed, ExaminerUnavailable
from airut_ingest.email.parse import TooComplex
from tests.unit.test_email import CFG, PASS, check, deep_mime, mail

RULES = intake.Rules.of(CFG)


def slow_mail() -> bytes:
    """Thousands of nested quotes: bounded work, but most of a second of it."""
    html = "[[x]] quotes" + '<blockquote type="cite">q\n' * 3000 + "</blockquote>r\n" * 3000
    return mail(body="x").replace(b"Content-Type: text/plain; charset=\"utf-8\"",
                                  b"Content-Type: text/html; charset=\"utf-8\"", 1).replace(
        b"x\n", html.encode(), 1)


def attached_mail(size: int) -> bytes:
    data = base64.encodebytes(os.urandom(size))
    return (b"Authentication-Results: " + PASS.encode() + b"\r\nFrom: alice@corp.test\r\n"
            b"To: airut@corp.test\r\nSubject: big\r\nMessage-ID: <big@x>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n"
            b"--m\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--m\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=a.bin\r\n\r\n" + data + b"\r\n--m--\r\n")


def fake_examiner(then: str) -> list[str]:
    """A child that speaks the examiner's protocol up to a message's arrival, then
    does `then` instead of reading it."""
    ready = b'{"ready": 1}'
    return [sys.executable, "-c", "import os, sys, time; f = sys.stdin.buffer; "
            "f.read(int.from_bytes(f.read(8), 'big')); o = sys.stdout.buffer; "
            f"o.write({len(ready).to_bytes(8, 'big')!r} + {ready!r}); o.flush(); f.read(8); "
            + then]


@pytest.fixture
def examiner():
    ex = Examiner(RULES)
    yield ex
    ex.close()


def test_the_examiners_verdict_is_the_one_read_in_process(examiner):
    cfg = CFG.__class__(**{**CFG.__dict__, "max_attachment_bytes": 10_000})
    big = Examiner(intake.Rules.of(cfg))
    try:
        for raw in (mail(), mail(sender="mallory@evil.test"), mail(body="",
                                                                   subject="")):
            assert examiner.read(raw) == intake.read(raw, RULES)
        raw = attached_mail(3000)
        assert big.read(raw) == intake.read(raw, intake.Rules.of(cfg))
        assert big.read(raw).attachments[0].data  # the bytes came back whole
    finally:
        big.close()
    known = lambda cid: False  # noqa: E731
    assert intake.decide(examiner.read(mail()), known) == check(mail(), known)
    assert examiner.started_total == 1  # one child for all of them


def test_a_message_that_takes_too_long_ends_the_examiner_not_the_caller(examiner):
    real = examiner.command
    examiner.command = fake_examiner("time.sleep(60)")  # a parser that never finishes
    examiner.timeout = 1.5
    ticks = []
    with pytest.raises(ExaminerFailed, match=r"longer than 1\.5 s"):
        examiner.read(mail(), tick=lambda: ticks.append(1))
    assert ticks  # the waiting daemon kept saying it is alive
    examiner.command, examiner.timeout = real, 60
    assert examiner.read(slow_mail()).accepted  # a new examiner reads the next one
    assert examiner.started_total == 2


def test_a_message_needing_too_much_memory_is_too_complex():
    examiner = Examiner(RULES, memory=300 << 20)
    cfg = CFG.__class__(**{**CFG.__dict__, "max_attachment_bytes": 100 << 20})
    examiner.rules = intake.Rules.of(cfg)
    try:
        with pytest.raises(TooComplex, match="more than 300 MiB"):
            examiner.read(attached_mail(40 << 20))
        assert examiner.read(mail()).accepted
    finally:
        examiner.close()


def test_an_examiner_killed_while_reading_is_a_failure_of_that_message_only(examiner):
    real = examiner.command
    # An examiner that dies as soon as a message arrives: what a crash in the parser
    # or the kernel's OOM killer comes to.
    examiner.command = fake_examiner("os.kill(os.getpid(), 9)")
    with pytest.raises(ExaminerFailed, match="killed by SIGKILL"):
        examiner.read(mail())
    examiner.command = real
    assert examiner.read(mail()).accepted and examiner.started_total == 2


def test_an_examiner_that_died_between_messages_is_no_messages_failure(examiner):
    examiner.start()
    os.kill(examiner._proc.pid, signal.SIGKILL)
    examiner._proc.wait(10)
    assert examiner.read(mail()).accepted and examiner.started_total == 2


def test_a_parse_failure_comes_back_as_too_complex(examiner):
    with pytest.raises(TooComplex, match="RecursionError"):
        examiner.read(deep_mime())
    assert examiner.started_total == 1
    assert examiner.read(mail()).accepted and examiner.started_total == 2  # a fresh one


def test_the_examiner_goes_when_its_daemon_goes(examiner):
    examiner.start()
    proc = examiner._proc
    proc.stdin.close()  # what the daemon's death does to the pipe
    assert proc.wait(10) == 0


def test_an_examiner_that_cannot_start_is_not_a_messages_failure(examiner):
    examiner.command = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with pytest.raises(ExaminerUnavailable, match="exited with status 3"):
        examiner.start()


def verdict_json(**changes) -> dict:
    data = intake.read(attached_mail(100), intake.Rules.of(
        CFG.__class__(**{**CFG.__dict__, "max_attachment_bytes": 10_000}))).to_json()
    return {**data, **changes}


@pytest.mark.parametrize("changes", [
    {"accepted": "false"}, {"text": 1}, {"sender": ["a"]}, {"references": "x"},
    {"extra": 1}, {"attachments": [{"name": "../../etc/x", "data": ""}]},
    {"attachments": [{"name": ".hidden", "data": ""}]},
    {"attachments": [{"name": "a.txt", "data": "!!"}]},
    {"attachments": [{"name": "a.txt", "data": ""}, {"name": "a.txt", "data": ""}]},
])
def test_a_verdict_from_the_examiner_is_checked_like_input(changes):
    """The examiner read hostile bytes: what it answers is not trusted either."""
    assert intake.Verdict.from_json(verdict_json()).accepted  # the real one passes
    with pytest.raises(ValueError):
        intake.Verdict.from_json(verdict_json(**changes))
