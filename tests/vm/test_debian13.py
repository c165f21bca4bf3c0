"""airut's Debian 13 package on a clean Debian 13 server booted on cgroup v2, the way
Debian boots: install, configure, check and start it as an operator does, each daemon
as its own user, a mail round trip and that task's log, task limits as the kernel and
systemd enforce them, the units' hardening as systemd 257 scores it, and purge. A real
VM (qemu without KVM), the real runner.

Each task goes through the real channel or `airut submit`, the runner's transient
unit, podman (`--cgroups=split`, crun), the network sandbox (proxy and firewall) and
the Claude Code CLI against the demo model. The tests read what the kernel and systemd
say: the unit's files in the cgroup2 tree while it runs, systemd's result in the
journal, the outcome in the reply.

The tests run in file order on one machine: each step starts where the last left it.
The emulated machine is slow (the agent takes about a minute to start), so the file
keeps to a handful of tasks. The out-of-memory test runs before the mail round trip on
purpose: on v2 the memory counters of the slice add up every task's kills, and a
success after an OOM shows the exit helper reads its own unit's.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from tests.package.clean import HARDENING_LIMITS, INSTALLED, OWN_USERS
from tests.system.lab import base_config, bash, say, wait_until
from tests.system.mail import answer, signed
from tests.vm.vm import IMAGE_MARK

TASK_TIMEOUT = 600  # seconds for one task in the emulated machine
API_KEY = "sk-ant-api03-debian-13-package-key-0123456789abcdef"
ALICE = ("alice@corp.test", "alice-pass")
CREDENTIALS = {"mail-demo": "airut-pass", "anthropic-api-key": API_KEY}
MAIL = {"address": "airut@corp.test", "trusted_authserv_id": "mx.corp.test",
        "authorized_senders": ["*@corp.test"]}
SERVER = {"host": "mx.corp.test", "security": "starttls", "ca_file": "/etc/airut/lab-tls/ca.pem",
          "username": "airut@corp.test", "password": "SECRET-mail-demo"}
# Generous time limits, and memory limits that fit the machine's 3 GiB.
SLOW = {"timeout": 900, "cpus": 1.0, "pids_limit": 256}


def config() -> str:
    """The lab's configuration as an operator writes it: secrets by name (`!secret`),
    a mail channel for the demo repository, a small one for the memory limit."""
    cfg = base_config(
        demo={"resource_limits": {**SLOW, "memory": "1G"},
              "email": {**MAIL, "imap": {**SERVER, "port": 143, "poll_interval": 5},
                        "smtp": {**SERVER, "port": 587}}},
        small={"resource_limits": {**SLOW, "memory": "320M"}})
    cfg = json.loads(json.dumps(cfg))  # a copy each: no YAML anchors for shared parts
    for repo in cfg["repos"].values():
        repo["masked_secrets"]["ANTHROPIC_API_KEY"]["value"] = "SECRET-anthropic-api-key"
    return re.sub(r"\bSECRET-([a-z-]+)", r"!secret \1", yaml.safe_dump(cfg))


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


def test_the_machine_is_a_clean_debian_13_server_on_cgroup_v2(vm):
    assert 'VERSION_ID="13"' in vm.read("/etc/os-release")
    assert vm.guest("stat", "-fc", "%T", "/sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    controllers = vm.read("/sys/fs/cgroup/cgroup.controllers").split()
    assert {"cpu", "memory", "pids"} <= set(controllers)
    assert vm.guest("podman", "info", "--format",
                    "{{.Host.CgroupsVersion}} {{.Host.CgroupManager}} {{.Host.OCIRuntime.Name}}"
                    ).stdout.split() == ["v2", "systemd", "crun"]
    assert vm.read("/proc/swaps").count("\n") >= 2, "the machine has swap, as servers do"
    assert vm.guest("sh", "-c", "command -v airut", check=False).returncode != 0


def test_install_makes_users_directories_and_enabled_units(vm):
    took = vm.install(timeout=900)
    vm.timings["apt install of the package"] = took
    print(f"\napt install of {vm.deb.name}: {took:.1f} s")
    assert vm.guest("/usr/lib/airut/bin/python", "--version").stdout.startswith("Python 3.13.")
    assert vm.installed_state() == INSTALLED


def test_configure_check_and_start(vm):
    vm.configure(config(), CREDENTIALS)
    vm.guest("mkdir", "-p", "/etc/airut/demo-scenarios")  # the demo model's scripted answers
    vm.allow_loopback_upstreams()
    check = vm.airut("check", check=False)
    assert check.returncode == 0, check.stdout
    for name in ("secret anthropic-api-key", "secret mail-demo", "podman", "cgroups",
                 "nftables", "Claude Code CLI", "repository demo", "email demo: IMAP",
                 "email demo: SMTP"):
        assert re.search(rf"^ok    {re.escape(name)}", check.stdout, re.M), (name, check.stdout)
    took = vm.start("airut-demo-model.service", timeout=600)
    vm.timings["enable --now airut.target to all units active"] = took
    print(f"\nsystemctl enable --now airut.target to all units active: {took:.1f} s")
    assert "airut-email@demo.service" in vm.guest(
        "systemctl", "show", "-p", "Wants", "--value", "airut.target").stdout.split()
    assert vm.guest("ls", "/run/credentials/airut-email@demo.service").stdout.split() \
        == ["mail-demo"]


def test_each_daemon_runs_as_its_own_user_and_reaches_only_its_own(vm):
    assert vm.daemon_users() == OWN_USERS
    assert vm.reachable() == []


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


def test_a_signed_mail_runs_a_task_in_its_unit_cgroup_and_gets_a_threaded_reply(vm, dkim_key):
    # The repository's Dockerfile: the first task built its image in a build unit,
    # whose exit helper (ExecStopPost) had to run for any task to start.
    marker = vm.scenario("write-file", [
        bash("sleep 10; echo made-by-agent > created.txt; "
             "curl -s -o /dev/null https://other.test/vm-probe; cat /etc/image-mark"),
        say("I created created.txt in an image {tool_result}")])
    raw, message_id = signed(dkim_key, "alice@corp.test", "First task", f"{marker} leave a file")
    vm.send_mail(raw, "alice@corp.test")
    unit = wait_until(lambda: next(iter(vm.task_units()), None), 300, "the task's unit",
                      step=1.0)
    cgroup = vm.cgroup(unit)
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

    reply = wait_until(lambda: answer(vm, *ALICE, message_id, "I created created.txt"),
                       TASK_TIMEOUT, "the answer in alice's mailbox", step=5.0)
    assert reply.get_body(("plain",)).get_content().startswith(
        f"I created created.txt in an image {IMAGE_MARK}")
    assert reply["From"] == "airut@corp.test" and message_id in reply["References"]
    task = next(t for t in json.loads(vm.airut("tasks", "--json").stdout)
                if t["sender"] == "alice@corp.test")
    assert task["outcome"] == "success" and task["unit"] == unit, task
    created = f"/var/lib/airut/conversations/{task['conversation']}/workspace/created.txt"
    assert vm.read(created) == "made-by-agent\n"
    state = vm.conversation(task["conversation"])
    assert vm.guest("stat", "-c", "%u", created).stdout.strip() == str(state["uid_base"])
    assert state["uid_base"] >= 1_000_000_000
    journal = vm.journal(f"AIRUT_TASK={task['task']}")
    assert "(image localhost/airut-repo:" in journal
    assert "task finished: success (success)" in journal
    keys = {r["headers"].get("x-api-key") for r in vm.model_requests()}
    assert keys == {API_KEY}  # unsealed by the runner from its credential, swapped by the proxy
    # One task's log from every daemon, and nothing of the task before it (the OOM).
    logs = vm.airut("logs", task["task"]).stdout
    for source in ("airut-email@demo", "airut-runner", "airut-proxy", "podman"):
        assert re.search(rf" {re.escape(source)}\[\d+\]: ", logs), (source, logs)
    assert f"systemd[1]: Started {unit}" in logs
    assert "BLOCKED GET other.test /vm-probe" in logs
    others = [t["task"] for t in json.loads(vm.airut("tasks", "--json").stdout)]
    assert len(others) == 2 and not any(t in logs for t in others if t != task["task"])


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
    # Without a quota nr_throttled stays 0. Under emulation the guest's two processors are
    # host threads that do not always both run, so not every period reaches the quota
    # (78% were throttled in one CI run, 95% usually): a majority is the claim.
    assert periods > 0 and throttled >= 0.5 * periods, (throttled, periods)


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


def test_units_are_hardened(vm):
    """As Debian 13's systemd scores them (doc/security.md reports both releases)."""
    scores = vm.security_scores()
    print("\nsystemd-analyze security (Debian 13): "
          + ", ".join(f"{u} {s}" for u, s in scores.items()))
    assert all(scores[unit] <= limit for unit, limit in HARDENING_LIMITS.items()), scores


def test_purge_leaves_nothing_behind(vm):
    assert vm.purge_leftovers() == []
