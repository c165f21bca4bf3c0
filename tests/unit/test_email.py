"""The email channel's judgement: who sent it, may they, what it says, which thread."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage

import pytest

from airut_core import config
from airut_core.records import ReplyRecord
from airut_ingest.email import compose, intake, parse

CFG = config.parse("""
repos:
  demo:
    repo_url: x
    email:
      address: airut@corp.test
      imap: {host: localhost, username: u, password: p}
      smtp: {host: localhost}
      trusted_authserv_id: mx.corp.test
      authorized_senders: [alice@corp.test, "*@partner.test"]
      max_attachment_bytes: 1000
""", "f").repo("demo").email

PASS = "mx.corp.test; dkim=pass header.d=corp.test; dmarc=pass (p=reject) header.from=corp.test"


def mail(body: str = "Please fix the bug.", sender: str = "Alice <alice@corp.test>",
         results: list[str] | None = None, subject: str = "Bug", **headers: str) -> bytes:
    msg = EmailMessage()
    for value in results if results is not None else [PASS]:
        msg["Authentication-Results"] = value
    msg["From"] = sender
    msg["To"] = headers.pop("to", "airut@corp.test")
    msg["Subject"] = subject
    msg["Message-ID"] = headers.pop("message_id", "<m1@corp.test>")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return bytes(msg)


def deep_mime(depth: int = 1000) -> bytes:
    """MIME nested deeper than Python's email parser can recurse."""
    body = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                    for i in range(depth)) + b"--b%d\r\n\r\nx\r\n" % depth
    return (b"Authentication-Results: " + PASS.encode() + b"\r\nFrom: alice@corp.test\r\n"
            b"Subject: deep\r\nMessage-ID: <deep@x>\r\n"
            b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + body)


def check(raw: bytes, known=lambda cid: cid == "0a1b2c3d") -> intake.Verdict:
    return intake.decide(intake.read(raw, intake.Rules.of(CFG)), known)


def test_an_authorized_sender_with_dmarc_pass_is_accepted():
    v = check(mail())
    assert (v.accepted, v.reason, v.sender) == (True, "ok", "alice@corp.test")
    assert v.text == "Subject: Bug\n\nPlease fix the bug."
    assert v.conversation_id is None and v.message_id == "<m1@corp.test>"


@pytest.mark.parametrize(("results", "sender", "reason"), [
    # dmarc=pass, but for another domain than the From address
    (["mx.corp.test; dmarc=pass header.from=evil.test"], None, "not_authenticated"),
    # from a server we do not trust
    (["mx.evil.test; dmarc=pass header.from=corp.test"], None, "not_authenticated"),
    # a forged pass below the real (failing) topmost header
    (["mx.corp.test; dmarc=fail header.from=corp.test",
      "mx.corp.test; dmarc=pass header.from=corp.test"], None, "not_authenticated"),
    # "dmarc=pass" only inside a comment
    (["mx.corp.test; dkim=pass (dmarc=pass) header.d=corp.test"], None, "not_authenticated"),
    (["mx.corp.test; dmarc=passthrough header.from=corp.test"], None, "not_authenticated"),
    (["mx.corp.test; spf=pass smtp.mailfrom=corp.test"], None, "not_authenticated"),  # SPF alone
    ([], None, "not_authenticated"),
    (["mx.corp.test; dmarc=pass"], None, "not_authenticated"),  # for no domain at all
])
def test_authentication_failures(results, sender, reason):
    v = check(mail(results=results, sender=sender or "alice@corp.test"))
    assert (v.accepted, v.reason) == (False, reason), v.detail


def test_only_the_topmost_header_counts():
    # The real header (on top) passes; a forged failing one below changes nothing.
    v = check(mail(results=[PASS, "mx.corp.test; dmarc=fail header.from=corp.test"]))
    assert v.accepted


def test_two_from_headers_are_malformed():
    raw = mail().replace(b"From: Alice <alice@corp.test>",
                         b"From: Alice <alice@corp.test>\nFrom: eve@evil.test")
    v = check(raw)
    assert (v.accepted, v.reason) == (False, "malformed")


def test_a_display_name_that_looks_allowed_is_not_the_sender():
    raw = mail(sender='"alice@corp.test" <eve@partner.test>',
               results=["mx.corp.test; dmarc=pass header.from=partner.test"])
    v = check(raw)
    assert v.sender == "eve@partner.test" and v.accepted  # *@partner.test is allowed
    raw = mail(sender='"alice@corp.test" <eve@evil.test>',
               results=["mx.corp.test; dmarc=pass header.from=evil.test"])
    v = check(raw)
    assert (v.accepted, v.reason, v.sender) == (False, "not_authorized", "eve@evil.test")


