"""Commands in the sandbox: `airut sandbox run` and a schedule's trigger_command.

A request in commands/ (airut_core/commands.py has the contract) gets what a task of
its repository would get, made by the same code: the image of the default branch
(built by the same build units, shared with tasks by tag), its own network with the
allowlist and surrogates of the masked secrets in the proxy's policy, the resource
limits, the confinement of container.py. What differs: no Claude Code, no
conversation; the workspace is the asker's directory (container root is its owner)
or a fresh clone of the default branch; the output goes to two files the asker
follows; and a failure is not retried but answered at once as exit code 125.

Commands take no task slot: the operator asked for them. Each step of one command
runs under its own try: a failure ends that command with its reason, never the loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from airut_core import commands as contract
from airut_core import paths
from airut_core.config import ConfigError, ResourceLimits
from airut_core.records import CommandRecord
from airut_core.sandbox import AllowlistError, PolicyRecord, parse_allowlist
from airut_core.spool import RecordError, write_atomic
from airut_runner import build, container, images, prepare, units, workspace
from airut_runner.context import Context
from airut_runner.images import ImageSpec
from airut_runner.mirror import Mirror
from airut_runner.sandbox import NO_ALLOWLIST, NotReady
from airut_runner.uids import USERNS_SIZE

logger = logging.getLogger("airut.runner")


class CommandError(RuntimeError):
    """Why a command could not run; said to the asker as it is."""


@dataclass
class Prepared:
    repo: str  # "" for a trusted checkout: labels the image build
    image: ImageSpec
    build_context: Path | None
    rebuild: bool
    gateway: str
    policy: PolicyRecord | None
    workspace: Path
    uid_map: list[str]
    gid_map: list[str]
    limits: ResourceLimits
    timeout: int


@dataclass
class Command:
    record: CommandRecord
    future: Future | None = None  # being prepared
    unit: str | None = None  # running
    stop_requested: bool = False
    output_limit: int = 0  # bytes of stdout and stderr together; 0: not known yet
    over: str | None = None  # why the runner stopped it


def network_name(command_id: str) -> str:
    return f"airut-sandbox-{command_id}"


# -- the loop's part ------------------------------------------------------------------------


def tick(ctx: Context) -> None:
    """Endings first (they free networks), then finished preparations, lost units, and
    new requests; each command on its own."""
    for cid in ctx.spool.command_ends.names():
        guarded(ctx, cid, end)
    for cid, cmd in list(ctx.commands.items()):
        if cmd.future is not None and cmd.future.done():
            guarded(ctx, cid, collect)
    lost(ctx)
    over_budget(ctx)
    for cid in ctx.spool.commands.names():
        if cid not in ctx.commands:
            guarded(ctx, cid, begin)


def guarded(ctx: Context, cid: str, step) -> None:
    try:
        step(ctx, cid)
    except Exception as e:
        fail(ctx, cid, e)


def begin(ctx: Context, cid: str) -> None:
    """A new request, or one found after a restart (running, ended, or to prepare)."""
    run = contract.run_dir(ctx.state_dir, cid)
    try:
        record = CommandRecord.from_dict(ctx.spool.commands.read(cid), f"commands/{cid}")
    except RecordError as e:
        ctx.commands[cid] = Command(CommandRecord(argv=[], requested_by="?", command_id=cid))
        raise CommandError(str(e)) from e
    if record.command_id != cid:
        ctx.commands[cid] = Command(CommandRecord(argv=[], requested_by="?", command_id=cid))
        raise CommandError(f"commands/{cid} carries the id {record.command_id}")
    cmd = ctx.commands[cid] = Command(record)
    if contract.read_result(run) is not None:  # answered before a crash
        release(ctx, cid)
        del ctx.commands[cid]
        return
    unit = contract.unit_name(cid)
    if ctx.systemd.active_state(unit) is not None:
        cmd.unit = unit
        logger.info("adopted running unit %s", unit, extra={"sandbox": cid})
        return
    if ctx.spool.command_ends.exists(cid):
        cmd.unit = unit
        return  # the next pass ends it
    make_run_dir(run)
    for name in ("stdout", "stderr"):  # there at once: the asker sees it was taken
        (run / name).touch(mode=0o600)
    logger.info("sandbox command %s from %s: %s", cid, record.requested_by,
                " ".join(record.argv)[:200], extra={"sandbox": cid, "repo": record.repo})
    cmd.future = ctx.submit(prepare_command, ctx, cid, record)


def make_run_dir(run: Path) -> None:
    """0750 root:airut, like a conversation's: airut-proxy (group airut) appends to the
    network.log in it; everything else there is root's own (0600)."""
    for directory in (run.parent, run):
        directory.mkdir(mode=0o750, exist_ok=True)
        if paths.daemon_gid() is not None:
            os.chown(directory, 0, paths.daemon_gid())


