"""bench/chaos: mail in, replies out, while airut's daemons are killed at random.

  python -m bench.chaos [--mails 200] [--kill-every 4] [--seed 1]

In the lab guest, DKIM-signed mail goes through postfix to the repository's mailbox:
new conversations, follow-ups sent into a thread (as replies to its acknowledgment)
while its first task still runs, mail with attachments, and a few poison mails. All
the while a schedule kills a random airut daemon (airut-email@chaos, airut-runner,
airut-proxy) with SIGKILL every few seconds, and once restarts all of airut.target.

At the end every good mail must have exactly one threaded reply (besides the
acknowledgment of a new conversation) in its sender's mailbox, every poison mail must
be set aside with its reason, and nothing may be left in active/ or incoming/, no task
unit and no task network. Prints the counts and the wall time; exits 1 if any count
is wrong.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field

from bench.common import booted
from tests.system.lab import Lab, base_config
from tests.system.mail import MX, new_dkim_key, signed
from tests.system.test_email import ANSWERED, QUARANTINED, REJECTED, poison_mails

SENDERS = {"alice@corp.test": "alice-pass", "bob@corp.test": "bob-pass"}
DAEMONS = ("airut-email@chaos.service", "airut-runner.service", "airut-proxy@0.service",
           "airut-proxy@1.service", "airut-proxy-dns.service")
ACK = "started working on this"


@dataclass
class Mail:
    token: str
    sender: str
    message_id: str
    kind: str  # new | follow-up | attachment | hostile (answered) | quarantine | reject
    sent: float = 0.0
    replies: list = field(default_factory=list)
    raw: bytes = b""


def config() -> dict:
    cfg = base_config(chaos={"email": {
        "address": "airut@corp.test", "trusted_authserv_id": MX,
        "authorized_senders": ["*@corp.test"],
        "imap": {"host": "mx.corp.test", "port": 143, "security": "starttls",
                 "username": "airut@corp.test", "password": "airut-pass", "poll_interval": 5,
                 "ca_file": "/etc/airut/lab-tls/ca.pem"},
        "smtp": {"host": "mx.corp.test", "port": 587, "security": "starttls",
                 "username": "airut@corp.test", "password": "airut-pass",
                 "ca_file": "/etc/airut/lab-tls/ca.pem"},
        "retry_delay": 1, "max_message_bytes": "1M"}})
    cfg["execution"].update(max_concurrent=4, sandbox_wait=60)
    return cfg


def poison() -> list[Mail]:
    """Mail that crashed or stalled the channel before: some must now be answered, some
    quarantined, some rejected (tests/system/test_email.py has the same set)."""
    out = []
    for name, (raw, message_id) in poison_mails().items():
        kind = ("hostile" if name in ANSWERED else "quarantine" if name in QUARANTINED
                else "reject")
        assert kind != "reject" or name in REJECTED
        out.append(Mail(name, "alice@corp.test", message_id, kind, raw=raw))
    return out


class Chaos(threading.Thread):
    def __init__(self, lab: Lab, every: float, rng: random.Random, restart_at: float):
        super().__init__(daemon=True)
        self.lab, self.every, self.rng, self.restart_at = lab, every, rng, restart_at
        self.stop = threading.Event()
        self.kills: dict[str, int] = {d: 0 for d in DAEMONS}
        self.restarted = False

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(self.every):
            if not self.restarted and time.monotonic() - start >= self.restart_at:
                self.lab.guest("systemctl", "restart", "airut.target", check=False)
                self.restarted = True
                continue
            victim = self.rng.choice(DAEMONS)
            self.lab.guest("systemctl", "kill", "--signal=KILL", victim, check=False)
            self.kills[victim] += 1


def mailbox(lab: Lab, user: str) -> list:
    return [email.message_from_bytes(m, policy=email.policy.default)
            for m in lab.mailbox(user, SENDERS[user])]


def body(msg) -> str:
    part = msg.get_body(("plain",))
    return part.get_content() if part else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=200)
    parser.add_argument("--kill-every", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    key = new_dkim_key()
    with booted(config()) as lab:
        marker = lab.scenario("chaos", [{"tool": "Bash", "input": {"command": "sleep 2"}},
                                        {"text": "answered: {prompt}"}])
        bad = poison()
        n_good = args.mails - len(bad)
        mails: list[Mail] = []
        started = time.monotonic()
        chaos = Chaos(lab, args.kill_every, rng, restart_at=60)
        chaos.start()
        follow_ups_wanted = n_good // 4
        for i in range(n_good - follow_ups_wanted):
            sender = rng.choice(list(SENDERS))
            token = f"tok{i:04d}x{rng.randrange(1 << 30):08x}"
            kind = "attachment" if i % 7 == 3 else "new"
            extra = {"attachments": {f"notes-{i}.txt": token.encode()}} if kind == \
                "attachment" else {}
            raw, mid = signed(key, sender, f"chaos {i}", f"{marker} {token}", **extra)
            lab.send_mail(raw, sender)
            mails.append(Mail(token, sender, mid, kind, time.monotonic()))
            if i % 17 == 5 and bad:
                mail = bad.pop()
                lab.send_mail(mail.raw, mail.sender)
                mail.sent = time.monotonic()
                mails.append(mail)
            if i % 3 == 2 and follow_ups_wanted:
                follow_ups_wanted -= _follow_up(lab, key, mails, marker, rng)
        for mail in bad:
            lab.send_mail(mail.raw, mail.sender)
            mail.sent = time.monotonic()
            mails.append(mail)
        while follow_ups_wanted > 0 and time.monotonic() - started < 300:
            sent = _follow_up(lab, key, mails, marker, rng)
            follow_ups_wanted -= sent
            if not sent:
                time.sleep(2)
        good = [m for m in mails if m.kind not in ("quarantine", "reject")]
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            _collect(lab, good)
            if all(m.replies for m in good):
                break
            time.sleep(3)
        chaos.stop.set()
        chaos.join()
        time.sleep(15)  # a duplicate would arrive within this
        _collect(lab, good)
        wall = time.monotonic() - started
        return _report(lab, mails, chaos, wall)


def _follow_up(lab: Lab, key: bytes, mails: list[Mail], marker: str,
               rng: random.Random) -> int:
    """A reply into a thread whose acknowledgment has arrived: 1 if one was sent."""
    by_id = {m.message_id: m for m in mails if m.kind in ("new", "attachment")}
    followed = {m.token.split(":")[0] for m in mails if m.kind == "follow-up"}
    for user in SENDERS:
        for msg in mailbox(lab, user):
            origin = by_id.get(str(msg["In-Reply-To"] or "").split()[0] if msg["In-Reply-To"]
                               else "")
            if origin is None or ACK not in body(msg) or origin.token in followed:
                continue
            token = f"{origin.token}:f{rng.randrange(1 << 30):08x}"
            raw, mid = signed(key, user, msg["Subject"], f"{marker} {token}",
                              in_reply_to=msg["Message-ID"],
                              references=f"{origin.message_id} {msg['Message-ID']}")
            lab.send_mail(raw, user)
            mails.append(Mail(token, user, mid, "follow-up", time.monotonic()))
            return 1
    return 0


def _collect(lab: Lab, good: list[Mail]) -> None:
    by_id = {m.message_id: m for m in good}
    for m in good:
        m.replies = []
    for user in SENDERS:
        for msg in mailbox(lab, user):
            if ACK in body(msg):
                continue
            # One mail may answer several merged messages of its sender: each a parent.
            for parent in str(msg["In-Reply-To"] or "").split():
                if parent in by_id:
                    by_id[parent].replies.append(msg)


def _report(lab: Lab, mails: list[Mail], chaos: Chaos, wall: float) -> int:
    good = [m for m in mails if m.kind not in ("quarantine", "reject")]
    # A mail sent again after a crash between the SMTP server's acceptance and the
    # sent-marker is the same message (the deferred copy, its Message-ID kept): mail
    # systems that deduplicate by Message-ID show it once. Counted apart.
    distinct = {id(m): {str(r["Message-ID"]) for r in m.replies} for m in good}
    replied = sum(1 for m in good if len(distinct[id(m)]) == 1)
    duplicated = sum(1 for m in good if len(distinct[id(m)]) > 1)
    resent = sum(len(m.replies) - len(distinct[id(m)]) for m in good)
    lost = [m for m in good if not m.replies]
    records = " ".join(p.read_text() for p in
                       (lab.spool / "failed" / "email-chaos").glob("message-*.json"))
    quarantine = [m for m in mails if m.kind == "quarantine"]
    quarantined = [m for m in quarantine if m.message_id in records]
    journal = lab.journal("-u", "airut-email@chaos")
    reject = [m for m in mails if m.kind == "reject"]
    rejected = [m for m in reject if re.search(
        r"rejected mail from \S+ \(malformed\).*'poison " + re.escape(m.token) + "'", journal)]
    left = {stage: len(list((lab.spool / stage).glob("*.json")))
            for stage in ("incoming", "active")}
    units = lab.task_units()
    networks = [n for n in lab.guest("podman", "network", "ls", "--format",
                                     "{{.Name}}").stdout.split() if n.startswith("airut-")]
    kinds = {k: sum(1 for m in mails if m.kind == k) for k in
             ("new", "follow-up", "attachment", "hostile", "quarantine", "reject")}
    print(json.dumps({"sent": len(mails), "kinds": kinds, "good": len(good),
                      "replied_once": replied, "duplicated": duplicated, "lost": len(lost),
                      "same_mail_resent": resent,
                      "quarantined": f"{len(quarantined)}/{len(quarantine)}",
                      "rejected": f"{len(rejected)}/{len(reject)}",
                      "left_in_spool": left, "task_units_left": len(units),
                      "task_networks_left": len(networks), "kills": chaos.kills,
                      "target_restarted": chaos.restarted, "wall_s": round(wall, 1)},
                     indent=1))
    for m in lost[:10]:
        print(f"lost: {m.kind} {m.token} {m.message_id}", file=sys.stderr)
    ok = (replied == len(good) and not duplicated and len(quarantined) == len(quarantine)
          and len(rejected) == len(reject) and not any(left.values()) and not units
          and not networks)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
