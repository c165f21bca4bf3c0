"""Scheduled tasks: each schedule is a systemd timer (made by airut-generator) that
starts `airut-schedule@<repo>--<name>.service`, which runs `airut schedule fire`: one
task record into incoming/, as a channel would write it, and the runner does the rest.

The record starts a fresh conversation. Its reply_to is the delivery channel's own
address form with nothing to answer: for email a thread with no message (the answer
is a new mail, `[ID:<conversation>] <name>`), for Slack a channel with no thread (the
answer is a new message, whose thread then continues the conversation). A schedule
whose previous run still waits or runs is skipped and logged: the last task each
schedule made is remembered in /var/lib/airut/schedules/.
"""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from airut_core import schedule, tasks
from airut_core.config import Config, ConfigError, ScheduleConfig
from airut_core.paths import Spool
from airut_core.records import TaskRecord
from airut_core.spool import RecordError, load, utc_now, write_atomic

logger = logging.getLogger("airut.schedule")
SENDER = "scheduler"


@dataclass
class Timer:
    instance: str  # <repo>--<name>
    repo: str
    name: str
    calendar: list[str]
    persistent: bool


def timers(cfg: Config) -> list[Timer]:
    """The enabled schedules as timers (ConfigError: a calendar systemd refuses)."""
    return [timer_of(repo_id, name, sched) for repo_id, name, sched in enabled(cfg)]


def enabled(cfg: Config) -> list[tuple[str, str, ScheduleConfig]]:
    return [(repo_id, name, sched) for repo_id, repo in sorted(cfg.repos.items())
            for name, sched in sorted(repo.schedules.items()) if sched.enable]


def timer_of(repo_id: str, name: str, sched: ScheduleConfig) -> Timer:
    """One schedule's timer; on_calendar is normalized (checked) by systemd. ConfigError
    names the schedule's key when its calendar is refused."""
    try:
        if sched.cron is not None:
            lines = schedule.from_cron(sched.cron, sched.timezone)
        else:
            lines = [schedule.check_calendar(str(sched.on_calendar), sched.timezone)]
    except schedule.ScheduleError as e:
        raise ConfigError(f"repos.{repo_id}.schedules.{name}: {e}") from e
    return Timer(f"{repo_id}--{name}", repo_id, name, lines, sched.catch_up)


def find(cfg: Config, instance: str) -> tuple[str, str, ScheduleConfig]:
    """The schedule an instance name means (a repository id may hold `--` too)."""
    matches = []
    for repo_id, repo in cfg.repos.items():
        prefix = f"{repo_id}--"
        if instance.startswith(prefix) and instance[len(prefix):] in repo.schedules:
            name = instance[len(prefix):]
            matches.append((repo_id, name, repo.schedules[name]))
    if len(matches) != 1:
        raise ConfigError(f"{cfg.source}: no schedule {instance!r} (<repo>--<name>) is "
                          "configured" if not matches else
                          f"{cfg.source}: {instance!r} names more than one schedule")
    return matches[0]


def record(repo_id: str, name: str, sched: ScheduleConfig, text: str | None = None
           ) -> TaskRecord:
    """The task a firing writes (prompt mode; script mode passes its prompt as text)."""
    to = sched.deliver.to
    # The delivery channel's own address form, imported for the one in use: a firing is
    # a process of its own, and the email channel's composer takes ~50 ms to import.
    if sched.deliver.channel == "email":  # a new mail: no message to answer
        from airut_ingest.email.compose import Thread

        reply_to = Thread(to=to, subject=name, new=True).dumps()
        where = f"mailed to {to}"
    else:  # a new message: no thread yet, nobody's message to react to
        from airut_ingest.slack.address import Where

        reply_to = Where(channel=to, thread_ts="", ts="", user="", dm=False).dumps()
        where = f"posted to the Slack channel {to}"
    intro = (f"[This is the scheduled task {name!r} of repository {repo_id}; nobody is "
             f"waiting at a keyboard. Your answer is {where} as a new message.]")
    return TaskRecord(repo=repo_id, channel=f"{sched.deliver.channel}-{repo_id}",
                      reply_to=reply_to, sender=SENDER,
                      text=f"{intro}\n\n{text if text is not None else sched.prompt}",
                      model=sched.model)


