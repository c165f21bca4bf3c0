"""airut-runner: turns task records into task units and finished units into replies.

One loop, woken by inotify on incoming/, finished/ and control/ and by a timer;
each wake-up rescans (the doorbell is only a hint):
  1. finished/<task>: the unit ended -> classify, write the reply, forget the task;
  2. control/<req>: stop a task;
  3. a task whose unit vanished without a finished/ marker -> failed reply;
  4. start what can start: active/ records not running (a crash or a retry), then
     incoming/ in order, one task per conversation, at most max_concurrent units.
The runner keeps nothing that matters in memory: after a restart it adopts the
running units named in active/ and carries on.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import sdnotify

from airut_core import config as config_mod
from airut_core import conversation, log, paths
from airut_core.config import Config, ConfigError, ResourceLimits
from airut_core.conversation import ReplySummary
from airut_core.paths import Spool
from airut_core.records import ControlRecord, ReplyRecord, TaskRecord
from airut_core.spool import Doorbell, RecordError, failures, record_failure, utc_now, write_atomic
from airut_runner import container, outcome, prompt, stream, units, workspace
from airut_runner.outcome import Exit

logger = logging.getLogger("airut.runner")

SCAN_INTERVAL = 5.0  # seconds between rescans when no doorbell rings
JANITOR_INTERVAL = 3600.0


class PermanentError(Exception):
    """Retrying cannot help (bad record, unknown repository): quarantine at once."""


class Runner:
    def __init__(self, cfg: Config, systemd: units.Systemd | None = None):
        self.cfg = cfg
        self.spool = Spool(cfg.paths.spool).ensure()
        self.state_dir = Path(cfg.paths.state)
        (self.state_dir / "conversations").mkdir(parents=True, exist_ok=True)
        self.systemd = systemd or units.Systemd()
        self.running: dict[str, str] = {}  # task id -> unit name
        self.retry_at: dict[str, float] = {}
        self.stopping = False
        self.status = ""

    # -- the loop -------------------------------------------------------------

    def serve(self) -> None:
        notifier = sdnotify.SystemdNotifier()
        bell = Doorbell([self.spool.incoming.path, self.spool.finished.path,
                         self.spool.control.path])
        workspace.remove_stale(self.state_dir)
        self.adopt()
        self.tick()
        notifier.notify(f"READY=1\nSTATUS={self.describe()}")
        last_scan = last_janitor = time.monotonic()
        while not self.stopping:
            rung = bell.wait(1.0)
            now = time.monotonic()
            if rung or now - last_scan >= SCAN_INTERVAL or self._retry_due():
                self.tick()
                last_scan = now
            if now - last_janitor >= JANITOR_INTERVAL:
                self.janitor()
                last_janitor = now
            status = self.describe()
            notifier.notify(f"WATCHDOG=1\nSTATUS={status}" if status != self.status
                            else "WATCHDOG=1")
            self.status = status
        notifier.notify("STOPPING=1")
        bell.close()

    def tick(self) -> None:
        try:
            self.collect_finished()
            self.handle_control()
            self.check_lost()
            self.start_waiting()
        except Exception:
            # A broken bus or a full disk must not kill the loop: say so, retry later.
            logger.exception("runner pass failed; retrying in %.0f s", SCAN_INTERVAL)
            self._reconnect()

    def describe(self) -> str:
        waiting = len(self.spool.incoming.names())
        return f"{len(self.running)} running, {waiting} waiting"

    def _retry_due(self) -> bool:
        now = time.time()
        return any(t <= now for t in self.retry_at.values())

    def _reconnect(self) -> None:
        try:
            self.systemd.close()
            self.systemd = units.Systemd()
        except Exception:
            logger.exception("cannot reconnect to systemd")

    # -- adoption and loss ----------------------------------------------------

    def adopt(self) -> None:
        """Find the units of active tasks that outlived a previous runner."""
        loaded = self.systemd.task_units()
        for name in self.spool.active.names():
            unit = self._state(name).get("unit")
            if unit and unit in loaded:
                self.running[name] = unit
                self._log(name).info("adopted running unit %s", unit)

    def check_lost(self) -> None:
        if not self.running:
            return
        loaded = self.systemd.task_units()
        for name, unit in list(self.running.items()):
            # ExecStopPost writes the marker before the unit goes away, and the
            # listing came first: a gone unit without a marker really was lost.
            if unit not in loaded and not self.spool.finished.exists(name):
                self._log(name).error("unit %s vanished without a result", unit)
                self.finish(name, Exit(service_result="lost"))

    # -- starting -------------------------------------------------------------

    def start_waiting(self) -> None:
        busy = {self._conversation_of(n) for n in self.spool.active.names()} - {None}
        for name in self.spool.active.names():
            if (name not in self.running and not self.spool.finished.exists(name)
                    and self.retry_at.get(name, 0) <= time.time() and self._has_slot()):
                self._attempt(name)
        for name in self.spool.incoming.names():
            if not self._has_slot():
                break
            try:
                record = self.spool.incoming.read(name)
            except FileNotFoundError:
                continue
            except RecordError as e:
                self._quarantine_unreadable(name, str(e))
                continue
            conv = record.get("conversation_id")
            if conv and conv in busy:
                continue  # one task per conversation at a time, in order
            if not self.spool.incoming.move_to(name, self.spool.active):
                continue
            self._log(name).info("claimed task from incoming/")
            if conv:
                busy.add(conv)
            self._attempt(name)

    def _has_slot(self) -> bool:
        return len(self.running) < self.cfg.execution.max_concurrent

    def _attempt(self, name: str) -> None:
        try:
            record = self.spool.active.read(name)
        except FileNotFoundError:
            return
        except RecordError as e:
            self._quarantine_unreadable(name, str(e))
            return
        try:
            self.launch(name, record)
            self.retry_at.pop(name, None)
        except PermanentError as e:
            self._log(name).error("cannot run task: %s", e)
            record_failure(self.spool.active, name, record, str(e),
                           self.spool.failed("active"), limit=1)
            self._reply_quarantined(name, record, str(e))
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            self._log(name).exception("starting task failed (attempt %d)", failures(record) + 1)
            if record_failure(self.spool.active, name, record, reason,
                              self.spool.failed("active")):
                self._reply_quarantined(name, record, reason)
            else:
                delay = self.cfg.execution.retry_delay * 2 ** (failures(record) - 1)
                self.retry_at[name] = time.time() + delay

    def launch(self, name: str, record: dict) -> None:
        try:
            task = TaskRecord.from_dict(record, f"active/{name}")
        except RecordError as e:
            raise PermanentError(str(e)) from e
        if task.task_id != name:
            raise PermanentError(f"record {name} carries task id {task.task_id}")
        try:
            repo = self.cfg.repo(task.repo)
        except ConfigError as e:
            raise PermanentError(str(e)) from e
        claude = Path(self.cfg.agent.claude_binary)
        if not claude.is_file():
            raise RuntimeError(f"the Claude Code binary is missing at {claude} "
                               "(agent.claude_binary)")
        conv = workspace.open_or_create(self.state_dir, task, repo)
        if task.conversation_id != conv.conversation_id:
            task.conversation_id = conv.conversation_id
        cdir = paths.conversation_dir(self.state_dir, conv.conversation_id)
        attached = workspace.copy_attachments(task.attachments_dir, cdir / "inbox")
        prompt_file = cdir / "tasks" / f"{name}.prompt"
        write_atomic(prompt_file, prompt.compose([task], attached).encode(), mode=0o600)
        env_file = cdir / "tasks" / f"{name}.env"
        write_atomic(env_file, container.env_file_text(repo.secrets, self.cfg.agent.api_base_url)
                     .encode(), mode=0o600)
        events = cdir / "events.jsonl"
        events.touch(mode=0o640)
        unit = units.unit_name(conv.conversation_id, name)
        state = {"unit": unit, "events_offset": events.stat().st_size, "started": utc_now(),
                 "stop_requested": False}
        self.spool.active.put(name, {**task.to_dict(), "state": state,
                                     "failures": record.get("failures", [])})
        run = container.AgentRun(
            container_name=f"airut-{name}", conversation_dir=cdir, image=self.cfg.agent.image,
            claude_binary=str(claude), network=self.cfg.agent.network, model=conv.model,
            env_file=env_file, effort=conv.effort, resume_session=conv.session_id)
        self.systemd.start(units.TaskUnit(
            name=unit, argv=run.argv(), stdin_file=prompt_file, stdout_file=events,
            spool_dir=str(self.spool.root), task_id=name, conversation_id=conv.conversation_id,
            repo=task.repo, limits=repo.resource_limits,
            stop_grace=self.cfg.execution.stop_grace))
        self.running[name] = unit
        self._log(name, task).info("started unit %s (%s, model %s)", unit,
                                   "resumed session" if conv.session_id else "new session",
                                   conv.model)

    # -- finishing ------------------------------------------------------------

    def collect_finished(self) -> None:
        for name in self.spool.finished.names():
            if not self.spool.active.exists(name):
                self.spool.finished.remove(name)  # finished before, marker left by a crash
                continue
            try:
                marker = self.spool.finished.read(name)
            except (FileNotFoundError, RecordError):
                marker = {"service_result": "unknown"}
            self.finish(name, Exit.from_marker(marker), marker.get("invocation_id"))

    def finish(self, name: str, exit: Exit, invocation: str | None = None) -> None:
        record = self.spool.active.read(name)
        task = TaskRecord.from_dict(record, f"active/{name}")
        state = record.get("state") or {}
        limits = (self.cfg.repos[task.repo].resource_limits if task.repo in self.cfg.repos
                  else ResourceLimits())
        summary = stream.RunSummary()
        conv = (conversation.load(self.state_dir, task.conversation_id)
                if task.conversation_id else None)
        if conv and "events_offset" in state:
            cdir = paths.conversation_dir(self.state_dir, conv.conversation_id)
            summary = _read_events(cdir / "events.jsonl", state["events_offset"])
            (cdir / "tasks" / f"{name}.env").unlink(missing_ok=True)
        result = outcome.classify(exit, bool(state.get("stop_requested")))
        if result == "failed" and not summary.error_tail() and invocation:
            summary.other_lines.extend(_journal_tail(invocation))
        if conv:
            conv.session_id = summary.session_id or conv.session_id
            if not conv.replied_to(name):
                usage = summary.usage()
                conv.replies.append(ReplySummary(
                    task_id=name, outcome=result, duration_ms=usage.get("duration_ms"),
                    cost_usd=usage.get("cost_usd"), turns=usage.get("turns"), usage=usage))
            conversation.save(self.state_dir, conv)
        self._reply(name, task, outcome.reply_text(result, summary, limits), result,
                    unit=state.get("unit"), usage=summary.usage())
        self.spool.active.remove(name)
        self.spool.finished.remove(name)
        self.running.pop(name, None)
        self.retry_at.pop(name, None)
        self._log(name, task).info("task finished: %s (%s)", result,
                                   exit.service_result or "not started")

    def _reply(self, name: str, task: TaskRecord, text: str, result: str,
               unit: str | None = None, usage: dict | None = None) -> None:
        reply = ReplyRecord(task_id=name, conversation_id=task.conversation_id, repo=task.repo,
                            channel=task.channel, reply_to=task.reply_to, text=text,
                            outcome=result, unit=unit, usage=usage or {})
        # Named by the task: writing it twice replaces it, never duplicates it.
        self.spool.outgoing(task.channel).ensure().put(name, reply.to_dict())

    # -- control --------------------------------------------------------------

    def handle_control(self) -> None:
        for req in self.spool.control.names():
            try:
                control = ControlRecord.from_dict(self.spool.control.read(req), f"control/{req}")
            except FileNotFoundError:
                continue
            except RecordError as e:
                logger.error("unreadable control request %s: %s", req, e)
                self.spool.control.move_to(req, self.spool.failed("control").ensure())
                continue
            self.stop(control.task_id, control.requested_by)
            self.spool.control.remove(req)

    def stop(self, name: str, requested_by: str = "") -> None:
        log_ = self._log(name)
        if self.spool.incoming.move_to(name, self.spool.active):
            log_.info("stopped before it started (requested by %s)", requested_by or "unknown")
            self._mark_stopped(name)
            self.finish(name, Exit())
        elif name in self.running:
            self._mark_stopped(name)
            log_.info("stopping unit %s (requested by %s)", self.running[name],
                      requested_by or "unknown")
            self.systemd.stop(self.running[name])
        elif self.spool.active.exists(name) and not self.spool.finished.exists(name):
            self._mark_stopped(name)
            self.finish(name, Exit())
        else:
            log_.warning("stop requested for a task that is not waiting or running")

    def _mark_stopped(self, name: str) -> None:
        record = self.spool.active.read(name)
        record.setdefault("state", {})["stop_requested"] = True
        self.spool.active.put(name, record)

    # -- failures -------------------------------------------------------------

    def _quarantine_unreadable(self, name: str, reason: str) -> None:
        logger.error("quarantined unreadable task record %s: %s", name, reason,
                     extra={"task": name})
        for stage in (self.spool.incoming, self.spool.active):
            if stage.exists(name):
                stage.move_to(name, self.spool.failed(stage.path.name).ensure())

    def _reply_quarantined(self, name: str, record: dict, reason: str) -> None:
        self.retry_at.pop(name, None)
        try:
            task = TaskRecord.from_dict(record)
        except RecordError:
            return  # nobody to answer
        self._reply(name, task, f"airut could not run this task: {reason}\n\nThe request was "
                                "set aside for the operator (spool failed/active/); nothing "
                                "was lost.", "failed")

    # -- housekeeping ---------------------------------------------------------

    def janitor(self) -> None:
        max_age = self.cfg.execution.reply_max_age_days * 86400
        removed = self.spool.outgoing("local").clean(max_age)
        if removed:
            logger.info("removed %d unclaimed local replies older than %.0f days",
                        len(removed), self.cfg.execution.reply_max_age_days)
        for stage in (self.spool.incoming, self.spool.active, self.spool.finished):
            stage.clean_tmp()

    # -- helpers --------------------------------------------------------------

    def _state(self, name: str) -> dict:
        try:
            return self.spool.active.read(name).get("state") or {}
        except (FileNotFoundError, RecordError):
            return {}

    def _conversation_of(self, name: str) -> str | None:
        try:
            return self.spool.active.read(name).get("conversation_id")
        except (FileNotFoundError, RecordError):
            return None

    def _log(self, name: str, task: TaskRecord | None = None) -> logging.LoggerAdapter:
        if task is None:
            try:
                rec = self.spool.active.read(name)
                return log.for_task(logger, name, rec.get("conversation_id"), rec.get("repo"))
            except (FileNotFoundError, RecordError):
                return log.for_task(logger, name)
        return log.for_task(logger, name, task.conversation_id, task.repo)


def _read_events(path: Path, offset: int) -> stream.RunSummary:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return stream.parse(f)
    except FileNotFoundError:
        return stream.RunSummary()


def _journal_tail(invocation: str, lines: int = 10) -> list[str]:
    """The unit's own stderr (podman's errors), when the agent said nothing useful."""
    try:
        out = subprocess.run(["journalctl", "--no-pager", "-o", "cat", "-n", str(lines),
                              f"_SYSTEMD_INVOCATION_ID={invocation}"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in out.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="airut-runner", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help=f"configuration file (default {paths.DEFAULT_CONFIG})")
    args = parser.parse_args(argv)
    log.setup("airut-runner")
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as e:
        logger.error("%s", e)
        sdnotify.SystemdNotifier().notify(f"STATUS=configuration error: {e}")
        sys.exit(78)  # EX_CONFIG: systemd shows it, and does not spin on it
    runner = Runner(cfg)

    def on_signal(signum: int, frame: object) -> None:
        runner.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("airut-runner started (pid %d, spool %s, config %s)", os.getpid(),
                cfg.paths.spool, cfg.source)
    runner.serve()
    logger.info("airut-runner stopped; running task units continue")
