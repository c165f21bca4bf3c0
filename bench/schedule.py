"""bench/schedule: what a scheduled task's firing costs, from the moment its timer
elapses to its task record in incoming/; next to the floor, a transient timer of
systemd's own (systemd-run --on-calendar) that runs `date` into a file, in the same
guest and run.

  python -m bench.schedule [--firings 12]

In the lab guest (real systemd 252): a schedule firing every 5 s (on_calendar
*:*:0/5). The runner is stopped, so each record stays in incoming/ to be timed and
removed (a waiting record would make the next firing skip). "elapse" is the calendar
time, "trigger" the timer's LastTriggerUSec (systemd's own moment of firing: the gap
between the two is AccuracySec and the event loop); the record's time is its
`created` stamp, written just before the record is renamed into place.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import datetime

from airut_core.records import TaskRecord
from bench.common import booted, ms
from tests.system.lab import base_config

TIMER = "airut-schedule@sched--tick.timer"
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
EVERY = 5


def last_trigger(lab, unit: str) -> float:
    """When the timer last fired, on the wall clock: systemd keeps it to the microsecond
    only on the monotonic clock, which the guest shares with this process."""
    out = lab.guest("systemctl", "show", "-p", "LastTriggerUSecMonotonic", unit).stdout
    span = out.strip().split("=", 1)[1]  # systemd's time span: "1h 43min 46.552725s"
    seconds = sum(float(n) * UNITS[u] for n, u in re.findall(r"([\d.]+)([a-z]+)", span))
    return seconds + (time.time() - time.monotonic())


def firings(lab, n: int) -> tuple[list[float], list[float]]:
    incoming = lab.spool / "incoming"
    from_elapse, from_trigger = [], []
    lab.guest("systemctl", "start", TIMER)
    seen: set[str] = set()
    while len(from_elapse) < n:
        for path in sorted(incoming.glob("*.json")):
            if path.name in seen:
                continue
            seen.add(path.name)
            record = TaskRecord.from_dict(json.loads(path.read_text()))
            created = datetime.fromisoformat(record.created).timestamp()
            elapse = (created // EVERY) * EVERY
            from_elapse.append(created - elapse)
            from_trigger.append(created - last_trigger(lab, TIMER))
            path.unlink()  # not waiting any more: the next firing is not skipped
        time.sleep(0.05)
    lab.guest("systemctl", "stop", TIMER)
    return from_elapse, from_trigger


def floor(lab, n: int) -> tuple[list[float], list[float]]:
    """systemd's own timer running one `date`, same calendar."""
    lab.guest("rm", "-rf", "/run/bench-floor")
    lab.guest("mkdir", "-p", "/run/bench-floor")
    lab.guest("systemd-run", "--unit=bench-floor", f"--on-calendar=*:*:0/{EVERY}",
              "--timer-property=AccuracySec=1s", "/bin/sh", "-c",
              "date +%s.%N > /run/bench-floor/$(date +%s%N)")
    from_elapse, from_trigger = [], []
    seen: set[str] = set()
    while len(from_elapse) < n:
        names = lab.guest("ls", "/run/bench-floor").stdout.split()
        for name in sorted(set(names) - seen):
            seen.add(name)
            wrote = float(lab.guest("cat", f"/run/bench-floor/{name}").stdout)
            from_elapse.append(wrote - (wrote // EVERY) * EVERY)
            from_trigger.append(wrote - last_trigger(lab, "bench-floor.timer"))
        time.sleep(0.1)
    lab.guest("systemctl", "stop", "bench-floor.timer", check=False)
    return from_elapse, from_trigger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--firings", type=int, default=12)
    args = parser.parse_args()
    config = base_config(sched={"slack": {
        "bot_token": "xoxb-bench", "app_token": "xapp-bench",
        "authorized": [{"workspace_members": True}]},
        "schedules": {"tick": {"on_calendar": f"*:*:0/{EVERY}", "prompt": "tick",
                               "deliver": {"channel": "slack", "to": "C0BENCH"}}}})
    with booted(config) as lab:
        # The timer may run from boot (airut.target wants it) and the runner may have
        # claimed a firing already: both stopped, and what they left removed.
        lab.guest("systemctl", "stop", TIMER, "airut-runner.service")
        for stage in ("incoming", "active"):
            for path in (lab.spool / stage).glob("*.json"):
                path.unlink()
        f_elapse, f_trigger = floor(lab, args.firings)
        a_elapse, a_trigger = firings(lab, args.firings)
    print(f"timer firing every {EVERY} s, {args.firings} firings each (AccuracySec=1s)")
    print("floor: systemd-run timer -> `date` in a file")
    print(f"  from the calendar time   {ms(f_elapse)}")
    print(f"  from the trigger         {ms(f_trigger)}")
    print("airut-schedule@: timer -> task record in incoming/")
    print(f"  from the calendar time   {ms(a_elapse)}")
    print(f"  from the trigger         {ms(a_trigger)}")


if __name__ == "__main__":
    main()
