"""bench/footprint: what the installed package costs on a machine.

  python -m bench.footprint [--tasks 5]

The built Debian 12 package (dist/, `make deb`) in a clean Debian 12 machine
(systemd-nspawn, tests/package/clean.py): the time `apt install` takes, the time from
`systemctl enable --now airut.target` to every unit active, and the resident memory
(RSS, summed over each unit's processes) of every airut daemon idle and while N tasks
run, next to the tasks' own (their unit's processes: podman, conmon and the agent,
the Claude Code CLI, given apart).
"""

from __future__ import annotations

import argparse
import json
import time

from tests.package.clean import CleanGuest, built_deb
from tests.package.test_package import CONFIG, CREDENTIALS
from tests.system.lab import bash, say, wait_until

DAEMONS = ("airut-runner.service", "airut-proxy@0.service", "airut-proxy@1.service",
           "airut-proxy-dns.service", "airut-email@demo.service")

# Run in the guest: {unit: {"rss_kb": total, "agent_kb": the claude processes'}}, over
# every process in the unit's cgroup and its sub-cgroups (cgroup v1 or v2).
RSS = r"""
import json, os, subprocess, sys
out = {}
for unit in sys.argv[1:]:
    cg = subprocess.run(["systemctl", "show", "-p", "ControlGroup", "--value", unit],
                        capture_output=True, text=True).stdout.strip()
    root = next((r + cg for r in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified",
                                  "/sys/fs/cgroup") if cg and os.path.exists(r + cg)), None)
    pids = set()
    for d, _, files in os.walk(root or "/nonexistent"):
        if "cgroup.procs" in files:
            pids |= set(open(os.path.join(d, "cgroup.procs")).read().split())
    total = agent = 0
    for pid in pids:
        try:
            status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
        except OSError:
            continue
        kb = int(status.get("VmRSS", "0 kB").split()[0])
        total += kb
        if status["Name"].strip().startswith("claude"):
            agent += kb
    out[unit] = {"rss_kb": total, "agent_kb": agent, "processes": len(pids)}
print(json.dumps(out))
"""


def rss(machine: CleanGuest, *units: str) -> dict:
    return json.loads(machine.guest("python3", "-c", RSS, *units).stdout)


def mib(kb: int) -> str:
    return f"{kb / 1024:7.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5)
    args = parser.parse_args()
    deb = built_deb()
    machine = CleanGuest()
    machine.boot(deb)
    try:
        # All N at once (the default runs 3 at a time).
        config = f"execution: {{max_concurrent: {args.tasks}}}\n{CONFIG}"
        install, start = machine.provision(config, CREDENTIALS)
        machine.guest("systemctl", "stop", "airut.target")
        wait_until(lambda: machine.guest("systemctl", "is-active", *DAEMONS, check=False)
                   .stdout.split() == ["inactive"] * len(DAEMONS), 60, "airut to stop")
        restart = machine.start()
        machine.airut("submit", "--repo", "demo", "warm up")
        time.sleep(5)
        idle = rss(machine, *DAEMONS)
        marker = machine.scenario("footprint", [bash("sleep 25; echo done"), say("{tool_result}")])
        tasks = [machine.airut("submit", "--no-wait", "--repo", "demo",
                               f"{marker} task {i}").stdout.strip() for i in range(args.tasks)]

        def units() -> list[str]:
            listed = machine.guest("systemctl", "list-units", "--plain", "--no-legend",
                                   "--state=active", "airut-task-*").stdout
            return [line.split()[0] for line in listed.splitlines() if line.strip()]
        wait_until(lambda: len(units()) == args.tasks, 120, f"{args.tasks} task units")
        wait_until(lambda: len([r for r in machine.model_requests()
                                if marker in json.dumps(r["body"])]) >= args.tasks, 120,
                   "every agent's first model request")
        busy = rss(machine, *DAEMONS, *units())
        for task in tasks:
            machine.airut("wait", "--timeout", "300", task)
    finally:
        machine.down()

    print(f"bench/footprint: the Debian 12 package ({deb.name}) in a clean Debian 12 machine")
    print(f"  apt install of the package                         {install:6.1f} s")
    print(f"  enable --now airut.target -> all units active      {start:6.1f} s "
          f"(first start: the proxy makes its CA)")
    print(f"  start airut.target again -> all units active       {restart:6.1f} s")
    print(f"\n  {'daemon':<28} {'idle':>11} {f'{args.tasks} tasks running':>20}")
    for unit in DAEMONS:
        print(f"  {unit:<28} {mib(idle[unit]['rss_kb']):>11} {mib(busy[unit]['rss_kb']):>20}")
    daemons_idle = sum(idle[u]["rss_kb"] for u in DAEMONS)
    daemons_busy = sum(busy[u]["rss_kb"] for u in DAEMONS)
    print(f"  {'all airut daemons':<28} {mib(daemons_idle):>11} {mib(daemons_busy):>20}")
    task_units = [u for u in busy if u.startswith("airut-task-")]
    tasks_total = sum(busy[u]["rss_kb"] for u in task_units)
    agents = sum(busy[u]["agent_kb"] for u in task_units)
    print(f"\n  {len(task_units)} task units: {mib(tasks_total)} in all, of which the agents "
          f"(Claude Code CLI) {mib(agents)}; per task {mib(tasks_total // len(task_units))}")
    print(f"  airut's daemons with {args.tasks} tasks: {daemons_busy / agents:.2f}x the agents' "
          f"own memory")


if __name__ == "__main__":
    main()
