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
from airut_ingest.email.examiner import Examiner, ExaminerFailed
from airut_ingest.email.parse import TooComplex
from tests.unit.test_email import CFG, PASS, check, mail

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
    examiner.start()
    examiner.read(mail())  # started and warm: what follows is the slow mail's own time
    examiner.timeout = 0.05  # it needs most of a second
    ticks = []
    with pytest.raises(ExaminerFailed, match=r"longer than 0\.05 s"):
        examiner.read(slow_mail(), tick=lambda: ticks.append(1))
    assert ticks  # the waiting daemon kept saying it is alive
    examiner.timeout = 60
    assert examiner.read(mail()).accepted  # a new examiner reads the next one
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
    examiner.command = [sys.executable, "-c", "import os, sys; f = sys.stdin.buffer; "
                        "f.read(int.from_bytes(f.read(8), 'big')); f.read(8); "
                        "os.kill(os.getpid(), 9)"]
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
    depth = 1000
    body = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                    for i in range(depth)) + b"--b%d\r\n\r\nx\r\n" % depth
    raw = (b"Authentication-Results: " + PASS.encode() + b"\r\nFrom: alice@corp.test\r\n"
           b"Subject: deep\r\nMessage-ID: <deep@x>\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n' + body)
    with pytest.raises(TooComplex):
        examiner.read(raw)
    assert examiner.started_total == 1  # the examiner itself is fine


def test_the_examiner_goes_when_its_daemon_goes(examiner):
    examiner.start()
    proc = examiner._proc
    proc.stdin.close()  # what the daemon's death does to the pipe
    assert proc.wait(10) == 0
