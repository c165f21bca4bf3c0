"""airut-runner: turns task records into task units and finished units into replies.

One loop, woken by inotify on incoming/, finished/, builds/ and control/, by its
worker threads, and by a timer; each wake-up rescans (the doorbell is only a hint).
Like Postfix's queue manager it hands each item to a small stage and does nothing
else itself:

  finished/<task>    a unit ended -> finish (a worker reads its output; then reply)
  builds/<image>     an image build ended -> start the tasks that waited for it
  control/<req>      a stop request -> control
  commands/<id>      a command for the sandbox -> commands (its own small life)
  running units      vanished without a result -> finish as lost; over their disk
                     budget -> stopped (disk)
  preparing tasks    a worker made them ready -> build their image or start their unit
  active/, incoming/ what may start now -> claim, then a worker prepares it

Every item is handled under a Guard: a failure stays with its item, which is counted,
retried with back-off and set aside with its reasons (failed/), while the loop goes on.
A task's phase lives in memory only; after a restart the runner adopts running units
named in active/ and prepares the rest again (preparation is idempotent).
Housekeeping is not here: airut-housekeeping.service (a timer, and every reload).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from functools import partial

import sdnotify

from airut_core import config as config_mod
from airut_core import log, paths
from airut_core.config import Config, ConfigError
from airut_core.records import TaskRecord
from airut_core.spool import Doorbell
from airut_runner import (
    build,
    claim,
    commands,
    container,
    control,
    disk,
    finish,
    giveup,
    housekeeping,
    images,
    metrics,
    prepare,
    start,
    units,
    workspace,
)
from airut_runner.context import Context, merged_of, resource
from airut_runner.outcome import Exit
from airut_runner.podman_api import Podman

logger = logging.getLogger("airut.runner")

SCAN_INTERVAL = 5.0  # seconds between rescans when nothing rings
HOUSEKEEPING_UNIT = "airut-housekeeping.service"


class Runner:
    def __init__(self, cfg: Config, systemd: units.Systemd | None = None,
                 podman: Podman | None = None):
        self.ctx = Context(cfg, systemd or units.Systemd(), podman or Podman())
        conversations = self.ctx.state_dir / "conversations"
        conversations.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.chmod(conversations, 0o750)  # 0755 before: other users could look in
        if paths.daemon_gid() is not None:
            os.chown(conversations, 0, paths.daemon_gid())
        try:
            container.write_container_files(self.ctx.state_dir)
        except (OSError, ValueError, KeyError) as e:
            # Tasks that need the profile will say so; the others can still run.
            logger.error("cannot make the task containers' seccomp profile from podman's "
                         "default (%s): %s", container.PODMAN_SECCOMP, e)
        self.disk = disk.Watch(self.ctx)
        self.samples = metrics.Sampler(self.ctx)
        self.incoming = claim.Waiting()
        self.stopping = False
        self.reload_requested = False
        self.status = ""

    @property
    def cfg(self) -> Config:
        return self.ctx.cfg

    # -- the loop -------------------------------------------------------------------

    def serve(self) -> None:
        ctx = self.ctx
        notifier = sdnotify.SystemdNotifier()
        ctx.bell = Doorbell([ctx.spool.incoming.path, ctx.spool.finished.path,
                             ctx.spool.builds.path, ctx.spool.control.path,
                             ctx.spool.commands.path, ctx.spool.command_ends.path])
        workspace.remove_stale(ctx.state_dir)
        self.adopt()
        self.tick()
        notifier.notify(f"READY=1\nSTATUS={self.describe()}")
        last_scan = time.monotonic()
        while not self.stopping:
            rung = ctx.bell.wait(1.0)
            now = time.monotonic()
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            due = ctx.tasks.next_due()
            interval = 1.0 if ctx.waiting_ready else SCAN_INTERVAL  # the proxy is back soon
            if rung or now - last_scan >= interval or (due is not None and due <= 0):
                self.tick()
                last_scan = now
            try:
                self.disk.tick()
            except Exception:
                logger.exception("disk watch pass failed")
            self.samples.tick()
            status = self.describe()
            notifier.notify(f"WATCHDOG=1\nSTATUS={status}" if status != self.status
                            else "WATCHDOG=1")
            self.status = status
        notifier.notify("STOPPING=1")
        self.disk.close()
        ctx.pool.shutdown(wait=True, cancel_futures=True)
        ctx.finish_pool.shutdown(wait=True, cancel_futures=True)
        ctx.bell.close()

    def tick(self) -> None:
        try:
            self.finish_ended()
            self.collect_builds()
            self.handle_controls()
            commands.tick(self.ctx)
            self.check_lost()
            self.collect_workers()
            self.start_waiting()
        except Exception:
            # Only what no single item owns gets here (a broken bus, an unreadable spool
            # directory): say so, reconnect, and try the whole pass again later.
            logger.exception("runner pass failed; retrying in %.0f s", SCAN_INTERVAL)
            self._reconnect()

    def describe(self) -> str:
        ctx = self.ctx
        parts = [f"{len(ctx.running)} running"]
        if ctx.preparing:
            parts.append(f"{len(ctx.preparing)} preparing")
        if ctx.building:
            parts.append(f"{len(ctx.building)} waiting for an image")
        if ctx.waiting_ready:
            parts.append(f"{len(ctx.waiting_ready)} waiting for the network sandbox")
        if ctx.commands:
            parts.append(f"{len(ctx.commands)} sandbox command(s)")
        parts.append(f"{len(ctx.spool.incoming.names())} waiting")
        aside = ctx.tasks.quarantined_total + ctx.records.quarantined_total
        if aside:
            parts.append(f"{aside} set aside since start")
        return ", ".join(parts)

    def _reconnect(self) -> None:
        try:
            self.ctx.systemd.close()
            self.ctx.systemd = units.Systemd()
        except Exception:
            logger.exception("cannot reconnect to systemd")

    # -- one task's step, under the guard ------------------------------------------------

    def step(self, name: str, work: Callable, *args) -> bool:
        """A step of a task's life: a failure counts against the task, which then waits
        out its back-off or, at the limit (or when retrying cannot help), is set aside
        and its sender told."""
        try:
            work(self.ctx, name, *args)
        except Exception as e:
            self.ctx.tasks.fail(name, e, quarantine=partial(self._give_up, name),
                                log=self.ctx.log(name))
            return False
        return True

    def _give_up(self, name: str, failures: list[dict]) -> None:
        for phase in (self.ctx.preparing, self.ctx.finishing):
            phase.pop(name, None)
        giveup.give_up(self.ctx, name, failures)

    # -- adoption and loss ------------------------------------------------------------

    def adopt(self) -> None:
        """Find the units of active tasks that outlived a previous runner. A task whose
        unit is gone without a result is answered as lost, not run a second time."""
        ctx = self.ctx
        merged = set()
        for name in ctx.spool.active.names():
            merged.update(m["task_id"] for m in merged_of(ctx.peek(ctx.spool.active, name)))
        for name in merged & set(ctx.spool.active.names()):
            ctx.spool.active.remove(name)  # merged before a crash; the primary carries it
        loaded = ctx.systemd.loaded()
        for name in ctx.spool.active.names():
            unit = ctx.state(name).get("unit")
            if not isinstance(unit, str):
                continue
            if unit in loaded:
                ctx.running[name] = unit
                ctx.log(name).info("adopted running unit %s", unit)
            elif not ctx.spool.finished.exists(name):
                ctx.log(name).error("unit %s is gone without a result", unit)
                self.step(name, finish.begin, Exit(service_result="lost"))
        try:
            keep = {resource(name) for name in ctx.running}
            for gone in ctx.podman.remove_leftover_containers(keep):
                logger.info("removed leftover container %s", gone)
            keep = {resource(name) for name in ctx.spool.active.names()} | {
                commands.network_name(c) for c in ctx.spool.commands.names()}
            for gone in ctx.podman.remove_leftover_networks(keep):
                logger.info("removed leftover network %s", gone)
        except Exception as e:
            logger.warning("cannot look for leftover containers and networks: %s", e)

    def check_lost(self) -> None:
        ctx = self.ctx
        if not ctx.running and not ctx.building:
            return
        loaded = ctx.systemd.loaded()
        for name, unit in list(ctx.running.items()):
            # ExecStopPost writes the marker before the unit goes away, and the
            # listing came first: a gone unit without a marker really was lost.
            if unit not in loaded and not ctx.spool.finished.exists(name):
                ctx.log(name).error("unit %s vanished without a result", unit)
                self.step(name, finish.begin, Exit(service_result="lost"))
        builds = ctx.systemd.loaded(images.BUILD_PREFIX)
        for name, prepared in list(ctx.building.items()):
            unit = f"{images.BUILD_PREFIX}{prepared.image.build_name}.service"
            if unit not in builds and not ctx.spool.builds.exists(prepared.image.build_name):
                del ctx.building[name]
                ctx.tasks.fail(name, RuntimeError(f"the image build {unit} vanished without "
                                                  "a result"),
                               quarantine=partial(self._give_up, name), log=ctx.log(name))

    # -- what ended --------------------------------------------------------------------

    def finish_ended(self) -> None:
        ctx = self.ctx
        for name in ctx.spool.finished.names():
            if not ctx.spool.active.exists(name):
                ctx.spool.finished.remove(name)  # finished before, marker left by a crash
            elif name in ctx.preparing or name in ctx.finishing or ctx.tasks.waiting(name):
                continue  # a stop while it was prepared; or a failed finish backing off
            else:
                self.step(name, finish.begin)

    def collect_builds(self) -> None:
        ctx = self.ctx
        for build_name in ctx.spool.builds.names():
            built = ctx.builds.value(build_name, partial(build.collect, ctx, build_name),
                                     quarantine=partial(giveup.set_aside, ctx,
                                                        ctx.spool.builds, build_name))
            if built is not None:
                if built.ok:
                    logger.info("image %s built", f"{images.REPO_IMAGE}:{built.name}")
                tail = [] if built.ok or not built.invocation else \
                    finish.journal_tail(built.invocation, 15)
                for name, prepared in built.waiters.items():
                    if built.ok:
                        self.step(name, start.start_unit, prepared)
                    else:
                        ctx.tasks.fail(name, build.failed(ctx, name, tail),
                                       quarantine=partial(self._give_up, name),
                                       log=ctx.log(name))
                for cid, prepared in built.commands.items():
                    commands.built(ctx, cid, prepared, built.ok, tail)

    def handle_controls(self) -> None:
        ctx = self.ctx
        for request in ctx.spool.control.names():
            ctx.controls.run(request, partial(control.handle, ctx, request),
                             quarantine=partial(giveup.set_aside, ctx, ctx.spool.control,
                                                request))

    def collect_workers(self) -> None:
        ctx = self.ctx
        for name, future in list(ctx.preparing.items()):
            if future.done():
                self.step(name, prepare.collect)
        for name, future in list(ctx.finishing.items()):
            if future.done():
                self.step(name, finish.complete)
        for name in list(ctx.waiting_ready):
            self.step(name, start.retry_waiting)

    # -- what may start ----------------------------------------------------------------

    def start_waiting(self) -> None:
        ctx = self.ctx
        in_flight = {ctx.conversation_of(n) for n in ctx.busy()} - {None}
        # Claimed tasks nobody works on: after a crash, or waiting out a retry.
        for name in ctx.spool.active.names():
            if not ctx.has_slot():
                return
            if (name in ctx.busy() or ctx.spool.finished.exists(name)
                    or ctx.tasks.waiting(name)):
                continue
            cid = ctx.conversation_of(name)
            if cid and cid in in_flight:
                continue
            self._prepare(name)
            if cid:
                in_flight.add(cid)
        if not ctx.has_slot():
            return  # incoming/ is read only when something could start
        blocked = claim.blocked_conversations(ctx)
        for tasks in claim.group(self._waiting()):
            if not ctx.has_slot():
                return
            cid = tasks[0].conversation_id
            if cid and cid in blocked:
                continue  # one task per conversation; these merge into its next task
            name = ctx.records.value(f"incoming/{tasks[0].task_id}",
                                     partial(claim.claim, ctx, tasks))
            if name:
                if cid:
                    blocked.add(cid)
                self._prepare(name)

    def _waiting(self) -> list[TaskRecord]:
        """incoming/, checked record by record (each once, while it is unchanged); a
        bad one is set aside at once."""
        ctx = self.ctx
        claimed = claim.claimed_ids(ctx)
        names = ctx.spool.incoming.names()
        for gone in set(self.incoming.seen) - set(names):
            del self.incoming.seen[gone]
        waiting: list[TaskRecord] = []
        for name in names:
            task = ctx.records.value(
                f"incoming/{name}",
                partial(claim.read_incoming, ctx, name, self.incoming, claimed),
                quarantine=partial(giveup.set_aside, ctx, ctx.spool.incoming, name))
            if task:
                waiting.append(task)
        return waiting

    def _prepare(self, name: str) -> None:
        ctx = self.ctx
        if ctx.tasks.begin(name, quarantine=partial(self._give_up, name), log=ctx.log(name)):
            ctx.preparing[name] = ctx.submit(prepare.prepare, ctx, name)

    # -- reload --------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP (systemctl reload): read the configuration again, then clean up now."""
        try:
            cfg = config_mod.load(self.cfg.source, config_mod.task_secrets)
        except ConfigError as e:
            logger.error("configuration not reloaded, keeping the old one: %s", e)
        else:
            self.ctx.cfg, self.ctx.sandbox.proxy = cfg, cfg.proxy
            self.ctx.tasks.delay = cfg.execution.retry_delay
            logger.info("configuration reloaded from %s", cfg.source)
        try:
            self.ctx.systemd.start_unit(HOUSEKEEPING_UNIT)
        except Exception as e:
            logger.warning("cannot start %s: %s", HOUSEKEEPING_UNIT, e)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="airut-runner", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help=f"configuration file (default {paths.DEFAULT_CONFIG})")
    parser.add_argument("--housekeeping", action="store_true",
                        help="clean up once and exit (airut-housekeeping.service)")
    args = parser.parse_args(argv)
    log.setup("airut-housekeeping" if args.housekeeping else "airut-runner")
    try:
        # Housekeeping reads no secret; the runner unseals what tasks and the proxy get.
        cfg = config_mod.load(args.config, None if args.housekeeping else
                              config_mod.task_secrets)
    except ConfigError as e:
        logger.error("%s", e)
        sdnotify.SystemdNotifier().notify(f"STATUS=configuration error: {e}")
        sys.exit(78)  # EX_CONFIG: systemd shows it, and does not spin on it
    if args.housekeeping:
        sys.exit(housekeeping.run(cfg))
    runner = Runner(cfg)

    def on_signal(signum: int, frame: object) -> None:
        runner.stopping = True
        if runner.ctx.bell:
            runner.ctx.bell.ring()

    def on_hangup(signum: int, frame: object) -> None:
        runner.reload_requested = True
        if runner.ctx.bell:
            runner.ctx.bell.ring()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    logger.info("airut-runner started (pid %d, spool %s, config %s)", os.getpid(),
                cfg.paths.spool, cfg.source)
    runner.serve()
    logger.info("airut-runner stopped; running task units continue")
