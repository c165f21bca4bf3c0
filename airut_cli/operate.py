"""The operator's commands: status, tasks, logs, reload, setup claude.

They read what the daemons already write (systemd's units, the spool, each
conversation's conversation.json, the journal) and change nothing but what they are
asked to: `reload` re-reads the configuration, `setup claude` fills the CLI cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from airut_cli import generator
from airut_cli.terminal import printable
from airut_core import paths
from airut_core import tasks as tasks_mod
from airut_core.config import CLAUDE_CODE_VERSION, Config

DAEMONS = ("airut.target", "airut-firewall.service", "airut-proxy@*.service",
           "airut-proxy-dns.service",
           "airut-runner.service", "airut-email@*.service", "airut-slack@*.service",
           "airut-web.service", "airut-schedule@*.timer",
           "airut-demo-model.service", "airut-housekeeping.timer")
UNIT_FIELDS = ("Id", "ActiveState", "SubState", "Result", "NRestarts", "StatusText",
               "MemoryCurrent", "ActiveEnterTimestampMonotonic", "LoadState")
NPM_PACKAGE = "@anthropic-ai/claude-code"


# -- systemd -------------------------------------------------------------------------


def units(*patterns: str, all_units: bool = False, loaded_only: bool = True
          ) -> list[dict[str, str]]:
    """systemctl show for the loaded units matching the patterns (with loaded_only off,
    also those whose file is gone but which still run: a generator stopped making it)."""
    listed = subprocess.run(["systemctl", "list-units", "--plain", "--no-legend",
                             *(["--all"] if all_units else []), *patterns],
                            capture_output=True, text=True, timeout=30).stdout
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    if not names:
        return []
    shown = subprocess.run(["systemctl", "show", "-p", ",".join(UNIT_FIELDS), *names],
                           capture_output=True, text=True, timeout=30).stdout
    found = []
    for block in shown.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("LoadState") == "loaded" or not loaded_only:
            found.append(props)
    return found


def _memory(props: dict[str, str]) -> int | None:
    value = props.get("MemoryCurrent", "")
    return int(value) if value.isdigit() and int(value) < 1 << 62 else None


def _age(props: dict[str, str]) -> int | None:
    """Seconds since the unit became active (systemd's monotonic clock is this one's)."""
    value = props.get("ActiveEnterTimestampMonotonic", "")
    return round(time.monotonic() - int(value) / 1e6) if value.isdigit() and value != "0" \
        else None


# -- status --------------------------------------------------------------------------


@dataclass
class Status:
    daemons: list[dict]
    queues: dict[str, int]
    running: list[dict]


def status(cfg: Config) -> Status:
    daemons = [{"unit": u["Id"], "state": u["ActiveState"], "sub": u["SubState"],
                "result": u.get("Result", ""), "restarts": int(u.get("NRestarts") or 0),
                "status": u.get("StatusText", "")} for u in units(*DAEMONS, all_units=True)]
    running = []
    for u in units("airut-task-*.service", "airut-build-*.service"):
        running.append({"unit": u["Id"], "task": _task_of(u["Id"]), "state": u["ActiveState"],
                        "age_s": _age(u), "memory": _memory(u)})
    return Status(daemons, tasks_mod.queue_depths(cfg.paths.spool), running)


def _task_of(unit: str) -> str:
    """airut-task-<conversation>-<task>.service -> <task>; a build unit is named by its
    image, not by a task."""
    name = unit.removesuffix(".service")
    if name.startswith("airut-task-"):
        return name.removeprefix("airut-task-").partition("-")[2]
    return "-"


def print_status(s: Status) -> None:
    print("DAEMON                          STATE              RESTARTS  STATUS")
    for d in s.daemons:
        state = f"{d['state']} ({d['sub']})"
        flag = "" if d["result"] in ("success", "") else f" [{d['result']}]"
        print(f"{d['unit'][:31]:<31} {state[:18]:<18} {d['restarts']:>8}  "
              f"{printable(d['status'][:60])}{flag}")
    if not s.daemons:
        print("(no airut unit is loaded: is the package installed?)")
    print("\nQUEUE" + "".join(f"  {k}={v}" for k, v in s.queues.items()))
    failed = sum(v for k, v in s.queues.items() if k.startswith("failed/"))
    if failed:
        print(f"  {failed} record(s) quarantined in failed/: each record's failures say why "
              "(doc/operations.md)")
    print("\nRUNNING" if s.running else "\nno task is running")
    for r in s.running:
        mem = f"{r['memory'] / (1 << 20):.0f} MiB" if r["memory"] is not None else "-"
        age = f"{r['age_s']} s" if r["age_s"] is not None else "-"
        print(f"  {r['unit']:<48} {age:>8} {mem:>10}")


# -- tasks ---------------------------------------------------------------------------


TaskLine = tasks_mod.TaskLine


def tasks(cfg: Config, repo: str | None = None, since: timedelta | None = None) -> list[TaskLine]:
    return tasks_mod.tasks(cfg.paths.state, cfg.paths.spool, repo, since)


def print_tasks(lines: list[TaskLine]) -> None:
    if not lines:
        print("no tasks")
        return
    print(f"{'TIME':<20} {'TASK':<27} {'CONV':<8} {'REPO':<12} {'OUTCOME':<10} "
          f"{'TOOK':>7} {'COST':>7}  SENDER")
    for t in lines:
        took = f"{t.duration_s:.1f}s" if t.duration_s is not None else "-"
        cost = f"${t.cost_usd:.3f}" if t.cost_usd is not None else "-"
        print(f"{t.time[:19]:<20} {t.task[:27]:<27} {(t.conversation or '-'):<8} "
              f"{t.repo[:12]:<12} {t.outcome[:10]:<10} {took:>7} {cost:>7}  "
              f"{printable(t.sender[:40])}")  # a channel's text


def parse_since(text: str) -> timedelta:
    """2h, 30m, 7d, 90s."""
    units_ = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return timedelta(seconds=float(text[:-1]) * units_[text[-1]])
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"--since: expected a duration like 90s, 30m, 2h or 7d, got "
                         f"{text!r}") from None


# -- logs ----------------------------------------------------------------------------


def logs_command(cfg: Config, task: str, follow: bool) -> list[str]:
    """journalctl for one task: every daemon logs it with AIRUT_TASK, its task unit
    carries the field on its own output, and systemd's lines about that unit (started,
    limits hit, ended, resources used) are matched by the unit's name."""
    if not paths.TASK_ID.match(task):
        raise ValueError(f"not a task id: {task!r}")
    matches = [f"AIRUT_TASK={task}"]
    for unit in task_units(cfg, task):
        matches += ["+", f"UNIT={unit}"]
    return ["journalctl", "--no-pager", "-o", "short-iso-precise", *matches,
            *(["-f"] if follow else [])]