def test_an_unauthorized_sender_is_refused():
    v = check(mail(sender="bob@corp.test"))
    assert (v.accepted, v.reason, v.sender) == (False, "not_authorized", "bob@corp.test")


def test_wildcard_domains_and_case():
    v = check(mail(sender="Carol@PARTNER.test",
                   results=["MX.CORP.TEST; dmarc=pass header.from=partner.test"]))
    assert v.accepted and v.sender == "carol@partner.test"


def test_threading_in_reply_to_then_references_then_subject():
    known = {"0a1b2c3d", "11112222"}.__contains__
    v = check(mail(in_reply_to="<airut.0a1b2c3d.1.ab@corp.test>"), known)
    assert v.conversation_id == "0a1b2c3d"
    v = check(mail(references="<airut.11112222.1.a@corp.test> <x@y> <airut.0a1b2c3d.2.b@c>"),
              known)
    assert v.conversation_id == "0a1b2c3d"  # newest first
    v = check(mail(subject="Re: [ID:11112222] Bug"), known)
    assert v.conversation_id == "11112222"
    assert v.text == "Please fix the bug."  # no Subject line in a continued conversation
    v = check(mail(in_reply_to="<airut.99999999.1.ab@corp.test>"), known)
    assert v.conversation_id is None  # unknown: a new conversation


def test_plus_address_picks_the_model_of_a_new_conversation():
    assert check(mail(to="airut+opus@corp.test")).model == "opus"
    assert check(mail(to="other+opus@corp.test")).model is None
    assert check(mail(to="airut+opus@corp.test",
                      in_reply_to="<airut.0a1b2c3d.1.x@corp.test>")).model is None


def test_empty_messages():
    assert check(mail(body="", subject="")).reason == "empty"
    subject_only = check(mail(body="", subject="Run the tests"))
    assert subject_only.accepted and subject_only.text == "Subject: Run the tests"
    assert check(mail(body="\n", subject="Re: [ID:0a1b2c3d] x")).reason == "empty"


def authenticated(subject: str, body: str) -> EmailMessage:
    """A message from alice that passed DMARC, to build on."""
    msg = EmailMessage()
    msg["Authentication-Results"] = PASS
    msg["From"] = "alice@corp.test"
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def test_html_part_is_preferred_and_quotes_are_cut():
    msg = authenticated("Re: [ID:0a1b2c3d] x", "plain version")
    msg.add_alternative('<p>Use <b>Postgres</b>.</p><div class="gmail_quote">On Mon airut '
                        'wrote:<blockquote>old</blockquote></div>', subtype="html")
    v = check(bytes(msg))
    assert v.text == "Use **Postgres**.\n\n[quoted text removed]"


def test_attachments_get_safe_names_and_a_size_cap():
    msg = authenticated("files", "see attached")
    for name, data in [("../../etc/passwd", b"a"), (".hidden", b"b"), ("C:\\x\\report.txt", b"c"),
                       ("report.txt", b"d"), ("big.bin", b"x" * 2000), ("\x1bevil.sh", b"e")]:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    v = check(bytes(msg))
    assert [a.name for a in v.attachments] == ["passwd", "hidden", "report.txt", "report-1.txt",
                                               "evil.sh"]
    assert any("big.bin" in n and "not saved" in n for n in v.notes)


def test_unknown_charsets_and_broken_mime_do_not_crash():
    raw = (b"Authentication-Results: " + PASS.encode() + b"\r\nFrom: alice@corp.test\r\n"
           b"Subject: x\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\nqapla\xff\r\n")
    v = check(raw)
    assert v.accepted and "qapla" in v.text and "x-klingon" in v.notes[0]
    raw = (b"Authentication-Results: " + PASS.encode() + b"\r\nFrom: alice@corp.test\r\n"
           b"Subject: x\r\nContent-Type: multipart/mixed; boundary=\"nope\"\r\n\r\n"
           b"no parts at all\r\n")
    v = check(raw)
    assert v.reason in ("ok", "empty")
    assert check(b"\x00\xff garbage").reason == "not_authenticated" or not check(
        b"\x00\xff garbage").accepted


def test_plain_quotes_and_inline_replies():
    text = "Yes.\n\nOn Tue, Nov 24, 2026 at 9:00 airut <airut@corp.test> wrote:\n> Merge?\n"
    assert parse.plain_without_quote(text) == "Yes.\n\n[quoted text removed]"
    inline = "> Merge?\nYes.\n> Tests?\nAlso yes.\n"
    assert parse.plain_without_quote(inline) == inline.strip()
    outlook = "Fine.\n\nFrom: airut\nSent: Tuesday\nTo: alice\n\nold text"
    assert parse.plain_without_quote(outlook) == "Fine.\n\n[quoted text removed]"


