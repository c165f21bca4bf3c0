"""bench/sandbox: what `airut sandbox run -- true` costs next to the floor, `podman run
--rm IMAGE true` in the same guest and run (the image cached: the runner has it).

  python -m bench.sandbox [--runs 12]

In the lab guest (real systemd 252, real podman): three ways, one after the other,
timed inside the guest from the command's start to its return:
  podman      podman run --rm IMAGE true (no network of its own, no confinement)
  open        airut sandbox run --repo open -- true (sandbox off: a network, no proxy)
  sandboxed   airut sandbox run --repo demo -- true (the allowlist through airut-proxy)
The schedule's part of a timer firing (OnCalendar to the record in incoming/) is
bench/schedule.
"""

from __future__ import annotations

import argparse

from bench.common import IMAGE, booted, ms
from tests.system.lab import base_config

OPEN = {"network": {"sandbox": False}, "masked_secrets": {}}


def timed(lab, command: str, n: int) -> list[float]:
    script = (f"for i in $(seq {n}); do s=$(date +%s.%N); {command} >/dev/null || exit 9; "
              "e=$(date +%s.%N); echo $s $e; done")
    out = lab.guest("sh", "-c", script, timeout=1200).stdout.split("\n")
    return [float(e) - float(s) for s, e in (line.split() for line in out if line.strip())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=12)
    args = parser.parse_args()
    with booted(base_config(demo={}, open=OPEN)) as lab:
        for warm in ("demo", "open"):  # the mirrors cloned, the image checked once
            lab.airut("sandbox", "run", "--repo", warm, "--", "true")
        floor = timed(lab, f"podman run --rm {IMAGE} true", args.runs)
        open_ = timed(lab, "airut sandbox run --repo open -- true", args.runs)
        sandboxed = timed(lab, "airut sandbox run --repo demo -- true", args.runs)
    p50 = sorted(floor)[len(floor) // 2]
    print(f"{args.runs} runs each, one after the other, image cached")
    print(f"  podman run --rm IMAGE true             {ms(floor)}")
    print(f"  airut sandbox run (sandbox off)        {ms(open_)}   "
          f"x{sorted(open_)[len(open_) // 2] / p50:.1f} of the floor's p50")
    print(f"  airut sandbox run (allowlist, proxy)   {ms(sandboxed)}   "
          f"x{sorted(sandboxed)[len(sandboxed) // 2] / p50:.1f} of the floor's p50")


if __name__ == "__main__":
    main()
