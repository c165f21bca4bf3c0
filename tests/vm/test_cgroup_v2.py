"""Task limits on cgroup v2, the way Debian 12 and 13 boot: a real VM, the real runner.

Each task goes through `airut submit`, the runner's transient unit, podman
(`--cgroups=split`, crun), the network sandbox (proxy and firewall) and the Claude Code
CLI against the demo model. The tests read what the kernel and systemd say: the
unit's files in the cgroup2 tree while it runs, systemd's result in the journal,
the outcome in the reply.

The emulated machine is slow (the agent takes about a minute to start), so the file
keeps to a handful of tasks. The out-of-memory test runs before the end-to-end one on
purpose: on v2 the memory counters of the slice add up every task's kills, and a
success after an OOM shows the exit helper reads its own unit's.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.system.lab import bash, say, wait_until
from tests.vm.vm import IMAGE_MARK

TASK_TIMEOUT = 600  # seconds for one task in the emulated machine


def payload_pids(vm, cgroup: str, command: str) -> list[str]:
    """Processes of a command (its name, /proc/PID/comm) in the container's own cgroup
    below the unit's."""
    script = (f'for d in "{cgroup}"/libpod-payload-*; do cat "$d/cgroup.procs"; done 2>/dev/null'
              ' | while read p; do [ "$(cat /proc/$p/comm 2>/dev/null)" = "$1" ] && echo $p;'
              " done")
    return vm.guest("sh", "-c", script, "sh", command, check=False).stdout.split()


def cpu_stat(vm, cgroup: str) -> dict[str, float]:
    """The cgroup's cpu.stat, with the guest's clock (seconds) read at the same moment."""
    out = vm.guest("sh", "-c", f'cat /proc/uptime "{cgroup}/cpu.stat"').stdout.splitlines()
    stat = {k: float(v) for k, v in (line.split() for line in out[1:])}
    stat["clock"] = float(out[0].split()[0])
    return stat


