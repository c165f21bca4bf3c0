"""The demo's mail leg, run in the lab guest with its own python3 (standard library
only): Alice mails the repository's mailbox through postfix, and this waits for the
acknowledgment and the threaded answer in her mailbox (dovecot, over IMAP).

The Authentication-Results header is the one the lab's mail server would add after
checking DKIM and DMARC (doc/email-setup.md): airut trusts only that header, from the
authserv-id in its configuration."""

import email
import email.policy
import imaplib
import re
import smtplib
import sys
import time
from email.message import EmailMessage
from email.utils import make_msgid

TEXT = sys.argv[1] if len(sys.argv) > 1 else "Have a look around and leave a note."
msg = EmailMessage()
msg["Authentication-Results"] = ("mx.corp.test; dkim=pass header.d=corp.test; "
                                 "dmarc=pass (p=reject) header.from=corp.test")
msg["From"] = "Alice <alice@corp.test>"
msg["To"] = "airut@corp.test"
msg["Subject"] = "A first look at the demo project"
msg["Message-ID"] = message_id = make_msgid(domain="corp.test")
msg.set_content(TEXT)
with smtplib.SMTP("127.0.0.1", 25) as smtp:
    smtp.send_message(msg)
print(f"alice@corp.test -> airut@corp.test: {msg['Subject']!r} ({message_id}), "
      "accepted by postfix")


def answers() -> list:
    box = imaplib.IMAP4("127.0.0.1", 143)
    box.login("alice@corp.test", "alice-pass")
    box.select("INBOX", readonly=True)
    found = []
    for num in box.search(None, "ALL")[1][0].split():
        raw = box.fetch(num, "(BODY.PEEK[])")[1][0][1]
        mail = email.message_from_bytes(raw, policy=email.policy.default)
        if message_id in str(mail["In-Reply-To"] or "").split():
            found.append(mail)
    box.logout()
    return found


started = time.monotonic()
shown = 0
while time.monotonic() - started < 300:
    found = answers()
    for mail in found[shown:]:
        body = mail.get_body(("plain",)).get_content().strip()
        print(f"\n[{time.monotonic() - started:4.1f} s] in Alice's mailbox: "
              f"{mail['Subject']}\n  In-Reply-To: {mail['In-Reply-To']}\n")
        print("  " + body.replace("\n", "\n  "))
    shown = len(found)
    if shown >= 2:  # the acknowledgment, then the answer
        tag = re.search(r"\[ID:([0-9a-f]+)\]", str(found[-1]["Subject"]))
        if tag:  # for the demo's next steps
            with open("/srv/demo-conversation", "w") as f:
                f.write(tag.group(1))
        sys.exit(0)
    time.sleep(0.5)
sys.exit("no answer within 300 s: journalctl -u airut-email@demo -u airut-runner")