def collect(ctx: Context, cid: str) -> None:
    cmd = ctx.commands[cid]
    future, cmd.future = cmd.future, None
    prepared = future.result()  # the worker's exception, if any
    if cmd.stop_requested:
        finish(ctx, cid, contract.Result(contract.STOPPED, "stopped",
                                         "the command was stopped before it started"))
    elif prepared.build_context:
        build.start(ctx, cid, prepared, waiting=ctx.command_building)
    else:
        start_unit(ctx, cid, prepared)


def built(ctx: Context, cid: str, prepared: Prepared, ok: bool, tail: list[str]) -> None:
    """Its image build ended (daemon.collect_builds)."""
    def step(ctx: Context, cid: str) -> None:
        if ctx.commands.get(cid) and ctx.commands[cid].stop_requested:
            finish(ctx, cid, contract.Result(contract.STOPPED, "stopped",
                                             "the command was stopped before it started"))
        elif ok:
            start_unit(ctx, cid, prepared)
        else:
            raise CommandError("the image failed to build" + (
                ":\n" + "\n".join(tail) if tail else f" (journalctl -u "
                f"{images.BUILD_PREFIX}{prepared.image.build_name}.service)"))
    guarded(ctx, cid, step)


def lost(ctx: Context) -> None:
    running = {cid: c.unit for cid, c in ctx.commands.items() if c.unit}
    if not running:
        return
    loaded = ctx.systemd.loaded(contract.UNIT_PREFIX)
    for cid, unit in running.items():
        # ExecStopPost writes the marker before the unit goes away, and the listing came
        # first: a gone unit without a marker really was lost.
        if unit not in loaded and not ctx.spool.command_ends.exists(cid):
            guarded(ctx, cid, lambda ctx, cid, unit=unit: finish(ctx, cid, contract.Result(
                contract.INFRASTRUCTURE, "lost", f"unit {unit} vanished without a result",
                unit=unit)))


def over_budget(ctx: Context) -> None:
    """A command's output is files on this host's disk: past the repository's disk limit
    (resource_limits.disk) the command is stopped, as a task that grows too big is."""
    for cid, cmd in ctx.commands.items():
        if not cmd.unit or cmd.over:
            continue
        run = contract.run_dir(ctx.state_dir, cid)
        size = 0
        for name in ("stdout", "stderr"):
            with contextlib.suppress(FileNotFoundError):
                size += (run / name).stat().st_size
        limit = cmd.output_limit or limits_of(ctx, cmd.record).disk
        if size > limit:
            cmd.over = f"its output passed {limit} bytes (resource_limits.disk) and it was stopped"
            logger.warning("stopping sandbox command %s: %s", cid, cmd.over,
                           extra={"sandbox": cid})
            ctx.systemd.stop(cmd.unit)


def limits_of(ctx: Context, record: CommandRecord) -> ResourceLimits:
    repo = ctx.cfg.repos.get(record.repo or "")
    return repo.resource_limits if repo is not None else ResourceLimits()


def stop(ctx: Context, cid: str, who: str) -> bool:
    """A stop request (control/); False to try again on the next pass."""
    cmd = ctx.commands.get(cid)
    if cmd is None:
        return not ctx.spool.commands.exists(cid)  # not begun yet: once it is
    cmd.stop_requested = True
    logger.info("stopping sandbox command %s (requested by %s)", cid, who,
                extra={"sandbox": cid})
    if cmd.unit and not ctx.systemd.stop(cmd.unit):
        logger.warning("unit %s is already gone", cmd.unit, extra={"sandbox": cid})
    return True


def is_command(ctx: Context, cid: str) -> bool:
    return cid in ctx.commands or ctx.spool.commands.exists(cid)


# -- preparing, in a worker thread ------------------------------------------------------------


