"""bench/email: from a mail accepted by the SMTP server to its task record in incoming/.

  python -m bench.email [--messages 50]

In the lab guest (postfix and dovecot on loopback), one at a time: the floor is an
IMAP client IDLE-ing on a mailbox, timed from the SMTP submission to the server's
EXISTS; then airut-email@mail, timed from submission to the task record's rename
into incoming/ (seen by inotify). The runner is stopped meanwhile, so only the
intake is measured.
"""

from __future__ import annotations

import argparse
import json

from bench.common import booted, ms, percentile
from tests.system.lab import base_config

SCRIPT = r"""
import json, os, smtplib, sys, time
from imapclient import IMAPClient
import inotify_simple

n = int(sys.argv[1])
MX = "Authentication-Results: mx.corp.test; dmarc=pass header.from=corp.test\r\n"

def message(to, i):
    return (MX + f"From: alice@corp.test\r\nTo: {to}\r\nSubject: bench {i}\r\n"
            f"Message-ID: <bench-{i}-{time.time_ns()}@corp.test>\r\n\r\nhello {i}\r\n").encode()

def submit(to, i):
    with smtplib.SMTP("127.0.0.1", 25) as s:
        s.sendmail("alice@corp.test", [to], message(to, i))
    return time.monotonic()

floor = []
box = IMAPClient("127.0.0.1", 143, ssl=False)
box.login("alice@corp.test", "alice-pass")
box.select_folder("INBOX")
for i in range(n):
    box.idle()
    sent = submit("alice@corp.test", i)
    while not any(r[1] == b"EXISTS" for r in box.idle_check(timeout=10)):
        pass
    floor.append(time.monotonic() - sent)
    box.idle_done()
box.logout()

notify = inotify_simple.INotify()
notify.add_watch("/var/spool/airut/incoming", inotify_simple.flags.MOVED_TO)
intake = []
for i in range(n):
    sent = submit("airut@corp.test", i)
    while not [e for e in notify.read(timeout=30000) if e.name.endswith(".json")]:
        pass
    intake.append(time.monotonic() - sent)
print(json.dumps({"floor": floor, "intake": intake}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50)
    args = parser.parse_args()
    config = base_config(mail={"email": {
        "address": "airut@corp.test", "trusted_authserv_id": "mx.corp.test",
        "authorized_senders": ["alice@corp.test"], "acknowledge": False,
        "imap": {"host": "127.0.0.1", "port": 143, "security": "none",
                 "username": "airut@corp.test", "password": "airut-pass"},
        "smtp": {"host": "127.0.0.1", "port": 25, "security": "none"}}})
    with booted(config) as lab:
        lab.guest("systemctl", "stop", "airut-runner")
        out = lab.guest("/var/lib/airut-lab/guest-venv/bin/python", "-c", SCRIPT,
                        str(args.messages), timeout=900).stdout
    times = json.loads(out)
    floor, intake = times["floor"], times["intake"]
    print(f"bench/email: {args.messages} messages, one at a time, postfix -> dovecot -> airut")
    print(f"  floor   SMTP accepted -> IMAP IDLE EXISTS            {ms(floor)}")
    print(f"  airut   SMTP accepted -> task record in incoming/    {ms(intake)}")
    print(f"  ratio airut/floor: p50 {percentile(intake, 50) / percentile(floor, 50):.2f}x   "
          f"p95 {percentile(intake, 95) / percentile(floor, 95):.2f}x")


if __name__ == "__main__":
    main()
