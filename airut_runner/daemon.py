"""airut-runner: turns task records into task units and finished units into replies.

One loop, woken by inotify on incoming/, finished/, builds/ and control/, by its
worker threads, and by a timer; each wake-up rescans (the doorbell is only a hint):
  1. finished/<task>: the unit ended -> classify, write the reply (or retry once in a
     fresh session), forget the task;
  2. builds/<image>: an image build ended -> start the tasks that waited for it;
  3. control/<req>: stop a task;
  4. a running task whose unit vanished without a finished/ marker -> failed reply;
  5. prepared tasks (mirror refreshed, workspace and image resolved by a worker
     thread) -> start their unit, or the image build they need;
  6. claim what can start: active/ records nobody works on (after a crash or a
     failed attempt), then incoming/ in order: one task per conversation at a time,
     every message waiting for a conversation merged into its next task, at most
     execution.max_concurrent tasks in preparation, build or run.
A task's phase lives in memory only; after a restart the runner adopts running
units named in active/ and prepares the rest again (preparation is idempotent).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import sdnotify

from airut_core import config as config_mod
from airut_core import conversation, log, paths
from airut_core.config import Config, ConfigError, RepoConfig, ResourceLimits
from airut_core.conversation import LAST_REPLY_CHARS, Conversation, ReplySummary
from airut_core.paths import Spool
from airut_core.records import ControlRecord, ReplyRecord, TaskRecord
from airut_core.sandbox import PolicyRecord
from airut_core.spool import (
    MAX_FAILURES,
    Doorbell,
    RecordError,
    Stage,
    failures,
    record_failure,
    utc_now,
    write_atomic,
)
from airut_runner import (
    container,
    housekeeping,
    images,
    outbox,
    outcome,
    prompt,
    stream,
    units,
    workspace,
)
from airut_runner.images import ImageSpec
from airut_runner.mirror import Mirror
from airut_runner.outcome import Exit
from airut_runner.podman_api import Podman
from airut_runner.sandbox import PROXY_UNIT, NetworkSandbox, SandboxError

logger = logging.getLogger("airut.runner")

SCAN_INTERVAL = 5.0  # seconds between rescans when nothing rings
SANDBOX_OFF = ("Warning: the network sandbox is off for this repository "
               "(repos.{repo}.network.sandbox: false): the agent had unrestricted network "
               "access, and masked secrets were not available to it.")
JANITOR_INTERVAL = 3600.0


class PermanentError(Exception):
    """Retrying cannot help (bad record, unknown repository): quarantine at once."""


@dataclass
class Prepared:
    """What a worker thread made ready for a task's unit."""

    conversation: Conversation
    image: ImageSpec
    build_context: Path | None  # set when the image must be built first
    rebuild: bool  # the image exists but is stale: build without cache
    gateway: str  # this host's address on the task's network
    policy: PolicyRecord | None  # the proxy's instructions; None when the sandbox is off