def prepare_command(ctx: Context, cid: str, record: CommandRecord) -> Prepared:
    if not record.argv or any(not a or "\0" in a for a in record.argv):
        raise CommandError("the command is empty or has an empty or NUL argument")
    try:
        repo = ctx.cfg.repo(record.repo) if record.repo else None
    except ConfigError as e:
        raise CommandError(str(e)) from e
    limits = limits_of(ctx, record)
    timeout = record.timeout or limits.timeout
    run = contract.run_dir(ctx.state_dir, cid)
    mirror = None
    if repo is not None:
        mirror = Mirror(ctx.state_dir, str(record.repo), repo.repo_url)
        mirror.update()
    with images.in_use(ctx.state_dir):  # housekeeping prunes no image we are taking
        spec, context, rebuild = _image(ctx, cid, mirror, repo)
        write_atomic(run / "image", spec.tag.encode(), mode=0o600)
    if record.workspace is not None:
        owner = record.workspace_owner
        if len(owner) != 2 or owner[0] <= 0 or owner[1] < 0:
            raise CommandError(f"{record.workspace} must belong to an unprivileged user: "
                               "container root is its owner")
        target = Path(record.workspace)
        # One id: container root is the owner, and nobody else (podman 4.3 cannot
        # mount an image's layers for a mapping in two pieces).
        uid_map = [f"0:{owner[0]}:1"]
        gid_map = [f"0:{owner[1] or claim_ids(ctx, cid)}:1"]
    else:
        if mirror is None:
            raise CommandError("a command needs a repository or a directory")
        base = claim_ids(ctx, cid)
        target = run / "workspace"
        if not target.is_dir():
            mirror.clone_workspace(target)
            workspace.chown_tree(target, base)
        uid_map = gid_map = [f"0:{base}:{USERNS_SIZE}"]
    gateway, policy, secrets = _network(ctx, cid, record, repo, mirror, run)
    env = container.env_file_text(secrets, None, sandboxed=policy is not None, agent=False)
    write_atomic(run / "env", env.encode(), mode=0o600)
    return Prepared(record.repo or "", spec, context, rebuild, gateway, policy, target,
                    uid_map, gid_map, limits, timeout)


def _image(ctx: Context, cid: str, mirror: Mirror | None,
           repo) -> tuple[ImageSpec, Path | None, bool]:
    if mirror is not None:
        spec = images.resolve(mirror, repo.container_path, ctx.cfg.agent.image)
        context, rebuild = prepare.image_context(ctx, cid, spec, lambda target: mirror.export(
            str(spec.tree), target))
        return spec, context, rebuild
    # A trusted checkout's context, handed over by the asker: hashed again here, since
    # the tag is shared with tasks and must name exactly this content.
    handed = contract.context_dir(ctx.spool, cid)
    if not (handed / "Dockerfile").is_file():
        return ImageSpec(tag=ctx.cfg.agent.image), None, False
    tree = contract.snapshot(handed)
    spec = ImageSpec(tag=f"{images.REPO_IMAGE}:{tree[:20]}", tree=tree)
    context, rebuild = prepare.image_context(
        ctx, cid, spec, lambda target: shutil.copytree(handed, target, symlinks=True,
                                                       dirs_exist_ok=True))
    return spec, context, rebuild


def _network(ctx: Context, cid: str, record: CommandRecord, repo, mirror: Mirror | None,
             run: Path) -> tuple[str, PolicyRecord | None, dict[str, str]]:
    name = network_name(cid)
    if repo is not None and not repo.network.sandbox:
        logger.warning("the network sandbox is off for repository %s: the command has "
                       "unrestricted network access", record.repo, extra={"sandbox": cid})
        return ctx.podman.create_network(name, cid), None, dict(repo.secrets)
    if mirror is not None:
        allowlist = ctx.sandbox.allowlist(mirror)
    elif record.allowlist is None:
        raise CommandError(NO_ALLOWLIST.replace("on its default branch", "in the directory"))
    else:
        try:
            allowlist = parse_allowlist(record.allowlist, "the directory's allowlist")
        except AllowlistError as e:
            raise CommandError(str(e)) from e
    masks = ctx.sandbox.masks(repo) if repo is not None else []
    gateway = ctx.podman.create_network(name, cid, subnet=ctx.sandbox.allocate_subnet)
    network_log = run / "network.log"
    policy = PolicyRecord(task_id=cid, conversation_id="", repo=record.repo or "",
                          subnet=f"{gateway.rsplit('.', 1)[0]}.0/24",
                          network_log=str(network_log), allowlist=allowlist, masks=masks)
    secrets = {**(repo.secrets if repo else {}), **{m.env: m.surrogate for m in masks}}
    return gateway, policy, secrets


def claim_ids(ctx: Context, cid: str) -> int:
    """The command's own range of host ids (kept if it was claimed before a restart)."""
    owner = contract.uid_claim(cid)
    found = ctx.uids.find(owner)
    return found if found is not None else ctx.uids.allocate(owner)


# -- running and ending ---------------------------------------------------------------------


