"""A state and spool as the daemons write them, for the dashboard's tests and
bench/web: conversations with finished tasks, the agent's stream-json output, the
proxy's network.log, cgroup samples, waiting and running records.

Written through airut_core's own writers (conversation.save, Stage.put), in the
formats the runner, the proxy and the Claude Code CLI produce.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airut_core import cgroup, conversation, paths
from airut_core import config as config_mod
from airut_core.conversation import Conversation, ReplySummary
from airut_core.records import TaskRecord

SESSION = "8ee71ed2-85c5-4c9c-a309-79bc4c77b9ea"
LIMITS = {"timeout": 1800, "memory": 4 << 30, "cpus": 2.0, "pids_limit": 1024, "disk": 10 << 30}


def task_id(n: int, when: datetime) -> str:
    return f"{when.strftime('%Y%m%dT%H%M%S')}{n % 1000:03d}-{n:06x}"


def events(turns: list[dict], result: str = "Done.", cost: float = 0.05) -> list[dict]:
    """A run's stream-json: init, the scripted turns, the result."""
    out: list[dict] = [{"type": "system", "subtype": "init", "cwd": "/workspace",
                        "session_id": SESSION, "tools": ["Bash", "Read", "Write"],
                        "model": "claude-sonnet-5-5"}]
    for n, turn in enumerate(turns):
        if "tool" in turn:
            tid = f"toolu_{n:04d}"
            out.append({"type": "assistant", "session_id": SESSION, "message": {
                "role": "assistant", "content": [{"type": "tool_use", "id": tid,
                                                  "name": turn["tool"],
                                                  "input": turn["input"]}]}})
            out.append({"type": "user", "session_id": SESSION, "message": {
                "role": "user", "content": [{"type": "tool_result", "tool_use_id": tid,
                                             "content": turn.get("output", ""),
                                             "is_error": turn.get("error", False)}]}})
        else:
            out.append({"type": "assistant", "session_id": SESSION, "message": {
                "role": "assistant", "content": [{"type": "text", "text": turn["text"]}]}})
    out.append({"type": "result", "subtype": "success", "is_error": False, "result": result,
                "num_turns": len(turns) + 1, "total_cost_usd": cost, "duration_ms": 4200,
                "session_id": SESSION, "usage": {"input_tokens": 24590, "output_tokens": 22}})
    return out


@dataclass
class Built:
    cfg: config_mod.Config
    finished: list[str] = field(default_factory=list)  # task ids, oldest first
    conversations: list[str] = field(default_factory=list)
    big_task: str | None = None
    big_conversation: str | None = None


def config(root: Path) -> config_mod.Config:
    return config_mod.parse(
        f"paths: {{spool: {root}/spool, state: {root}/state}}\n"
        "repos:\n  demo: {repo_url: x, email: {address: airut@corp.test, imap: {host: mx, "
        "username: u, password: !secret mail}, smtp: {host: mx}, trusted_authserv_id: mx, "
        "authorized_senders: ['*@corp.test']}}\n"
        "  other: {repo_url: y, slack: {bot_token: !secret b, app_token: !secret a, "
        "authorized: [{workspace_members: true}]}}\n", "airut.yaml")


def add_finished(state_dir: Path, cid: str, repo: str, tasks: list[tuple[str, datetime, str,
                 list[dict]]], request: str = "Please do the thing.",
                 sender: str = "alice@corp.test") -> None:
    """A conversation whose tasks finished: their output, network lines and samples."""
    cdir = state_dir / "conversations" / cid
    (cdir / "metrics").mkdir(parents=True, exist_ok=True)
    conv = Conversation(conversation_id=cid, repo=repo, model="sonnet", session_id=SESSION,
                        created=tasks[0][1].isoformat())
    with open(cdir / "events.jsonl", "ab") as ev, open(cdir / "network.log", "a") as net:
        for tid, when, outcome, evs in tasks:
            start = ev.tell()
            for e in evs:
                ev.write((json.dumps(e) + "\n").encode())
            stamp = when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
            net.write(f"{stamp} {tid} ALLOWED POST api.anthropic.com /v1/messages -> 200\n")
            net.write(f"{stamp} {tid} BLOCKED GET other.test /probe -> 403 (host)\n")
            for k in range(5):
                cgroup.append_sample(cgroup.samples_file(cdir, tid), cgroup.Sample(
                    when.timestamp() + k, (40 + 10 * k) << 20, 200_000 * k))
            conv.replies.append(ReplySummary(
                task_id=tid, outcome=outcome, time=(when + timedelta(seconds=5)).isoformat(),
                sender=sender, channel=f"email-{repo}", unit=f"airut-task-{cid}-{tid}.service",
                duration_ms=4200, cost_usd=0.05, turns=3, usage={"cost_usd": 0.05, "turns": 3,
                                                                 "input_tokens": 24590,
                                                                 "output_tokens": 22},
                started=when.isoformat(), events_offset=start, events_end=ev.tell(),
                limits=LIMITS, image="localhost/airut-repo:0123456789abcdef0123",
                image_created=when.timestamp() - 3600, request=request,
                reply=f"Done ({outcome})."))
    conversation.save(state_dir, conv)