def fire(cfg: Config, instance: str) -> str:
    """One firing: the task record, unless the last one still waits or runs."""
    repo_id, name, sched = find(cfg, instance)
    state = Path(cfg.paths.state) / "schedules"
    state.mkdir(mode=0o750, parents=True, exist_ok=True)
    last = _last(state / f"{instance}.json")
    if last and tasks.find_waiting(cfg.paths.spool, last) is not None:
        message = (f"schedule {name} of {repo_id}: skipped, its previous run (task {last}) "
                   "is still queued or running")
        logger.warning("%s", message)
        return message
    text = None
    if sched.trigger_command is not None:
        text, said = trigger(cfg, repo_id, name, sched)
        if text is None:
            logger.info("%s", said, extra={"repo": repo_id})
            return said
    task = record(repo_id, name, sched, text)
    Spool(cfg.paths.spool).incoming.ensure().put(task.task_id, task.to_dict())
    write_atomic(state / f"{instance}.json", json.dumps(
        {"task_id": task.task_id, "time": utc_now()}).encode(), mode=0o640)
    message = f"schedule {name} of {repo_id}: task {task.task_id} queued"
    logger.info("%s", message, extra={"task": task.task_id, "repo": repo_id})
    return message


TAIL = 4096  # bytes of a failing command's output in the prompt


def trigger(cfg: Config, repo_id: str, name: str, sched: ScheduleConfig,
            ) -> tuple[str | None, str]:
    """Script mode: the trigger_command in the repository's sandbox (airut sandbox run's
    path). Returns the prompt (None: nothing to do) and what to log."""
    from airut_core import commands
    from airut_core.records import CommandRecord

    command = str(sched.trigger_command)
    request = CommandRecord(argv=["/bin/sh", "-c", command], repo=repo_id,
                            requested_by=f"schedule {name}", timeout=sched.trigger_timeout)
    spool = Spool(cfg.paths.spool)
    cid = commands.submit(spool, request)

    def on_stop(signum: int, frame: object) -> None:  # systemctl stop: the command too
        commands.stop(spool, cid, f"schedule {name} (stopped)")
        raise SystemExit(f"schedule {name} of {repo_id}: stopped with its trigger command")

    previous = signal.signal(signal.SIGTERM, on_stop)
    run = commands.run_dir(cfg.paths.state, cid)
    try:
        result = commands.follow(run, None, None, poll=0.1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        out = _read(run / "stdout", sched.output_limit)
        tail = _tail(run / "stdout") + _tail(run / "stderr")
    finally:
        commands.remove_run(run)
    if result.outcome == "exited" and result.exit_code == 0:
        if not out.strip():
            return None, (f"schedule {name} of {repo_id}: its trigger command printed "
                          "nothing; no task")
        return out, ""
    reason = result.error or f"exit code {result.exit_code}"
    logger.warning("schedule %s of %s: trigger command failed (%s)", name, repo_id, reason,
                   extra={"repo": repo_id})
    fence = "````"
    return (f"The trigger command of this scheduled task failed, so there was no prompt. "
            f"Find out why from what follows and report it.\n\nCommand: {command}\n"
            f"Exit code: {result.exit_code} ({reason})\n\nIts output (the end of stdout, "
            f"then of stderr):\n{fence}\n{tail.strip()}\n{fence}\n"), ""


def _read(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - TAIL))
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _last(path: Path) -> str | None:
    try:
        task = load(path.read_bytes(), str(path)).get("task_id")
    except (OSError, RecordError):
        return None
    return task if isinstance(task, str) else None
