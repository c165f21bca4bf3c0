"""bench/slack: how fast airut-slack turns a Slack event into a committed, acknowledged
task record, and a reply record into a message in the thread; next to the floor, the
fake Slack's own push -> ack round trip with a slack-sdk client that acks at once.

  python -m bench.slack [--events 50]

The daemon runs as its own process (`python -m airut_ingest.slack.daemon`, as its unit
starts it) on a spool and state of its own, against the local fake Slack
(tests/slackfake.py) in this process. Events are DMs of one authorized user, pushed
one at a time (each waits for its ack) and then all at once. "ack" is push -> the
daemon's acknowledgment, which it sends only after the task record is in incoming/.
"reply" is a reply record renamed into outgoing/slack-demo/ -> chat.postMessage
received by the fake; the replies are written one at a time, then all at once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from slack_sdk import WebClient
from slack_sdk.socket_mode import SocketModeClient
from slack_sdk.socket_mode.response import SocketModeResponse

from airut_core.records import ReplyRecord, TaskRecord
from airut_core.spool import Stage
from airut_ingest.slack.address import Where
from bench.common import ms
from tests.slackfake import APP_TOKEN, BOT_TOKEN, FakeSlack

USER = "U0BENCH"


def push_all(fake: FakeSlack, n: int, at_once: bool, prefix: str) -> list[float]:
    events = [fake.message(f"D0{prefix}{i:03d}", USER, f"{prefix} {i}") for i in range(n)]
    if not at_once:
        pushed = [fake.push(e) for e in events]
    else:
        pushed = [fake.push(e, wait=False) for e in events]
        for p in pushed:
            fake.wait_ack(p, timeout=120)
    assert all(p.attempts == 1 for p in pushed), "an envelope was redelivered"
    return [p.acked_at - p.pushed for p in pushed]


def floor(fake: FakeSlack, n: int) -> tuple[list[float], list[float]]:
    client = SocketModeClient(APP_TOKEN, web_client=WebClient(base_url=fake.api_url))
    client.socket_mode_request_listeners.append(
        lambda c, req: c.send_socket_mode_response(SocketModeResponse(req.envelope_id)))
    client.connect()
    before = fake.connections
    deadline = time.monotonic() + 10
    while fake.connections == before and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        return push_all(fake, n, False, "F"), push_all(fake, n, True, "G")
    finally:
        threading.Thread(target=client.close, daemon=True).start()


def replies(fake: FakeSlack, root: Path, at_once: bool) -> list[float]:
    incoming = Stage(root / "spool" / "incoming")
    outgoing = Stage(root / "spool" / "outgoing" / "slack-demo")
    tasks = [TaskRecord.from_dict(incoming.read(n)) for n in incoming.names()]
    for name in incoming.names():
        incoming.remove(name)
    written: dict[tuple[str, str], float] = {}  # (channel, thread) -> when
    for task in tasks:
        reply = ReplyRecord(task_id=task.task_id, conversation_id=task.conversation_id,
                            repo="demo", channel="slack-demo", reply_to=task.reply_to,
                            text=f"**done** with {task.text}", outcome="success")
        outgoing.put(task.task_id, reply.to_dict())
        where = Where.loads(task.reply_to)
        written[(where.channel, where.thread_ts)] = time.monotonic()
        if not at_once:
            wait_posted(fake, len(fake.calls_of("chat.postMessage")) + 1)
    wait_posted(fake, len(tasks))
    return [call.time - written[(call.args.get("channel"), call.args.get("thread_ts"))]
            for call in fake.calls_of("chat.postMessage")]


def wait_posted(fake: FakeSlack, count: int) -> None:
    deadline = time.monotonic() + 120
    while len(fake.calls_of("chat.postMessage")) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("replies not posted")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50)
    args = parser.parse_args()
    n = args.events
    fake = FakeSlack(ack_timeout=10)
    fake.add_user(USER, "Bench")
    print(f"floor: fake Slack push -> ack, a slack-sdk client that acks at once ({n} events)")
    one, burst = floor(fake, n)
    print(f"  one at a time   {ms(one)}")
    print(f"  {n} at once      {ms(burst)}")
    fake.calls.clear()
    root = Path(tempfile.mkdtemp(prefix="bench-slack-"))
    config = root / "airut.yaml"
    config.write_text(yaml.safe_dump({
        "paths": {"spool": str(root / "spool"), "state": str(root / "state")},
        "repos": {"demo": {"repo_url": "/srv/git/demo.git", "slack": {
            "bot_token": BOT_TOKEN, "app_token": APP_TOKEN,
            "authorized": [{"workspace_members": True}], "api_url": fake.api_url,
            "file_hosts": [fake.host]}}}}))
    before = fake.connections
    daemon = subprocess.Popen([sys.executable, "-m", "airut_ingest.slack.daemon", "demo",
                               "--config", str(config)],
                              env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                              stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while fake.connections == before:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("airut-slack did not connect")
            time.sleep(0.05)
        time.sleep(0.5)
        print(f"airut-slack: push -> task record committed and acked ({n} events)")
        one_d = push_all(fake, n, False, "A")
        print(f"  one at a time   {ms(one_d)}   "
              f"({sorted(one_d)[n // 2] / sorted(one)[n // 2]:.1f}x the floor's p50)")
        fake.calls.clear()
        r_one = replies(fake, root, at_once=False)
        burst_d = push_all(fake, n, True, "B")
        print(f"  {n} at once      {ms(burst_d)}   "
              f"({sorted(burst_d)[n // 2] / sorted(burst)[n // 2]:.1f}x the floor's p50)")
        fake.calls.clear()
        r_burst = replies(fake, root, at_once=True)
        print(f"airut-slack: reply record -> chat.postMessage at the fake ({n} replies)")
        print(f"  one at a time   {ms(r_one)}")
        print(f"  {n} at once      {ms(r_burst)}")
    finally:
        daemon.terminate()
        daemon.wait(10)
        fake.close()


if __name__ == "__main__":
    main()
