"""bench/concurrency: 20 tasks over 10 conversations with max_concurrent=4.

  python -m bench.concurrency

Ten new conversations are submitted at once; as soon as each has its id, a
follow-up for it is submitted, which must wait for the first to finish. Checks:
all 20 complete, none lost, each follow-up reaches the model after its
conversation's first reply. Prints the dispatch overhead (runner claim -> the
model's first request) under load against the same figure for tasks run one at a
time, measured in the same run, and the time to the first model request when the
repository's image must be built (cold) against when it is cached (hit).
"""

from __future__ import annotations

import json
import time
from datetime import datetime

from airut_core.paths import Spool
from bench.common import booted, claim_times, first_requests, ms, one_at_a_time, percentile, submit
from bench.common import wait_reply as wait
from tests.system.lab import WRITE_ALLOWLIST, Lab, base_config

CONVERSATIONS = 10
WORK = [{"tool": "Bash", "input": {"command": "sleep 1"}}, {"text": "ok"}]

IMAGE_REPO = """
rm -rf /tmp/bench-image /srv/git/bench-image.git && mkdir -p /tmp/bench-image/.airut/container
cd /tmp/bench-image && git init -q -b main
printf 'FROM localhost/airut-base:latest\\nRUN echo 0 > /etc/generation\\n' \\
  > .airut/container/Dockerfile
""" + WRITE_ALLOWLIST + """
git add -A && git -c user.name=B -c user.email=b@x commit -qm image
git clone -q --bare /tmp/bench-image /srv/git/bench-image.git
"""
IMAGE_CHANGE = """
cd /tmp/bench-image && echo "RUN echo {n} > /etc/generation" >> .airut/container/Dockerfile
git -c user.name=B -c user.email=b@x commit -qam 'generation {n}'
git push -q /srv/git/bench-image.git main
"""


def concurrent(lab: Lab) -> dict:
    marker = lab.scenario("bench-work", WORK)
    active = Spool(lab.spool).active
    commit, marks, follow_of = {}, {}, {}
    started = time.time()
    firsts = []
    for i in range(CONVERSATIONS):
        mark = f"first-{i}-{time.time_ns()}"
        task, commit_time = submit(lab, f"{marker} {mark}")
        commit[task], marks[task] = commit_time, mark
        firsts.append(task)
    pending = list(firsts)
    while pending:
        for task in list(pending):
            conv = None
            try:
                conv = json.loads(active.file(task).read_text()).get("conversation_id")
            except (FileNotFoundError, json.JSONDecodeError):
                reply = Spool(lab.spool).outgoing("local").file(task)
                if reply.exists():
                    conv = json.loads(reply.read_text())["conversation_id"]
            if conv:
                mark = f"follow-{task}-{time.time_ns()}"
                follow, commit_time = submit(lab, f"{marker} {mark}", conversation=conv)
                commit[follow], marks[follow], follow_of[follow] = commit_time, mark, task
                pending.remove(task)
        time.sleep(0.01)
    replies = {task: wait(lab, task) for task in marks}
    wall = time.time() - started
    lost = [t for t, r in replies.items() if r["outcome"] != "success"]
    first, claimed = first_requests(lab, marks), claim_times(lab)
    out_of_order = [f for f, t in follow_of.items()
                    if first[f] < datetime.fromisoformat(replies[t]["created"]).timestamp()]
    same_conv = all(replies[f]["conversation_id"] == replies[t]["conversation_id"]
                    for f, t in follow_of.items())
    return {"tasks": len(replies), "lost": lost, "out_of_order": out_of_order,
            "same_conversation": same_conv, "wall": wall,
            "overhead": [first[t] - claimed[t] for t in marks],
            "latency": [first[t] - commit[t] for t in marks]}


def image_cache(lab: Lab, rounds: int = 3) -> dict[str, list[float]]:
    lab.guest("sh", "-ec", IMAGE_REPO)
    marker = lab.scenario("bench-image", [{"text": "ok"}])
    cold, hit = [], []
    for n in range(1, rounds + 1):
        lab.guest("sh", "-ec", IMAGE_CHANGE.format(n=n))
        for results in (cold, hit):
            mark = f"image-{n}-{len(results)}-{time.time_ns()}"
            task, committed = submit(lab, f"{marker} {mark}", repo="image")
            wait(lab, task)
            results.append(first_requests(lab, {task: mark})[task] - committed)
    return {"cold": cold, "hit": hit}


def main() -> None:
    config = base_config(demo={}, image={"repo_url": "/srv/git/bench-image.git"})
    config["execution"]["max_concurrent"] = 4
    with booted(config) as lab:
        one_at_a_time(lab, 2)  # warm up
        single = one_at_a_time(lab, 10)
        load = concurrent(lab)
        images = image_cache(lab)
    print(f"bench/concurrency: {load['tasks']} tasks over {CONVERSATIONS} conversations, "
          f"max_concurrent=4, each agent runs `sleep 1` then answers")
    print(f"  completed {load['tasks'] - len(load['lost'])}/{load['tasks']}, lost "
          f"{len(load['lost'])}, follow-ups out of order {len(load['out_of_order'])}, "
          f"follow-ups in their conversation: {load['same_conversation']}, "
          f"wall {load['wall']:.1f} s")
    print(f"  dispatch overhead (claim -> first model request), 4 at once   {ms(load['overhead'])}")
    print(f"  dispatch overhead, one task at a time (same run)             "
          f"{ms(single['claimed'])}")
    print(f"  ratio under load / alone: p50 "
          f"{percentile(load['overhead'], 50) / percentile(single['claimed'], 50):.2f}x   "
          f"p95 {percentile(load['overhead'], 95) / percentile(single['claimed'], 95):.2f}x")
    print(f"  incoming/ -> first model request, including the wait for a slot or "
          f"the conversation  {ms(load['latency'])}")
    print(f"  image: first request with a cold build {ms(images['cold'])}")
    print(f"  image: first request with a cached image {ms(images['hit'])}")
    if load["lost"] or load["out_of_order"] or not load["same_conversation"]:
        raise SystemExit("FAILED: tasks lost or out of order")


if __name__ == "__main__":
    main()