def start_unit(ctx: Context, cid: str, prepared: Prepared) -> None:
    cmd = ctx.commands[cid]
    run = contract.run_dir(ctx.state_dir, cid)
    if prepared.policy:
        try:
            ctx.sandbox.check_ready(ctx.systemd.active_state, prepared.policy.subnet)
        except NotReady as e:
            raise CommandError(str(e)) from e
        ctx.sandbox.write_policy(prepared.policy)
    seccomp = container.seccomp_file(ctx.state_dir)
    repo = ctx.cfg.repos.get(cmd.record.repo or "")
    if repo is not None and repo.allow_user_namespaces:
        seccomp = None
    run_spec = container.CommandRun(
        container_name=network_name(cid), command_id=cid, image=prepared.image.tag,
        command=cmd.record.argv, network=network_name(cid), env_file=run / "env",
        workspace=prepared.workspace, uid_map=prepared.uid_map, gid_map=prepared.gid_map,
        sandbox_gateway=prepared.gateway if prepared.policy else None,
        proxy_ca=ctx.cfg.proxy.ca_cert if prepared.policy else None,
        hosts_file=str(container.hosts_file(ctx.state_dir)),
        seccomp_profile=str(seccomp) if seccomp else None)
    unit = units.CommandUnit(
        name=contract.unit_name(cid), argv=run_spec.argv(), stdout_file=run / "stdout",
        stderr_file=run / "stderr", spool_dir=str(ctx.spool.root), command_id=cid,
        repo=cmd.record.repo, limits=prepared.limits, timeout=prepared.timeout,
        stop_grace=ctx.cfg.execution.stop_grace)
    if not ctx.systemd.start(unit.name, unit.properties()):
        logger.warning("unit %s is already loaded: adopting it", unit.name,
                       extra={"sandbox": cid})
    cmd.unit, cmd.output_limit = unit.name, prepared.limits.disk
    logger.info("started unit %s (image %s)", unit.name, prepared.image.tag,
                extra={"sandbox": cid, "repo": cmd.record.repo})


def end(ctx: Context, cid: str) -> None:
    """The unit ended: its exit code, once its network, policy and ids are released."""
    marker = ctx.spool.command_ends.read(cid)
    cmd = ctx.commands.get(cid)
    if cmd is None and contract.read_result(contract.run_dir(ctx.state_dir, cid)):
        ctx.spool.command_ends.remove(cid)  # answered already (as lost, or before a crash)
        return
    marker["unit"] = contract.unit_name(cid)
    if cmd is not None and cmd.over:
        result = contract.Result(contract.INFRASTRUCTURE, "disk_limit", cmd.over,
                                 marker["unit"])
    else:
        result = contract.result_of(marker, stop_requested=bool(cmd and cmd.stop_requested))
    finish(ctx, cid, result)


def finish(ctx: Context, cid: str, result: contract.Result) -> None:
    release(ctx, cid)
    contract.write_result(contract.run_dir(ctx.state_dir, cid), result)
    ctx.spool.commands.remove(cid)
    ctx.spool.command_ends.remove(cid)
    ctx.commands.pop(cid, None)
    ctx.command_building.pop(cid, None)
    logger.info("sandbox command %s ended: exit code %d (%s)%s", cid, result.exit_code,
                result.outcome, f": {result.error}" if result.error else "",
                extra={"sandbox": cid})


def release(ctx: Context, cid: str) -> None:
    """Everything the command held but its output (idempotent)."""
    ctx.podman.remove_network(network_name(cid))
    ctx.sandbox.remove_policy(cid)
    ctx.uids.release(contract.uid_claim(cid))
    run = contract.run_dir(ctx.state_dir, cid)
    shutil.rmtree(run / "workspace", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(run / "env")
    shutil.rmtree(contract.context_dir(ctx.spool, cid), ignore_errors=True)
    ctx.spool.commands.remove(cid)
    ctx.spool.command_ends.remove(cid)


def fail(ctx: Context, cid: str, error: BaseException) -> None:
    """A command that cannot go on: its asker gets 125 and the reason."""
    reason = str(error) if isinstance(error, CommandError | NotReady) else (
        f"{type(error).__name__}: {error}")
    logger.error("sandbox command %s failed: %s", cid, reason, extra={"sandbox": cid},
                 exc_info=not isinstance(error, CommandError | NotReady))
    cmd = ctx.commands.get(cid)
    if cmd is not None and cmd.unit and ctx.systemd.active_state(cmd.unit) is not None:
        return  # it runs: its end will answer
    try:
        finish(ctx, cid, contract.Result(contract.INFRASTRUCTURE, "error", reason))
    except Exception:
        # Kept in ctx.commands, so not begun again; the request stays for the operator.
        logger.exception("cannot answer sandbox command %s", cid, extra={"sandbox": cid})