def test_the_machine_is_a_debian_server_on_cgroup_v2(vm):
    assert vm.guest("stat", "-fc", "%T", "/sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    controllers = vm.read("/sys/fs/cgroup/cgroup.controllers").split()
    assert {"cpu", "memory", "pids"} <= set(controllers)
    assert vm.guest("podman", "info", "--format",
                    "{{.Host.CgroupsVersion}} {{.Host.CgroupManager}} {{.Host.OCIRuntime.Name}}"
                    ).stdout.split() == ["v2", "systemd", "crun"]
    assert vm.read("/proc/swaps").count("\n") >= 2, "the machine has swap, as servers do"
    for unit in ("airut-runner", "airut-proxy", "airut-firewall"):
        assert vm.guest("systemctl", "is-active", unit).stdout.strip() == "active"


def started(vm, name: str, turns: list, text: str, repo: str = "demo") -> tuple[str, str, str]:
    """A task of scenario `name`, submitted and running: its id, unit and cgroup."""
    marker = vm.scenario(name, turns)
    task = vm.submit_no_wait(f"{marker} {text}", repo=repo)
    unit = vm.wait_for_unit(task, timeout=120)
    return task, unit, vm.cgroup(unit)


def test_memory_limit_ends_in_an_oom_kill_and_the_reply_says_so(vm):
    # Twelve processes of 40 MiB each: together past the 320 MiB limit.
    hog = "for i in $(seq 12); do perl -e '$x = \"a\" x (40 << 20); sleep 60' & done; wait"
    task, unit, cgroup = started(vm, "oom", [bash(hog), say("I allocated half a gigabyte.")],
                                 "use a lot of memory", repo="small")
    assert vm.read(f"{cgroup}/memory.max").strip() == str(320 << 20)
    # With swap on the machine, a limit on RAM alone would let the task swap instead.
    assert vm.read(f"{cgroup}/memory.swap.max").strip() == "0"

    reply = vm.wait_reply(task, timeout=TASK_TIMEOUT)
    assert reply["outcome"] == "out_of_memory", reply
    assert "ran out of memory" in reply["text"] and "320 MiB" in reply["text"]
    assert "I allocated" not in reply["text"]
    # systemd saw the kernel's OOM kill in the unit (v1 cannot report it)...
    assert f"{unit}: Failed with result 'oom-kill'." in vm.journal("-u", unit)
    assert "task finished: out_of_memory (oom-kill)" in vm.journal(f"AIRUT_TASK={task}")
    # ...and it was the unit's limit, not the machine running out.
    kills = [line for line in vm.journal("-k").splitlines() if "oom-kill:constraint" in line]
    assert kills and all("constraint=CONSTRAINT_MEMCG" in line for line in kills), kills
    assert f"oom_memcg=/airut.slice/airut-tasks.slice/{unit}," in kills[0], kills


def test_task_end_to_end_in_its_unit_cgroup(vm):
    # The repository's Dockerfile: the first task of the session built its image in a
    # build unit, whose exit helper (ExecStopPost) had to run for any task to start.
    task, unit, cgroup = started(vm, "write-file", [
        bash("sleep 10; echo made-by-agent > created.txt; cat /etc/image-mark"),
        say("I created created.txt in an image {tool_result}")], "leave a file")
    assert cgroup.startswith("/sys/fs/cgroup/airut.slice/airut-tasks.slice/")
    assert vm.read(f"{cgroup}/memory.max").strip() == str(1 << 30)
    assert vm.read(f"{cgroup}/cpu.max").strip() == "100000 100000"
    assert vm.read(f"{cgroup}/pids.max").strip() == "256"
    # The agent runs in the container's cgroup inside the unit (--cgroups=split), not
    # in a scope of its own under machine.slice, where no unit limit would reach it.
    agent = wait_until(lambda: payload_pids(vm, cgroup, "claude"), 240,
                       "the agent in the unit's cgroup", step=1.0)
    assert f"0::{cgroup.removeprefix('/sys/fs/cgroup')}/libpod-payload-" in vm.read(
        f"/proc/{agent[0]}/cgroup")

    reply = vm.wait_reply(task, timeout=TASK_TIMEOUT)
    assert reply["outcome"] == "success", reply
    assert reply["unit"] == unit
    assert reply["text"].startswith(f"I created created.txt in an image {IMAGE_MARK}")
    assert "Cost: $" in reply["text"]
    created = f"/var/lib/airut/conversations/{reply['conversation_id']}/workspace/created.txt"
    assert vm.read(created) == "made-by-agent\n"
    state = json.loads(vm.read(f"/var/lib/airut/conversations/{reply['conversation_id']}"
                               "/conversation.json"))
    assert vm.guest("stat", "-c", "%u", created).stdout.strip() == str(state["uid_base"])
    assert state["uid_base"] >= 1_000_000_000
    journal = vm.journal(f"AIRUT_TASK={task}")
    assert "(image localhost/airut-repo:" in journal
    assert "task finished: success (success)" in journal


@pytest.fixture(scope="module")
def busy_task(vm):
    """A task whose agent runs two busy loops: it wants two CPUs and is allowed one."""
    spin = "for i in 1 2; do timeout 900 sh -c 'while :; do :; done' & done; wait"
    task, unit, cgroup = started(vm, "busy", [bash(spin), say("Finished spinning.")],
                                 "keep the processor busy")
    wait_until(lambda: len(payload_pids(vm, cgroup, "sh")) >= 2, TASK_TIMEOUT,
               "both busy loops in the container", step=1.0)
    return task, unit, cgroup


def test_cpu_quota_holds_a_busy_task(vm, busy_task):
    _, _, cgroup = busy_task
    assert vm.read(f"{cgroup}/cpu.max").strip() == "100000 100000"  # CPUQuota=100%
    before = cpu_stat(vm, cgroup)
    time.sleep(15)
    after = cpu_stat(vm, cgroup)
    wall = after["clock"] - before["clock"]
    used = (after["usage_usec"] - before["usage_usec"]) / 1e6
    periods = after["nr_periods"] - before["nr_periods"]
    throttled = after["nr_throttled"] - before["nr_throttled"]
    # Two loops on two processors would use two seconds a second; the quota allows one.
    assert used <= wall * 1.05, (used, wall)
    assert used >= wall * 0.5, (used, wall)  # they do run, at the quota
    assert periods > 0 and throttled >= 0.8 * periods, (throttled, periods)


def test_stop_ends_a_running_task(vm, busy_task):
    task, unit, _ = busy_task
    started = time.monotonic()
    vm.guest("airut", "stop", task)
    reply = vm.wait_reply(task, timeout=120)
    assert reply["outcome"] == "stopped", reply
    assert "stopped on request" in reply["text"]
    assert time.monotonic() - started < 90  # the stop grace, podman's stop, the reply
    assert unit not in vm.task_units()
    assert "task finished: stopped" in vm.journal(f"AIRUT_TASK={task}")