def task_units(cfg: Config, task: str) -> list[str]:
    """The task's unit, as recorded after it ran or as systemd has it now."""
    found = {t.unit for t in tasks(cfg) if t.task == task and t.unit}
    listed = subprocess.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                             f"airut-task-*-{task}.service"], capture_output=True, text=True,
                            timeout=30).stdout
    found |= {line.split()[0] for line in listed.splitlines() if line.strip()}
    return sorted(found)


# -- reload --------------------------------------------------------------------------


def reload(cfg: Config) -> list[str]:
    """Apply the configuration: channels follow it, running tasks are left alone."""
    from airut_cli import schedule

    timers = {f"airut-schedule@{t.instance}.timer" for t in schedule.timers(cfg)}
    # Timers of schedules that are gone are stopped while their files still exist: a
    # timer whose file a reload removes fails ("unit to trigger vanished").
    done = _stop_timers(timers)
    systemctl("daemon-reload")  # the generator makes the channel units again
    done.append("systemd re-read the units (airut-generator ran)")
    if _active("airut-runner.service"):
        systemctl("reload", "airut-runner.service")
        done.append("airut-runner re-read the configuration")
    wanted = {f"airut-{kind}@{repo}.service" for kind, repo in generator.channels(cfg)}
    running = {u["Id"] for u in units("airut-email@*.service", "airut-slack@*.service")
               if u["ActiveState"] in ("active", "activating", "reloading")}
    for unit in sorted(running - wanted):
        systemctl("stop", unit)
        kind = unit.split("@")[0].removeprefix("airut-")
        done.append(f"stopped {unit} (its repository has no {kind} block now)")
    target_on = _active("airut.target")
    for unit in sorted(wanted):
        if unit in running:
            systemctl("restart", unit)
            done.append(f"restarted {unit}")
        elif target_on:
            systemctl("start", unit)
            done.append(f"started {unit}")
    done += _start_timers(timers, target_on)
    done += _proxy_workers(cfg, target_on)
    if not target_on:
        done.append("airut.target is not running: `systemctl enable --now airut.target` "
                    "starts everything")
    return done