def build(root: Path, finished: int = 20, events_bytes: int = 0, seed: int = 7) -> Built:
    """`finished` tasks over the last 30 days, in conversations of one to three tasks;
    with events_bytes, one more task whose output is that large."""
    rng = random.Random(seed)
    cfg = config(root)
    state = Path(cfg.paths.state)
    (state / "conversations").mkdir(parents=True, exist_ok=True)
    paths.Spool(cfg.paths.spool).ensure()
    built = Built(cfg)
    now = datetime.now(UTC)
    n = 0
    while n < finished:
        cid = f"{len(built.conversations) + 1:08x}"
        group = []
        for _ in range(min(rng.randint(1, 3), finished - n)):
            when = now - timedelta(days=rng.random() * 29.5)
            outcome = rng.choice(["success"] * 8 + ["failed", "stopped", "timeout"])
            tid = task_id(n, when)
            group.append((tid, when, outcome, events([
                {"tool": "Bash", "input": {"command": "ls"}, "output": "README.md"},
                {"text": "Looked around."}])))
            built.finished.append(tid)
            n += 1
        add_finished(state, cid, rng.choice(["demo", "demo", "other"]), group)
        built.conversations.append(cid)
    if events_bytes:
        cid = f"{len(built.conversations) + 1:08x}"
        when = now - timedelta(hours=1)
        tid = task_id(n, when)
        turns, size = [], 0
        while size < events_bytes:
            output = "x" * rng.randint(200, 20_000)
            turns.append({"tool": "Bash", "input": {"command": f"step {len(turns)}"},
                          "output": output})
            size += len(output) + 400
        add_finished(state, cid, "demo", [(tid, when, "success", events(turns))])
        built.big_task, built.big_conversation = tid, cid
    return built


def queue(cfg: config_mod.Config, text: str = "queued work", conversation_id: str | None = None,
          sender: str = "bob@corp.test", subject_text: str | None = None) -> str:
    task = TaskRecord(repo="demo", channel="email-demo", reply_to="bob@corp.test",
                      sender=sender, text=subject_text or text,
                      conversation_id=conversation_id)
    paths.Spool(cfg.paths.spool).incoming.ensure().put(task.task_id, task.to_dict())
    return task.task_id


def run(cfg: config_mod.Config, cid: str, evs: list[dict] | None = None,
        stop_requested: bool = False) -> str:
    """A claimed task the runner started: its record in active/, its output so far."""
    state = Path(cfg.paths.state)
    cdir = paths.conversation_dir(state, cid)
    cdir.mkdir(parents=True, exist_ok=True)
    if conversation.load(state, cid) is None:
        conversation.save(state, Conversation(conversation_id=cid, repo="demo", model="sonnet"))
    task = TaskRecord(repo="demo", channel="email-demo", reply_to="bob@corp.test",
                      sender="bob@corp.test", text="running work", conversation_id=cid)
    events_file = cdir / "events.jsonl"
    offset = events_file.stat().st_size if events_file.exists() else 0
    with open(events_file, "ab") as f:
        for e in evs or []:
            f.write((json.dumps(e) + "\n").encode())
    record = {**task.to_dict(), "state": {
        "unit": f"airut-task-{cid}-{task.task_id}.service", "events_offset": offset,
        "started": datetime.now(UTC).isoformat(), "limits": LIMITS,
        "stop_requested": stop_requested}}
    paths.Spool(cfg.paths.spool).active.ensure().put(task.task_id, record)
    return task.task_id
