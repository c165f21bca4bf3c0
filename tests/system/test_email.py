"""The email channel against real postfix and dovecot in the lab guest.

Mail is DKIM-signed (dkimpy) and carries the Authentication-Results header the
lab's MX (mx.corp.test) would add on top; it goes in over SMTP to postfix, which
delivers to airut@corp.test in dovecot; airut-email@mail reads it over IMAP, and its
replies go out over SMTP to alice@corp.test's mailbox, which the tests read.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ALICE = ("alice@corp.test", "alice-pass")
MX = "mx.corp.test"


@pytest.fixture(scope="module")
def dkim_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def signed(key: bytes, sender: str, subject: str, body: str, results: list[str] | None = None,
           domain: str = "corp.test", attachments: dict[str, bytes] | None = None,
           **headers: str) -> tuple[bytes, str]:
    """A DKIM-signed message with the MX's verdicts on top; returns it and its Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = headers.pop("to", "airut@corp.test")
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = message_id = make_msgid(domain=domain)
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    for name, data in (attachments or {}).items():
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    raw = bytes(msg)
    signature = dkim.sign(raw, b"lab", domain.encode(), key,
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    if results is None:
        results = [f"{MX}; dkim=pass header.d={domain}; dmarc=pass (p=reject) "
                   f"header.from={domain}"]
    top = "".join(f"Authentication-Results: {r}\r\n" for r in results).encode()
    return top + signature + raw, message_id


def wait_for_mail(lab, count: int, timeout: float = 90) -> list[email.message.EmailMessage]:
    deadline = time.monotonic() + timeout
    while True:
        found = [email.message_from_bytes(m, policy=email.policy.default)
                 for m in lab.mailbox(*ALICE)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def replies_to(messages, message_id: str) -> list:
    return [m for m in messages if m["In-Reply-To"] == message_id]


def test_mail_becomes_a_task_and_the_reply_comes_back_threaded(lab, dkim_key):
    marker = lab.scenario("mail-hello", [{"text": "Hello by mail: {prompt}"}])
    before = len(lab.mailbox(*ALICE))
    raw, message_id = signed(dkim_key, "Alice <alice@corp.test>", "Please look",
                             f"{marker} how are things?")
    lab.send_mail(raw, "alice@corp.test")
    messages = wait_for_mail(lab, before + 2)
    answers = replies_to(messages, message_id)
    assert len(answers) == 2, [m["Subject"] for m in messages]  # acknowledgment, reply
    ack, reply = answers
    assert "started working on this" in ack.get_body(("plain",)).get_content()
    conv = re.search(r"\[ID:([0-9a-f]{8})\]", reply["Subject"]).group(1)
    assert reply["Subject"] == f"Re: [ID:{conv}] Please look"
    assert reply["From"] == "airut@corp.test"
    assert reply["References"].split()[-1] == message_id
    assert reply["Message-ID"].startswith(f"<airut.{conv}.")
    text = reply.get_body(("plain",)).get_content()
    assert "Hello by mail:" in text and "how are things?" in text
    assert reply.get_body(("html",)) is not None
    assert lab.conversation(conv)["replies"][0]["outcome"] == "success"
    # The mailbox of the repository is a work queue: handled mail is gone from it.
    assert lab.mailbox("airut@corp.test", "airut-pass") == []

    # A reply to the reply continues the conversation.
    follow, follow_id = signed(dkim_key, "alice@corp.test", reply["Subject"],
                               f"{marker} and the second question?",
                               in_reply_to=reply["Message-ID"],
                               references=f"{message_id} {reply['Message-ID']}")
    lab.send_mail(follow, "alice@corp.test")
    messages = wait_for_mail(lab, before + 3)
    [second] = replies_to(messages, follow_id)  # no acknowledgment this time
    assert f"[ID:{conv}]" in second["Subject"]
    assert "the second question?" in second.get_body(("plain",)).get_content()
    assert len(lab.conversation(conv)["replies"]) == 2


REJECTIONS = {
    "other-domain": dict(results=[f"{MX}; dmarc=pass header.from=partner.test"]),
    "untrusted-server": dict(results=["mx.evil.test; dmarc=pass header.from=corp.test"]),
    "forged-below": dict(results=[f"{MX}; dmarc=fail header.from=corp.test",
                                  f"{MX}; dmarc=pass header.from=corp.test"]),
    "lookalike-name": dict(sender='"alice@corp.test" <eve@evil.test>', domain="evil.test"),
    "unauthorized": dict(sender="bob@corp.test"),
}


def test_rejected_mail_gets_no_task_and_no_reply(lab, dkim_key):
    before = len(lab.mailbox(*ALICE))
    subjects = {}
    for name, spec in REJECTIONS.items():
        spec = dict(spec)
        raw, _ = signed(dkim_key, spec.pop("sender", "alice@corp.test"), f"reject {name}",
                        "[[scenario:echo]] should never run", **spec)
        subjects[name] = f"reject {name}"
        lab.send_mail(raw, "alice@corp.test")
    raw, _ = signed(dkim_key, "alice@corp.test", "reject two-from", "x")
    raw = raw.replace(b"From: alice@corp.test", b"From: alice@corp.test\r\nFrom: eve@evil.test")
    lab.send_mail(raw, "alice@corp.test")
    subjects["two-from"] = "reject two-from"
    deadline = time.monotonic() + 30
    journal = ""
    while time.monotonic() < deadline:
        journal = lab.journal("-u", "airut-email@mail")
        if all(repr(s) in journal for s in subjects.values()):
            break
        time.sleep(0.5)
    for name, subject in subjects.items():
        line = next((x for x in journal.splitlines() if repr(subject) in x), "")
        assert "rejected mail" in line, f"{name}: {line!r}"
    assert "(not_authenticated)" in journal and "(not_authorized)" in journal
    assert "(malformed)" in journal
    assert "rejected mail from eve@evil.test (not_authorized)" in journal  # the real address
    time.sleep(2)
    assert len(lab.mailbox(*ALICE)) == before  # strangers get no answer
    assert lab.mailbox("airut@corp.test", "airut-pass") == []  # and their mail is gone
    tasks = [json.loads(p.read_text()) for p in lab.spool.glob("*/*.json")
             if p.parent.name in ("incoming", "active")]
    assert not [t for t in tasks if "should never run" in t.get("text", "")]


def test_attachments_with_hostile_names_land_safely(lab, dkim_key):
    marker = lab.scenario("mail-files", [{"tool": "Bash", "input": {
        "command": "ls -A /inbox | sort | tr '\\n' ' '"}}, {"text": "inbox: {tool_result}"}])
    before = len(lab.mailbox(*ALICE))
    raw, message_id = signed(dkim_key, "alice@corp.test", "files", f"{marker} see files",
                             attachments={"../../etc/cron.d/evil": b"* * * * * root id",
                                          ".bashrc": b"x", "report.txt": b"r"})
    lab.send_mail(raw, "alice@corp.test")
    [reply] = [m for m in replies_to(wait_for_mail(lab, before + 2), message_id)
               if "inbox:" in m.get_body(("plain",)).get_content()]
    listing = reply.get_body(("plain",)).get_content().split("inbox:")[1].split("\n")[0].split()
    assert sorted(listing) == ["bashrc", "evil", "report.txt"]


def test_malformed_mime_and_unknown_charsets_are_survived(lab, dkim_key):
    top = f"Authentication-Results: {MX}; dmarc=pass header.from=corp.test\r\n".encode()
    k1, b1 = make_msgid(domain="corp.test"), make_msgid(domain="corp.test")
    head = top + b"From: alice@corp.test\r\nTo: airut@corp.test\r\n"
    klingon = (head + b"Subject: klingon\r\nMessage-ID: " + k1.encode() + b"\r\n"
               b"Content-Type: text/plain; charset=x-klingon\r\n"
               b"\r\n[[scenario:echo]] qapla\xe9\r\n")
    broken = (head + b"Subject: broken\r\nMessage-ID: " + b1.encode() + b"\r\n"
              b"Content-Type: multipart/mixed; boundary=\"x\"\r\n"
              b"\r\n--x\r\nContent-Type: text/plain\r\n\r\n[[scenario:echo]] half a part\r\n")
    before = len(lab.mailbox(*ALICE))
    lab.send_mail(klingon, "alice@corp.test")
    lab.send_mail(broken, "alice@corp.test")
    messages = wait_for_mail(lab, before + 4)
    [k] = [m for m in replies_to(messages, k1)
           if "You said" in m.get_body(("plain",)).get_content()]
    text = k.get_body(("plain",)).get_content()
    assert "qapla" in text and "x-klingon" in text  # decoded leniently, and said so
    assert [m for m in replies_to(messages, b1)
            if "half a part" in m.get_body(("plain",)).get_content()]
    assert lab.guest("systemctl", "is-active", "airut-email@mail").stdout.strip() == "active"


def test_killed_between_commit_and_removal_makes_no_second_task(lab, dkim_key):
    lab.guest("mkdir", "-p", "/run/systemd/system/airut-email@mail.service.d")
    lab.guest("sh", "-c", "printf '[Service]\\nEnvironment=AIRUT_TEST_PAUSE_BEFORE_REMOVE=30\\n'"
              " > /run/systemd/system/airut-email@mail.service.d/pause.conf")
    lab.guest("systemctl", "daemon-reload")
    lab.guest("systemctl", "restart", "airut-email@mail")
    try:
        marker = lab.scenario("mail-once", [{"text": "only once: {prompt}"}])
        raw, message_id = signed(dkim_key, "alice@corp.test", "once", f"{marker} exactly once")
        lab.send_mail(raw, "alice@corp.test")
        deadline = time.monotonic() + 30
        while "between commit and removal" not in lab.journal("-u", "airut-email@mail"):
            assert time.monotonic() < deadline, "the daemon never reached the pause"
            time.sleep(0.2)
        lab.guest("systemctl", "kill", "--signal=KILL", "airut-email@mail")
        lab.guest("rm", "/run/systemd/system/airut-email@mail.service.d/pause.conf")
        lab.guest("systemctl", "daemon-reload")
        lab.guest("systemctl", "restart", "airut-email@mail")
    finally:
        lab.guest("rm", "-f", "/run/systemd/system/airut-email@mail.service.d/pause.conf")
        lab.guest("systemctl", "daemon-reload")
    before_wait = time.monotonic()
    while time.monotonic() - before_wait < 60:
        answers = [m for m in replies_to(lab_mail(lab), message_id)
                   if "only once" in m.get_body(("plain",)).get_content()]
        if answers:
            break
        time.sleep(0.5)
    time.sleep(5)  # a duplicate task would answer within this
    answers = [m for m in replies_to(lab_mail(lab), message_id)
               if "only once" in m.get_body(("plain",)).get_content()]
    assert len(answers) == 1
    assert lab.mailbox("airut@corp.test", "airut-pass") == []
    journal = lab.journal("-u", "airut-email@mail")
    assert journal.count("task from alice@corp.test: 'once'") == 1, journal


def lab_mail(lab):
    return [email.message_from_bytes(m, policy=email.policy.default)
            for m in lab.mailbox(*ALICE)]


def test_reply_waits_out_a_dead_mail_server(lab, dkim_key):
    marker = lab.scenario("mail-slow", [{"tool": "Bash", "input": {"command": "sleep 4"}},
                                        {"text": "delivered after all"}])
    raw, message_id = signed(dkim_key, "alice@corp.test", "slow", f"{marker} take your time")
    lab.send_mail(raw, "alice@corp.test")
    deadline = time.monotonic() + 30
    while not lab.task_units():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    lab.guest("systemctl", "stop", "postfix")
    try:
        deadline = time.monotonic() + 60
        while "cannot send mail" not in lab.journal("-u", "airut-email@mail"):
            assert time.monotonic() < deadline, "the reply was never attempted"
            time.sleep(0.5)
    finally:
        lab.guest("systemctl", "start", "postfix")
    deadline = time.monotonic() + 60
    while True:
        answers = [m for m in replies_to(lab_mail(lab), message_id)
                   if "delivered after all" in m.get_body(("plain",)).get_content()]
        if answers or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(answers) == 1