def _proxy_workers(cfg: Config, target_on: bool) -> list[str]:
    """proxy.workers followed: new workers first, then the firewall's map (nft swaps
    the table at once), then the workers the map no longer names are stopped."""
    from airut_core import sandbox

    wanted = {sandbox.worker_unit(w) for w in range(cfg.proxy_workers())}
    running = {u["Id"] for u in units("airut-proxy@*.service")
               if u["ActiveState"] in ("active", "activating", "reloading")}
    done = []
    for unit in sorted(wanted - running) if target_on else []:
        systemctl("start", unit)
        done.append(f"started {unit}")
    if _active("airut-firewall.service"):
        systemctl("restart", "airut-firewall.service")
        done.append(f"the firewall sends task networks to {len(wanted)} proxy worker(s)")
    for unit in sorted(running - wanted):
        systemctl("stop", unit)
        done.append(f"stopped {unit} (proxy.workers is {len(wanted)})")
    return done


def _timer_states() -> dict[str, str]:
    return {u["Id"]: u["ActiveState"] for u in units("airut-schedule@*.timer", all_units=True,
                                                      loaded_only=False)}


def _stop_timers(wanted: set[str]) -> list[str]:
    done = []
    for unit, state in sorted(_timer_states().items()):
        if unit in wanted:
            continue
        if state in ("active", "activating"):
            systemctl("stop", unit)
            done.append(f"stopped {unit} (its schedule is gone or disabled)")
        elif state == "failed":
            systemctl("reset-failed", unit)
    return done


def _start_timers(wanted: set[str], target_on: bool) -> list[str]:
    """The schedules' timers (re)started, so a changed calendar takes effect; a run in
    progress (the service) is left alone."""
    done = []
    states = _timer_states()
    for unit in sorted(wanted):
        if states.get(unit) in ("active", "activating"):
            systemctl("restart", unit)
            done.append(f"restarted {unit}")
        elif target_on:
            systemctl("start", unit)
            done.append(f"started {unit}")
    return done


def _active(unit: str) -> bool:
    return subprocess.run(["systemctl", "is-active", "--quiet", unit]).returncode == 0


def systemctl(*args: str) -> None:
    out = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"systemctl {' '.join(args)}: {out.stderr.strip()}")


# -- setup claude --------------------------------------------------------------------


def setup_claude(cfg: Config, npm_args: list[str], log=print) -> Path:
    """Install the pinned Claude Code CLI into the cache with npm (which checks the
    package against the registry's integrity hash) and verify its version."""
    binary = Path(cfg.agent.claude_binary)
    npm = shutil.which("npm")
    if not npm:
        raise RuntimeError("npm is not installed: apt install npm (only this command needs "
                           "it), then run airut setup claude again")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".npm-", dir=binary.parent) as tmp:
        spec = f"{NPM_PACKAGE}@{CLAUDE_CODE_VERSION}"
        log(f"npm install {spec} ...")
        out = subprocess.run([npm, "install", "-g", "--no-fund", "--no-audit", "--prefix", tmp,
                              *npm_args, spec], capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"npm install {spec} failed:\n{out.stderr.strip()[-2000:]}")
        native = [p for p in Path(tmp).rglob("claude") if p.is_file() and os.access(p, os.X_OK)
                  and "claude-code-linux-x64" in str(p)]
        if not native:
            raise RuntimeError(f"the {spec} package has no native linux-x64 binary")
        version = subprocess.run([str(native[0]), "--version"], capture_output=True,
                                 text=True, timeout=60).stdout
        if CLAUDE_CODE_VERSION not in version.split():
            raise RuntimeError(f"{native[0]} says {version.strip()!r}, expected "
                               f"{CLAUDE_CODE_VERSION}")
        part = binary.with_name(binary.name + ".part")
        shutil.copyfile(native[0], part)
        part.chmod(0o755)
        part.rename(binary)  # the runner never sees a half-written binary
    log(f"{binary}: Claude Code {CLAUDE_CODE_VERSION}")
    return binary


def as_json(value: object) -> str:
    if isinstance(value, list):
        value = [asdict(v) if hasattr(v, "__dataclass_fields__") else v for v in value]
    elif hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    return json.dumps(value, indent=1)