class Runner:
    def __init__(self, cfg: Config, systemd: units.Systemd | None = None,
                 podman: Podman | None = None):
        self.cfg = cfg
        self.spool = Spool(cfg.paths.spool).ensure()
        self.state_dir = Path(cfg.paths.state)
        (self.state_dir / "conversations").mkdir(parents=True, exist_ok=True)
        self.systemd = systemd or units.Systemd()
        self.podman = podman or Podman()
        self.pool = ThreadPoolExecutor(max_workers=cfg.execution.max_concurrent,
                                       thread_name_prefix="prepare")
        self.bell: Doorbell | None = None
        self.running: dict[str, str] = {}  # task -> unit
        self.preparing: dict[str, Future] = {}
        self.building: dict[str, Prepared] = {}  # tasks waiting for their image
        self.sandbox = NetworkSandbox(cfg.proxy, self.podman.task_subnets)
        self.hosts_file = self.state_dir / "container-hosts"
        write_atomic(self.hosts_file, container.HOSTS.encode(), mode=0o644)
        self.retry_at: dict[str, float] = {}
        self.image_created: dict[str, float] = {}  # tag -> build time, a cache
        self.current_images: dict[str, str] = {}  # repo -> tag of its default branch
        self.stopping = False
        self.reload_requested = False
        self.status = ""

    # -- the loop -------------------------------------------------------------

    def serve(self) -> None:
        notifier = sdnotify.SystemdNotifier()
        self.bell = Doorbell([self.spool.incoming.path, self.spool.finished.path,
                              self.spool.builds.path, self.spool.control.path])
        workspace.remove_stale(self.state_dir)
        self.adopt()
        self.tick()
        notifier.notify(f"READY=1\nSTATUS={self.describe()}")
        last_scan = time.monotonic()
        last_janitor = last_scan - JANITOR_INTERVAL + 60  # first clean-up a minute in
        while not self.stopping:
            rung = self.bell.wait(1.0)
            now = time.monotonic()
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
                last_janitor = now
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
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.bell.close()

    def tick(self) -> None:
        try:
            self.collect_finished()
            self.collect_builds()
            self.handle_control()
            self.check_lost()
            self.collect_prepared()
            self.start_waiting()
        except Exception:
            # A broken bus or a full disk must not kill the loop: say so, retry later.
            logger.exception("runner pass failed; retrying in %.0f s", SCAN_INTERVAL)
            self._reconnect()

    def describe(self) -> str:
        waiting = len(self.spool.incoming.names())
        parts = [f"{len(self.running)} running"]
        if self.preparing:
            parts.append(f"{len(self.preparing)} preparing")
        if self.building:
            parts.append(f"{len(self.building)} waiting for an image")
        return ", ".join(parts) + f", {waiting} waiting"

    def busy(self) -> set[str]:
        return set(self.running) | set(self.preparing) | set(self.building)

    def _has_slot(self) -> bool:
        return len(self.busy()) < self.cfg.execution.max_concurrent

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
        merged = set()
        for name in self.spool.active.names():
            merged.update(m.get("task_id") for m in self._state(name).get("merged", []))
        for name in merged & set(self.spool.active.names()):
            self.spool.active.remove(name)  # merged before a crash; the primary carries it
        loaded = self.systemd.loaded()
        for name in self.spool.active.names():
            unit = self._state(name).get("unit")
            if unit and unit in loaded:
                self.running[name] = unit
                self._log(name).info("adopted running unit %s", unit)
        try:
            keep = {_resource(name) for name in self.running}
            for gone in self.podman.remove_leftover_containers("airut-", keep):
                logger.info("removed leftover container %s", gone)
            keep = {_resource(name) for name in self.spool.active.names()}
            for gone in self.podman.remove_leftover_networks(keep):
                logger.info("removed leftover network %s", gone)
        except Exception as e:
            logger.warning("cannot look for leftover containers and networks: %s", e)

    def check_lost(self) -> None:
        if not self.running:
            return
        loaded = self.systemd.loaded()
        for name, unit in list(self.running.items()):
            # ExecStopPost writes the marker before the unit goes away, and the
            # listing came first: a gone unit without a marker really was lost.
            if unit not in loaded and not self.spool.finished.exists(name):
                self._log(name).error("unit %s vanished without a result", unit)
                self.finish(name, Exit(service_result="lost"))

    # -- claiming -------------------------------------------------------------

    def start_waiting(self) -> None:
        now = time.time()
        for name in self.spool.active.names():
            if (name not in self.busy() and not self.spool.finished.exists(name)
                    and self.retry_at.get(name, 0) <= now and self._has_slot()):
                self._prepare(name)
        taken = {self._conversation_of(n) for n in self.busy()} - {None}
        for group in self._incoming_groups():
            if not self._has_slot():
                break
            conv = group[0][1].get("conversation_id")
            if conv and conv in taken:
                continue  # one task per conversation; these merge into its next task
            name = self._claim(group)
            if name:
                if conv:
                    taken.add(conv)
                self._prepare(name)

    def _incoming_groups(self) -> list[list[tuple[str, dict]]]:
        """Waiting records in order, those of one conversation grouped together."""
        groups: dict[str, list[tuple[str, dict]]] = {}
        for name in self.spool.incoming.names():
            try:
                record = self.spool.incoming.read(name)
            except FileNotFoundError:
                continue
            except RecordError as e:
                self._quarantine_unreadable(name, str(e))
                continue
            conv = record.get("conversation_id")
            key = conv if isinstance(conv, str) else f"new:{name}"
            groups.setdefault(key, []).append((name, record))
        return list(groups.values())

    def _claim(self, group: list[tuple[str, dict]]) -> str | None:
        """Claim a conversation's waiting records; the newest carries the others."""
        claimed = [(n, r) for n, r in group if self.spool.incoming.move_to(n, self.spool.active)]
        if not claimed:
            return None
        name, record = claimed[-1]
        if len(claimed) > 1:
            earlier = [{k: v for k, v in r.items() if k != "failures"} for _, r in claimed[:-1]]
            record.setdefault("state", {})["merged"] = earlier
            self.spool.active.put(name, record)
            for other, _ in claimed[:-1]:
                self.spool.active.remove(other)
            self._log(name).info("claimed task, merging %d earlier messages: %s",
                                 len(earlier), ", ".join(n for n, _ in claimed[:-1]))
        else:
            self._log(name).info("claimed task from incoming/")
        return name

    # -- preparing (worker threads) -------------------------------------------

    def _prepare(self, name: str) -> None:
        try:
            record = self.spool.active.read(name)
        except FileNotFoundError:
            return
        except RecordError as e:
            self._quarantine_unreadable(name, str(e))
            return
        future = self.pool.submit(self.prepare, name, record)
        if self.bell:
            future.add_done_callback(lambda _: self.bell.ring())
        self.preparing[name] = future

    def prepare(self, name: str, record: dict) -> Prepared:
        """Worker thread: refresh the mirror, open the conversation, resolve its image,
        write the prompt and the env file. Touches only this task's files."""
        task, merged = self._tasks(name, record)
        try:
            repo = self.cfg.repo(task.repo)
        except ConfigError as e:
            raise PermanentError(str(e)) from e
        claude = Path(self.cfg.agent.claude_binary)
        if not claude.is_file():
            raise RuntimeError(f"the Claude Code binary is missing at {claude} "
                               "(agent.claude_binary)")
        mirror = Mirror(self.state_dir, task.repo, repo.repo_url)
        mirror.update()
        owner = self.cfg.agent.host_uid_base
        conv = workspace.open_or_create(self.state_dir, task, repo, mirror, owner)
        spec, context, rebuild = self._image(mirror, repo)
        cdir = paths.conversation_dir(self.state_dir, conv.conversation_id)
        gateway, policy, secrets, base_url = self._network(name, task, repo, conv, mirror)
        attached = []
        for t in [*merged, task]:
            attached += workspace.copy_attachments(t.attachments_dir, cdir / "inbox", owner)
        fresh = (record.get("state") or {}).get("fresh_retry")
        text = prompt.compose([*merged, task], attached,
                              recovery=conv.last_reply if fresh else None)
        write_atomic(cdir / "tasks" / f"{name}.prompt", text.encode(), mode=0o600)
        env = container.env_file_text(secrets, base_url, self.cfg.agent.env,
                                      sandboxed=policy is not None)
        write_atomic(cdir / "tasks" / f"{name}.env", env.encode(), mode=0o600)
        return Prepared(conv, spec, context, rebuild, gateway, policy)

    def _image(self, mirror: Mirror, repo: RepoConfig) -> tuple[ImageSpec, Path | None, bool]:
        """The task's image, and the build context to export when it must be (re)built."""
        spec = images.resolve(mirror, repo.container_path, self.cfg.agent.image)
        if not spec.built_here:
            return spec, None, False
        created = self.image_created.get(spec.tag) or self.podman.image_created(spec.tag)
        rebuild = created is not None and images.is_stale(
            created, self.cfg.agent.image_max_age_hours)
        if created is not None and not rebuild:
            self.image_created[spec.tag] = created
            return spec, None, False
        context = self.state_dir / "builds" / spec.build_name
        mirror.export(spec.tree, context)
        return spec, context, rebuild

    def _network(self, name: str, task: TaskRecord, repo: RepoConfig, conv: Conversation,
                 mirror: Mirror) -> tuple[str, PolicyRecord | None, dict[str, str], str | None]:
        """The task's own network; in the sandbox also its policy and surrogates.
        Returns the gateway, the policy, the agent's secrets and its model API URL."""
        base_url = repo.api_base_url or self.cfg.agent.api_base_url
        if not repo.network.sandbox:
            gateway = self.podman.create_network(_resource(name), name)
            return gateway, None, dict(repo.secrets), container.host_url(base_url, gateway)
        try:
            allowlist = self.sandbox.allowlist(mirror)
        except SandboxError as e:
            raise PermanentError(str(e)) from e
        masks = self.sandbox.masks(repo)
        gateway = self.podman.create_network(_resource(name), name,
                                             subnet=self.sandbox.allocate_subnet)
        cdir = paths.conversation_dir(self.state_dir, conv.conversation_id)
        policy = PolicyRecord(
            task_id=name, conversation_id=conv.conversation_id, repo=task.repo,
            subnet=str(ipaddress.ip_network(f"{gateway}/24", strict=False)),
            network_log=str(cdir / "network.log"), allowlist=allowlist, masks=masks)
        secrets = {**repo.secrets, **{m.env: m.surrogate for m in masks}}
        return gateway, policy, secrets, base_url

    def collect_prepared(self) -> None:
        for name, future in list(self.preparing.items()):
            if not future.done():
                continue
            del self.preparing[name]
            try:
                prepared = future.result()
            except Exception as e:
                self._attempt_failed(name, e)
                continue
            self.retry_at.pop(name, None)
            try:
                self._remember_conversation(name, prepared.conversation.conversation_id)
                self.current_images[prepared.conversation.repo] = prepared.image.tag
                if prepared.build_context:
                    self._start_build(name, prepared)
                else:
                    self.start_unit(name, prepared)
            except Exception as e:
                self._attempt_failed(name, e)

    def _attempt_failed(self, name: str, error: Exception) -> None:
        try:
            record = self.spool.active.read(name)
        except (FileNotFoundError, RecordError):
            return
        if isinstance(error, PermanentError):
            self._log(name).error("cannot run task: %s", error)
            self._give_up(name, record, str(error), limit=1)
            return
        reason = f"{type(error).__name__}: {error}"
        self._log(name).error("preparing task failed (attempt %d): %s", failures(record) + 1,
                              reason, exc_info=error)
        if not self._give_up(name, record, reason):
            delay = self.cfg.execution.retry_delay * 2 ** (failures(record) - 1)
            self.retry_at[name] = time.time() + delay

    def _remember_conversation(self, name: str, conversation_id: str) -> None:
        """A new conversation's id goes into the record at once, so a crash does not
        make a second conversation for the same message."""
        record = self.spool.active.read(name)
        if record.get("conversation_id") != conversation_id:
            record["conversation_id"] = conversation_id
            self.spool.active.put(name, record)

    # -- images ---------------------------------------------------------------

    def _start_build(self, name: str, prepared: Prepared) -> None:
        spec = prepared.image
        repo = prepared.conversation.repo
        build = images.BuildUnit(spec=spec, context=prepared.build_context, repo=repo,
                                 spool_dir=str(self.spool.root),
                                 timeout=self.cfg.agent.build_timeout,
                                 no_cache=prepared.rebuild)
        waiting = any(p.image.tag == spec.tag for p in self.building.values())
        self.building[name] = prepared
        if waiting or not self.systemd.start(build.name, build.properties()):
            self._log(name).info("waiting for the image build %s already under way",
                                 build.name)
            return
        self._log(name).info("building image %s in unit %s%s", spec.tag, build.name,
                             " (stale, without cache)" if prepared.rebuild else "")

    def collect_builds(self) -> None:
        for build_name in self.spool.builds.names():
            try:
                marker = self.spool.builds.read(build_name)
            except (FileNotFoundError, RecordError):
                marker = {}
            waiters = [n for n, p in self.building.items() if p.image.build_name == build_name]
            ok = marker.get("service_result") == "success"
            for name in waiters:
                prepared = self.building.pop(name)
                if ok:
                    self.image_created[prepared.image.tag] = time.time()
                    self._start_waiter(name, prepared)
                else:
                    self._build_failed(name, prepared.image, marker.get("invocation_id"))
            if ok:
                logger.info("image %s built", f"{images.REPO_IMAGE}:{build_name}")
            self.spool.builds.remove(build_name)
            shutil.rmtree(self.state_dir / "builds" / build_name, ignore_errors=True)

    def _start_waiter(self, name: str, prepared: Prepared) -> None:
        try:
            self.start_unit(name, prepared)
        except Exception as e:
            self._attempt_failed(name, e)

    def _build_failed(self, name: str, spec: ImageSpec, invocation: str | None) -> None:
        reason = f"the container image {spec.tag} failed to build"
        self._log(name).error("%s", reason)
        record = self.spool.active.read(name)
        repo = self.cfg.repos.get(record.get("repo"))
        container_path = repo.container_path if repo else ".airut/container"
        text = (f"The container image for this repository failed to build, so the task could "
                f"not run. Fix {container_path}/Dockerfile on the default branch, then send "
                "your message again.")
        tail = "\n".join(_journal_tail(invocation, 15)) if invocation else ""
        if tail:
            text += f"\n\nBuild output (end):\n```\n{tail}\n```"
        self._give_up(name, record, reason, limit=1, text=text)

    # -- running --------------------------------------------------------------

    def start_unit(self, name: str, prepared: Prepared) -> None:
        conv, image, policy = prepared.conversation, prepared.image, prepared.policy
        if policy:
            self.sandbox.check_ready(self.systemd.active_state(PROXY_UNIT))
        record = self.spool.active.read(name)
        task = TaskRecord.from_dict(record, f"active/{name}")
        repo = self.cfg.repo(task.repo)
        cdir = paths.conversation_dir(self.state_dir, conv.conversation_id)
        events = cdir / "events.jsonl"
        events.touch(mode=0o640)
        unit = units.unit_name(conv.conversation_id, name)
        state = record.setdefault("state", {})
        if state.get("fresh_retry"):
            unit = unit.replace(".service", "-fresh.service")
        state.update({"unit": unit, "events_offset": events.stat().st_size, "image": image.tag,
                      "started": utc_now(), "stop_requested": False,
                      "resumed": bool(conv.session_id), "sandbox": policy is not None})
        self.spool.active.put(name, record)
        if policy:
            self.sandbox.write_policy(policy)
        else:
            self._log(name, task).warning("the network sandbox is off for repository %s: "
                                          "the task has unrestricted network access",
                                          task.repo)
        run = container.AgentRun(
            container_name=_resource(name), conversation_dir=cdir, image=image.tag,
            claude_binary=self.cfg.agent.claude_binary, network=_resource(name),
            model=conv.model, env_file=cdir / "tasks" / f"{name}.env",
            host_uid_base=self.cfg.agent.host_uid_base, effort=conv.effort,
            resume_session=conv.session_id,
            sandbox_gateway=prepared.gateway if policy else None,
            proxy_ca=self.cfg.proxy.ca_cert if policy else None,
            hosts_file=str(self.hosts_file))
        task_unit = units.TaskUnit(
            name=unit, argv=run.argv(), stdin_file=cdir / "tasks" / f"{name}.prompt",
            stdout_file=events, spool_dir=str(self.spool.root), task_id=name,
            conversation_id=conv.conversation_id, repo=task.repo,
            limits=repo.resource_limits, stop_grace=self.cfg.execution.stop_grace)
        if not self.systemd.start(unit, task_unit.properties()):
            raise RuntimeError(f"unit {unit} is already loaded")
        self.running[name] = unit
        self._log(name, task).info(
            "started unit %s (image %s, %s, model %s)", unit, image.tag,
            "resumed session" if conv.session_id else "new session", conv.model)

    # -- finishing ------------------------------------------------------------

    def collect_finished(self) -> None:
        for name in self.spool.finished.names():
            if not self.spool.active.exists(name):
                self.spool.finished.remove(name)  # finished before, marker left by a crash
                continue
            if name in self.preparing:
                continue  # a stop arrived while it was being prepared; handled later
            try:
                marker = self.spool.finished.read(name)
            except (FileNotFoundError, RecordError):
                marker = {"service_result": "unknown"}
            self.finish(name, Exit.from_marker(marker), marker.get("invocation_id"))

    def finish(self, name: str, exit: Exit, invocation: str | None = None) -> None:
        record = self.spool.active.read(name)
        task = TaskRecord.from_dict(record, f"active/{name}")
        state = record.get("state") or {}
        repo_id = task.repo
        limits = (self.cfg.repos[repo_id].resource_limits if repo_id in self.cfg.repos
                  else ResourceLimits())
        summary = stream.RunSummary()
        conv = (conversation.load(self.state_dir, task.conversation_id)
                if task.conversation_id else None)
        cdir = paths.conversation_dir(self.state_dir, conv.conversation_id) if conv else None
        if cdir and "events_offset" in state:
            summary = _read_events(cdir / "events.jsonl", state["events_offset"])
        result = outcome.classify(exit, bool(state.get("stop_requested")), summary,
                                  resumed=bool(state.get("resumed")))
        self.running.pop(name, None)
        self.retry_at.pop(name, None)
        if (result in outcome.RETRY_FRESH and state.get("resumed")
                and not state.get("fresh_retry") and conv):
            self._retry_fresh(name, record, conv, result)
            return
        if result == "failed" and not summary.error_tail() and invocation:
            summary.other_lines.extend(_journal_tail(invocation))
        sent = outbox.Collected()
        if cdir and result != "timeout":  # after a timeout, partial output waits in /outbox
            files = self.spool.outgoing(task.channel).path / f"{name}.files"
            sent = outbox.collect(cdir / "outbox", files,
                                  self.cfg.execution.outbox_max_bytes)
        self._release(name, cdir)
        text = outcome.reply_text(result, summary, limits, repo_id,
                                  note=outcome.CONTEXT_RESET_NOTE.get(state.get("fresh_retry"),
                                                                      ""))
        if sent.notes:
            text = f"{text}\n\n{sent.note()}"
        if state.get("sandbox") is False:
            text = f"{text}\n\n{SANDBOX_OFF.format(repo=repo_id)}"
        if conv:
            self._record_reply(conv, name, result, summary)
        self._reply(name, task, text, result, unit=state.get("unit"), usage=summary.usage(),
                    record=record, attachments=sent.names)
        self.spool.active.remove(name)
        self.spool.finished.remove(name)
        self._log(name, task).info("task finished: %s (%s)", result,
                                   exit.service_result or "not started")

    def _record_reply(self, conv: Conversation, name: str, result: str,
                      summary: stream.RunSummary) -> None:
        conv.session_id = summary.session_id or conv.session_id
        if result == "success":
            conv.last_reply = summary.reply_text()[:LAST_REPLY_CHARS]
        if not conv.replied_to(name):
            usage = summary.usage()
            conv.replies.append(ReplySummary(
                task_id=name, outcome=result, duration_ms=usage.get("duration_ms"),
                cost_usd=usage.get("cost_usd"), turns=usage.get("turns"), usage=usage))
        conversation.save(self.state_dir, conv)

    def _retry_fresh(self, name: str, record: dict, conv: Conversation, reason: str) -> None:
        """The session cannot go on: once, run the task again in a fresh session."""
        self._log(name).warning("%s: retrying once in a fresh session",
                                reason.replace("_", " "))
        conv.session_id = None
        conversation.save(self.state_dir, conv)
        state = record.setdefault("state", {})
        state["fresh_retry"] = reason
        for key in ("unit", "events_offset", "resumed"):
            state.pop(key, None)
        self.spool.active.put(name, record)
        self.spool.finished.remove(name)
        self._prepare(name)

    def _release(self, name: str, cdir: Path | None) -> None:
        """What a task holds besides its records: its env file, policy and network."""
        if cdir:
            (cdir / "tasks" / f"{name}.env").unlink(missing_ok=True)
        self.sandbox.remove_policy(name)
        self.building.pop(name, None)
        try:
            self.podman.remove_network(_resource(name))
        except Exception as e:
            self._log(name).warning("cannot remove the network of the task: %s", e)

    def _reply(self, name: str, task: TaskRecord, text: str, result: str,
               unit: str | None = None, usage: dict | None = None,
               record: dict | None = None, attachments: list[str] | None = None) -> None:
        stage = self.spool.outgoing(task.channel).ensure()
        merged = (record or {}).get("state", {}).get("merged", [])
        files = stage.path / f"{name}.files"
        reply = ReplyRecord(task_id=name, conversation_id=task.conversation_id, repo=task.repo,
                            channel=task.channel, reply_to=task.reply_to, text=text,
                            outcome=result, unit=unit, usage=usage or {},
                            merged_task_ids=[m.get("task_id") for m in merged],
                            merged_reply_to=[m.get("reply_to") for m in merged],
                            attachments=attachments or [],
                            attachments_dir=str(files) if attachments else None)
        # Named by the task: writing it twice replaces it, never duplicates it.
        stage.put(name, reply.to_dict())

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
            if self.stop(control.task_id, control.requested_by):
                self.spool.control.remove(req)

    def stop(self, name: str, requested_by: str = "") -> bool:
        """Stop a task; False to try again later (it is being prepared right now)."""
        log_ = self._log(name)
        who = requested_by or "unknown"
        if name in self.preparing:
            return False
        if self.spool.incoming.move_to(name, self.spool.active):
            log_.info("stopped before it started (requested by %s)", who)
            self._mark_stopped(name)
            self.finish(name, Exit())
        elif name in self.running:
            self._mark_stopped(name)
            log_.info("stopping unit %s (requested by %s)", self.running[name], who)
            self.systemd.stop(self.running[name])
        elif self.spool.active.exists(name) and not self.spool.finished.exists(name):
            self._mark_stopped(name)
            self.finish(name, Exit())
        else:
            log_.warning("stop requested by %s for a task that is not waiting or running", who)
        return True

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

    def _give_up(self, name: str, record: dict, reason: str, limit: int = MAX_FAILURES,
                 text: str | None = None) -> bool:
        """Count a failure; on the limit-th, quarantine the task, release what it holds
        and tell the sender. True when it was given up."""
        if not record_failure(self.spool.active, name, record, reason,
                              self.spool.failed("active"), limit=limit):
            return False
        self.retry_at.pop(name, None)
        cid = record.get("conversation_id")
        cdir = paths.conversation_dir(self.state_dir, cid) if cid else None
        self._release(name, cdir)
        try:
            task = TaskRecord.from_dict(record)
        except RecordError:
            return True  # nobody to answer
        self._reply(name, task, text or f"airut could not run this task: {reason}\n\nThe "
                    "request was set aside for the operator (spool failed/active/); nothing "
                    "was lost.", "failed", record=record)
        return True

    # -- housekeeping ---------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP (systemctl reload): read the configuration again, then clean up now."""
        try:
            cfg = config_mod.load(self.cfg.source)
        except ConfigError as e:
            logger.error("configuration not reloaded, keeping the old one: %s", e)
        else:
            self.cfg, self.sandbox.proxy = cfg, cfg.proxy
            logger.info("configuration reloaded from %s", cfg.source)
        self.janitor()

    def janitor(self) -> None:
        execution = self.cfg.execution
        try:
            housekeeping.clean_replies(self.spool, execution.reply_max_age_days)
            in_use = ({self._conversation_of(n) for n in self.spool.active.names()}
                      | {self._peek(self.spool.incoming, n).get("conversation_id")
                         for n in self.spool.incoming.names()})
            housekeeping.clean_conversations(self.spool, self.state_dir,
                                             execution.conversation_max_age_days,
                                             in_use - {None})
            keep = set(self.current_images.values()) | {self.cfg.agent.image}
            keep |= {t for n in self.spool.active.names() if (t := self._state(n).get("image"))}
            for tag in housekeeping.prune_images(self.podman, keep):
                self.image_created.pop(tag, None)
            for stage in (self.spool.incoming, self.spool.active, self.spool.finished,
                          self.spool.builds):
                stage.clean_tmp()
        except Exception:
            logger.exception("housekeeping failed; trying again in an hour")

    # -- helpers --------------------------------------------------------------

    def _tasks(self, name: str, record: dict) -> tuple[TaskRecord, list[TaskRecord]]:
        try:
            task = TaskRecord.from_dict(record, f"active/{name}")
            merged = [TaskRecord.from_dict(m, f"active/{name} (merged)")
                      for m in (record.get("state") or {}).get("merged", [])]
        except RecordError as e:
            raise PermanentError(str(e)) from e
        if task.task_id != name:
            raise PermanentError(f"record {name} carries task id {task.task_id}")
        return task, merged

    def _peek(self, stage: Stage, name: str) -> dict:
        """A record as it is now, or {} when it is gone or unreadable."""
        try:
            return stage.read(name)
        except (FileNotFoundError, RecordError):
            return {}

    def _state(self, name: str) -> dict:
        return self._peek(self.spool.active, name).get("state") or {}

    def _conversation_of(self, name: str) -> str | None:
        return self._peek(self.spool.active, name).get("conversation_id")

    def _log(self, name: str, task: TaskRecord | None = None) -> logging.LoggerAdapter:
        if task is None:
            try:
                rec = self.spool.active.read(name)
                return log.for_task(logger, name, rec.get("conversation_id"), rec.get("repo"))
            except (FileNotFoundError, RecordError):
                return log.for_task(logger, name)
        return log.for_task(logger, name, task.conversation_id, task.repo)


def _resource(name: str) -> str:
    """The task's container and network name."""
    return f"airut-{name}"


def _read_events(path: Path, offset: int) -> stream.RunSummary:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return stream.parse(f)
    except FileNotFoundError:
        return stream.RunSummary()


def _journal_tail(invocation: str, lines: int = 10) -> list[str]:
    """A unit's own output (podman's errors, a build's log), from the journal."""
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
        if runner.bell:
            runner.bell.ring()

    def on_hangup(signum: int, frame: object) -> None:
        runner.reload_requested = True
        if runner.bell:
            runner.bell.ring()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    logger.info("airut-runner started (pid %d, spool %s, config %s)", os.getpid(),
                cfg.paths.spool, cfg.source)
    runner.serve()
    logger.info("airut-runner stopped; running task units continue")
