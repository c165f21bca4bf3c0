"""bench/e2e: the installed package, from a DKIM-signed mail accepted by postfix to the
model's first request and to the threaded reply in the sender's IMAP mailbox.

  python -m bench.e2e [--messages 20]

The built Debian 12 package in a clean Debian 12 machine (tests/package/clean.py), with
its own postfix and dovecot and the demo model as the API. Messages are signed on the
host (dkimpy) and carry the mail server's Authentication-Results. Measured one at a
time (each sent after the previous one's answer arrived) and five at once, and, in
the same run, the floors the path is made of:
  IDLE    an IMAP client IDLE-ing on a mailbox: SMTP accepted -> EXISTS
  podman  `podman run --rm IMAGE true`
  claude  the Claude Code CLI alone, from its start to its first request to the model
Each figure is also given as a ratio to the sum of the three floors' medians.
"""

from __future__ import annotations

import argparse
import json
import time

from airut_core.config import AgentConfig
from bench.common import first_requests, floor_runs, ms, percentile
from tests.package.clean import CleanGuest, built_deb
from tests.package.test_package import CONFIG, CREDENTIALS
from tests.system.lab import say
from tests.system.mail import new_dkim_key, signed

# In the guest, with airut's own environment (imapclient): send each prepared message
# over SMTP and time its acceptance, then wait (IMAP IDLE on alice's INBOX) for the
# answer that replies to it. argv: a JSON list of batches, each a list of
# [file, message-id]; prints {message-id: [accepted, answered]}.
E2E = r"""
import email, email.policy, json, smtplib, sys, time
from imapclient import IMAPClient

batches = json.loads(sys.argv[1])
box = IMAPClient("127.0.0.1", 143, ssl=False)
box.login("alice@corp.test", "alice-pass")
box.select_folder("INBOX")
seen = set(box.search(["ALL"]))
times = {}

def answers():
    found = {}
    new = sorted(set(box.search(["ALL"])) - seen)
    if not new:
        return found
    for uid, data in box.fetch(new, ["BODY.PEEK[]"]).items():
        msg = email.message_from_bytes(data[b"BODY[]"], policy=email.policy.default)
        if "e2e-answered" in msg.get_body(("plain",)).get_content():  # not the acknowledgment
            seen.add(uid)
            found[str(msg["In-Reply-To"]).strip()] = time.time()
    return found

for batch in batches:
    box.idle()
    for path, message_id in batch:
        raw = open(path, "rb").read()
        with smtplib.SMTP("127.0.0.1", 25) as s:
            s.sendmail("alice@corp.test", ["airut@corp.test"], raw)
        times[message_id] = [time.time(), None]
    waiting = {m for _, m in batch}
    deadline = time.time() + 600
    while waiting and time.time() < deadline:
        if box.idle_check(timeout=5):
            box.idle_done()
            for message_id, at in answers().items():
                if message_id in waiting:
                    times[message_id][1] = at
                    waiting.discard(message_id)
            box.idle()
    box.idle_done()
print(json.dumps(times))
"""

IDLE_FLOOR = r"""
import json, smtplib, sys, time
from imapclient import IMAPClient
box = IMAPClient("127.0.0.1", 143, ssl=False)
box.login("bob@corp.test", "bob-pass")
box.select_folder("INBOX")
out = []
for i in range(int(sys.argv[1])):
    box.idle()
    with smtplib.SMTP("127.0.0.1", 25) as s:
        s.sendmail("alice@corp.test", ["bob@corp.test"],
                   f"From: alice@corp.test\r\nTo: bob@corp.test\r\nSubject: floor {i}\r\n\r\nx\r\n")
    sent = time.time()
    while not any(r[1] == b"EXISTS" for r in box.idle_check(timeout=10)):
        pass
    out.append(time.time() - sent)
    box.idle_done()
print(json.dumps(out))
"""