def test_reply_is_threaded_with_both_parts_and_attachments():
    thread = compose.Thread(to="alice@corp.test", subject="Re: Re: [ID:0a1b2c3d] Bug",
                            message_id="<m2@corp.test>", references=["<m1@corp.test>"])
    record = ReplyRecord(task_id="t1", conversation_id="0a1b2c3d", repo="demo",
                         channel="email-demo", reply_to=thread.dumps(),
                         text="Fixed in `main`.\n\n- one\n- two", outcome="success",
                         attachments=["result.csv"])
    composed = compose.reply("airut@corp.test", record, compose.Thread.loads(record.reply_to),
                             [("result.csv", b"a,b\n")], [])
    msg = email.message_from_bytes(bytes(composed), policy=email.policy.default)
    assert msg["Subject"] == "Re: [ID:0a1b2c3d] Bug"
    assert msg["In-Reply-To"] == "<m2@corp.test>"
    assert msg["References"] == "<m1@corp.test> <m2@corp.test>"
    assert msg["Message-ID"].startswith("<airut.0a1b2c3d.")
    assert msg["Message-ID"].endswith("@corp.test>")
    assert msg.get_body(("plain",)).get_content().startswith("Fixed in `main`.")
    assert "<code>main</code>" in msg.get_body(("html",)).get_content()
    [attached] = list(msg.iter_attachments())
    assert attached.get_filename() == "result.csv"
    assert parse.ParsedMail(message_id=None, subject="", text="",
                            in_reply_to=[msg["Message-ID"]]).conversation_id() == "0a1b2c3d"


def config_text(tmp_path, smtp: str = "{host: localhost}", extra: str = "") -> str:
    """A whole airut.yaml with one repository and its mailbox, state under tmp_path."""
    return f"""
paths: {{spool: {tmp_path}/spool, state: {tmp_path}/state}}
repos:
  demo:
    repo_url: x
    email:
      address: airut@corp.test
      imap: {{host: localhost, username: u, password: p}}
      smtp: {smtp}
      trusted_authserv_id: mx.corp.test
      authorized_senders: [alice@corp.test]
      {extra}
"""


def test_check_command_prints_the_daemons_verdict(tmp_path, capsys):
    from airut_cli.main import main as cli

    cfg = tmp_path / "airut.yaml"
    cfg.write_text(config_text(tmp_path))
    good, bad = tmp_path / "good.eml", tmp_path / "bad.eml"
    good.write_bytes(mail(to="airut+opus@corp.test"))
    bad.write_bytes(mail(sender="mallory@corp.test"))
    for path, expected in ((good, True), (bad, False)):
        with pytest.raises(SystemExit) as done:
            cli(["--config", str(cfg), "email", "check", str(path), "--repo", "demo"])
        assert done.value.code == 0  # whatever the verdict
        verdict = json.loads(capsys.readouterr().out)
        assert verdict["accepted"] is expected
        assert set(verdict) == {"accepted", "reason", "sender", "conversation_id", "subject",
                                "text", "attachments", "model"}
    assert verdict["reason"] == "not_authorized" and verdict["sender"] == "mallory@corp.test"


def test_a_mail_the_server_keeps_refusing_is_quarantined_with_its_reasons(tmp_path):
    from airut_ingest.email.daemon import EmailChannel, _pending

    cfg = config.parse(config_text(
        tmp_path, smtp="{host: 127.0.0.1, port: 9, security: none}",  # nothing listens there
        extra="retry_limit: 3\n      retry_delay: 0.1"), "f")
    channel = EmailChannel(cfg, "demo")
    msg = compose.acknowledgment("airut@corp.test", compose.Thread(to="alice@corp.test",
                                                                   subject="x"), "0a1b2c3d", None)
    channel.deferred.put("ack-t1", _pending(msg, "ack-t1"))
    for attempt in range(1, 4):
        pending = channel.deferred.read("ack-t1") if channel.deferred.exists("ack-t1") else None
        assert pending is not None, f"gone after {attempt - 1} attempts"
        channel.attempt("ack-t1", pending)
    assert not channel.deferred.exists("ack-t1")
    quarantined = channel.failed.read("ack-t1")
    assert quarantined["attempts"] == 3 and len(quarantined["failures"]) == 3
    assert all("refused" in f["reason"].lower() for f in quarantined["failures"])
    assert not (channel.sent / "ack-t1").exists()
