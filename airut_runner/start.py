"""Starting a prepared task's unit: the transient service that runs `podman run`.

The record's state gets the unit's name and where this run's output starts in the
conversation's events.jsonl before the unit starts, so a restarted runner can adopt
the unit and read exactly this run's output.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict

from airut_core import paths
from airut_core.spool import utc_now
from airut_runner import container, units
from airut_runner.context import Context, Prepared, Refused, resource, state_of
from airut_runner.outcome import Exit
from airut_runner.sandbox import NotReady

EVENTS_KEEP = 64 << 20  # events.jsonl beyond this moves to events.1.jsonl before a run


def start_unit(ctx: Context, name: str, prepared: Prepared) -> None:
    conv, image, policy = prepared.conversation, prepared.image, prepared.policy
    if policy:
        try:
            ctx.sandbox.check_ready(ctx.systemd.active_state, policy.subnet)
        except NotReady as e:
            if name not in ctx.waiting_ready:
                ctx.log(name).warning("waiting for the network sandbox: %s", e)
                ctx.waiting_ready[name] = (prepared, time.monotonic())
            return
    ctx.waiting_ready.pop(name, None)
    record, task = ctx.task(name)
    if state_of(record).get("stop_requested") is True:  # asked before a restart
        from airut_runner import finish

        finish.begin(ctx, name, Exit())
        return
    repo = ctx.cfg.repo(task.repo)
    cdir = paths.conversation_dir(ctx.state_dir, conv.conversation_id)
    events = cdir / "events.jsonl"
    rotate(events)
    if not events.exists():
        events.touch(mode=0o640)
        if paths.daemon_gid() is not None:
            os.chown(events, 0, paths.daemon_gid())
    unit = units.unit_name(conv.conversation_id, name)
    if state_of(record).get("fresh_retry"):
        unit = unit.replace(".service", "-fresh.service")
    ctx.note(name, {"unit": unit, "events_offset": events.stat().st_size, "image": image.tag,
                    "started": utc_now(), "stop_requested": False,
                    "resumed": bool(conv.session_id), "sandbox": policy is not None,
                    "disk_start": prepared.disk_start,
                    "limits": asdict(repo.resource_limits),
                    "image_created": ctx.image_created.get(image.tag)}, drop=("disk_exceeded",))
    if policy:
        ctx.sandbox.write_policy(policy)
    else:
        ctx.log(name, task).warning("the network sandbox is off for repository %s: the "
                                    "task has unrestricted network access", task.repo)
    seccomp = None if repo.allow_user_namespaces else container.seccomp_file(ctx.state_dir)
    if seccomp and not seccomp.is_file():
        raise RuntimeError(f"the containers' seccomp profile {seccomp} is missing (made at the "
                           f"runner's start from {container.PODMAN_SECCOMP}; see the "
                           "runner's journal)")
    run = container.AgentRun(
        container_name=resource(name), conversation_dir=cdir, image=image.tag,
        claude_binary=ctx.cfg.agent.claude_binary, network=resource(name),
        model=conv.model, env_file=cdir / "tasks" / f"{name}.env",
        uid_base=conv.uid_base, effort=conv.effort, resume_session=conv.session_id,
        sandbox_gateway=prepared.gateway if policy else None,
        proxy_ca=ctx.cfg.proxy.ca_cert if policy else None,
        hosts_file=str(container.hosts_file(ctx.state_dir)),
        seccomp_profile=str(seccomp) if seccomp else None)
    task_unit = units.TaskUnit(
        name=unit, argv=run.argv(), stdin_file=cdir / "tasks" / f"{name}.prompt",
        stdout_file=events, spool_dir=str(ctx.spool.root), task_id=name,
        conversation_id=conv.conversation_id, repo=task.repo, limits=repo.resource_limits,
        stop_grace=ctx.cfg.execution.stop_grace)
    if not ctx.systemd.start(unit, task_unit.properties()):
        # Ours (the name is the task's): started by an earlier attempt whose answer was
        # lost (a bus timeout). Adopted, never started twice.
        ctx.log(name, task).warning("unit %s is already loaded: adopting it", unit)
    ctx.running[name] = unit
    ctx.tasks.forget(name)  # it runs: earlier failures to start it are behind it
    ctx.log(name, task).info(
        "started unit %s (image %s, %s, model %s)", unit, image.tag,
        "resumed session" if conv.session_id else "new session", conv.model)


def retry_waiting(ctx: Context, name: str) -> None:
    """A task waiting for the sandbox: start it if it is in place now; give it up once
    it has waited execution.sandbox_wait (the reply says what is missing)."""
    prepared, since = ctx.waiting_ready[name]
    if time.monotonic() - since <= ctx.cfg.execution.sandbox_wait:
        start_unit(ctx, name, prepared)
        return
    ctx.waiting_ready.pop(name)
    try:
        if prepared.policy:
            ctx.sandbox.check_ready(ctx.systemd.active_state, prepared.policy.subnet)
    except NotReady as e:
        raise Refused(str(e), reply=f"airut could not run this task: {e}. It waited "
                      f"{ctx.cfg.execution.sandbox_wait:g} s; send your message again once "
                      "the operator has fixed it.") from e
    start_unit(ctx, name, prepared)


def rotate(events) -> None:
    """Keep the conversation's agent output from growing without end: what is there
    beyond EVENTS_KEEP moves to events.1.jsonl (replacing the one before)."""
    try:
        if events.stat().st_size > EVENTS_KEEP:
            os.replace(events, events.with_name("events.1.jsonl"))
    except FileNotFoundError:
        pass