CLAUDE_FLOOR = r"""
set -e
export HOME=$(mktemp -d) ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_API_KEY=sk-ant-floor
for i in $(seq "$1"); do
  echo "$i $(date +%s.%N)"
  timeout 120 {claude} -p "claude-floor-$i-$2" --output-format json >/dev/null
done
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20)
    args = parser.parse_args()
    n = args.messages
    key = new_dkim_key()
    deb = built_deb()
    machine = CleanGuest()
    machine.boot(deb)
    try:
        machine.provision(CONFIG, CREDENTIALS)
        marker = machine.scenario("e2e", [say("e2e-answered")])
        srv = machine.run / "srv"

        def batch(prefix: str, count: int) -> tuple[list, dict]:
            files, marks = [], {}
            for i in range(count):
                mark = f"{prefix}-{i}-{time.time_ns()}"
                raw, message_id = signed(key, "alice@corp.test", f"bench {mark}",
                                         f"{marker} {mark}")
                (srv / f"{mark}.eml").write_bytes(raw)
                files.append([f"/srv/{mark}.eml", message_id])
                marks[message_id] = mark
            return files, marks

        def run(batches: list) -> dict:
            out = machine.guest("/usr/lib/airut/bin/python", "-c", E2E, json.dumps(batches),
                                timeout=3600).stdout
            return json.loads(out)

        warm, _ = batch("warm", 2)
        run([[m] for m in warm])  # the image, podman's storage, the CLI's page cache
        floor_runs(machine, 2)
        serial, serial_marks = batch("serial", n)
        serial_times = run([[m] for m in serial])
        fives, five_marks = batch("five", 5 * ((n + 4) // 5))
        five_times = run([fives[i:i + 5] for i in range(0, len(fives), 5)])
        idle = json.loads(machine.guest("/usr/lib/airut/bin/python", "-c", IDLE_FLOOR,
                                        str(n), timeout=600).stdout)
        podman = floor_runs(machine, n)
        claude = _claude_floor(machine, n)
        first = first_requests(machine, {m: mark for m, mark in
                                         {**serial_marks, **five_marks}.items()})
    finally:
        machine.down()

    def figures(times: dict) -> tuple[list[float], list[float]]:
        missing = [m for m, (_, answered) in times.items() if answered is None]
        if missing:
            raise SystemExit(f"{len(missing)} message(s) got no answer: {missing[:3]}")
        return ([first[m] - accepted for m, (accepted, _) in times.items()],
                [answered - accepted for m, (accepted, answered) in times.items()])

    floors = percentile(idle, 50) + percentile(podman, 50) + percentile(claude, 50)

    def line(label: str, values: list[float]) -> str:
        return (f"  {label:<48} {ms(values)}   p50 {percentile(values, 50) / floors:5.2f}x"
                f" p95 {percentile(values, 95) / floors:5.2f}x the floors' sum")

    print(f"bench/e2e: the Debian 12 package ({deb.name}) in a clean Debian 12 machine, "
          f"{n} messages each way")
    print(f"  floor IDLE    SMTP accepted -> IMAP EXISTS               {ms(idle)}")
    print(f"  floor podman  podman run --rm IMAGE true                 {ms(podman)}")
    print(f"  floor claude  CLI start -> its first model request       {ms(claude)}")
    print(f"  sum of the floors' medians: {floors * 1000:.1f} ms")
    to_model, to_reply = figures(serial_times)
    print(line("one at a time: accepted -> first model request", to_model))
    print(line("one at a time: accepted -> reply in the mailbox", to_reply))
    to_model, to_reply = figures(five_times)
    print(line("5 at once:     accepted -> first model request", to_model))
    print(line("5 at once:     accepted -> reply in the mailbox", to_reply))


def _claude_floor(machine: CleanGuest, n: int) -> list[float]:
    binary = AgentConfig().claude_binary  # where `airut setup claude` put it
    tag = str(time.time_ns())
    out = machine.guest("bash", "-c", CLAUDE_FLOOR.replace("{claude}", binary), "floor",
                        str(n), tag, timeout=1800).stdout
    started = {f"claude-floor-{i}-{tag}": float(t) for i, t in
               (line.split() for line in out.splitlines() if line.strip())}
    first = first_requests(machine, {mark: mark for mark in started})
    return [first[mark] - started[mark] for mark in started]


if __name__ == "__main__":
    main()
