"""bench/dispatch: how long from a task record committed in incoming/ to the model's
first request from the agent, against the floor of a bare `podman run --rm IMAGE true`
measured in the same run, in the same lab guest.

  make bench            (or: python -m bench.dispatch [--tasks 20])

Tasks run one at a time, each in a new conversation. The commit time is taken right
after the record's rename into incoming/ (written from the host, as a channel would);
the first request's time is stamped by the demo model in the guest.
"""

from __future__ import annotations

import argparse

from bench.common import booted, floor_runs, ms, one_at_a_time, percentile
from tests.system.lab import base_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20)
    args = parser.parse_args()
    with booted(base_config(demo={})) as lab:
        floor_runs(lab, 2)  # warm the image and podman's storage
        one_at_a_time(lab, 2)  # and the runner, the CLI binary's page cache
        floor = floor_runs(lab, args.tasks)
        runs = one_at_a_time(lab, args.tasks)
    f50 = percentile(floor, 50)
    d = runs["dispatch"]
    print(f"bench/dispatch: {args.tasks} tasks, one at a time, real systemd + podman + "
          "Claude Code CLI")
    print(f"  floor     podman run --rm IMAGE true             {ms(floor)}")
    print(f"  dispatch  incoming/ -> first model request       {ms(d)}")
    print(f"  end2end   incoming/ -> reply record              {ms(runs['reply'])}")
    print(f"  ratio dispatch/floor: p50 {percentile(d, 50) / f50:.2f}x   "
          f"p95 {percentile(d, 95) / f50:.2f}x")


if __name__ == "__main__":
    main()
