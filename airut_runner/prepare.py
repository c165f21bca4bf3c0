"""Preparing a claimed task, in a worker thread: the repository's mirror refreshed, the
conversation opened (or made), its image resolved, its network and policy made, the
attachments copied into its inbox, and its prompt and environment written.

Preparation is idempotent (a task prepared twice after a crash makes one of
everything) and touches only this task's files; the loop collects the result on its
own thread and starts the image build or the task's unit.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

from airut_core import paths
from airut_core.config import ConfigError, RepoConfig
from airut_core.conversation import Conversation, ConversationError
from airut_core.records import TaskRecord
from airut_core.sandbox import PolicyRecord
from airut_core.spool import write_atomic
from airut_runner import claim, container, disk, images, prompt, workspace
from airut_runner.context import Context, Prepared, Refused, merged_of, resource, state_of
from airut_runner.images import ImageSpec
from airut_runner.mirror import Mirror
from airut_runner.sandbox import SandboxError


def prepare(ctx: Context, name: str) -> Prepared:
    record, task = ctx.task(name)
    if task.attachments_dir is not None:
        claim.check_attachments(ctx, task.attachments_dir)
    state = state_of(record)
    merged = [claim.check(ctx, m["task_id"], m, f"active/{name} (merged)")
              for m in merged_of(record)]
    log = ctx.log(name, task)
    try:
        repo = ctx.cfg.repo(task.repo)
    except ConfigError as e:
        raise Refused(str(e)) from e
    claude = Path(ctx.cfg.agent.claude_binary)
    if not claude.is_file():
        raise RuntimeError(f"the Claude Code binary is missing at {claude} "
                           "(agent.claude_binary)")
    mirror = Mirror(ctx.state_dir, task.repo, repo.repo_url)
    mirror.update()
    try:
        conv = workspace.open_or_create(ctx.state_dir, task, repo, mirror, ctx.uids, log)
    except ConversationError as e:
        raise Refused(f"the conversation's state is unreadable: {e}",
                      reply="airut cannot continue this conversation: its saved state is "
                            "damaged. Start a new conversation; the operator can find the "
                            "details in the runner's journal.") from e
    # At once, so a failure further on retries in this conversation, not a new one.
    _note_conversation(ctx, name, conv.conversation_id)
    with images.in_use(ctx.state_dir):  # housekeeping prunes no image we are taking
        spec = images.resolve(mirror, repo.container_path, ctx.cfg.agent.image)
        context, rebuild = image_context(ctx, name, spec, lambda target: mirror.export(
            str(spec.tree), target))
        ctx.note(name, {"image": spec.tag})
    cdir = paths.conversation_dir(ctx.state_dir, conv.conversation_id)
    gateway, policy, secrets, base_url = _network(ctx, name, task, repo, conv, mirror)
    attached = state.get("attached")
    if not (isinstance(attached, list) and all(isinstance(a, str) for a in attached)):
        attached = workspace.copy_attachments(
            [Path(t.attachments_dir) for t in [*merged, task] if t.attachments_dir],
            cdir / "inbox", conv.uid_base)
        ctx.note(name, {"attached": attached})  # copied once, however often prepared
    fresh = state.get("fresh_retry")
    text = prompt.compose([*merged, task], attached,
                          recovery=conv.last_reply if fresh else None)
    write_atomic(cdir / "tasks" / f"{name}.prompt", text.encode(), mode=0o600)
    env = container.env_file_text(secrets, base_url, ctx.cfg.agent.env,
                                  sandboxed=policy is not None)
    write_atomic(cdir / "tasks" / f"{name}.env", env.encode(), mode=0o600)
    return Prepared(conv, spec, context, rebuild, gateway, policy, disk.usage(cdir))


def image_context(ctx: Context, name: str, spec: ImageSpec,
                  export: Callable[[Path], None]) -> tuple[Path | None, bool]:
    """The build context to export (with `export`) when the image must be (re)built,
    and whether it is a rebuild of a stale image; (None, False) when it is there."""
    if not spec.built_here:
        return None, False
    created = ctx.image_created.get(spec.tag) or ctx.podman.image_created(spec.tag)
    rebuild = created is not None and images.is_stale(created,
                                                      ctx.cfg.agent.image_max_age_hours)
    if created is not None and not rebuild:
        ctx.image_created[spec.tag] = created
        return None, False
    # The task's own copy: another task's export must not change or remove a context
    # while a build reads it.
    context = ctx.state_dir / "builds" / f"{spec.build_name}-{name}"
    export(context)
    return context, rebuild


def _network(ctx: Context, name: str, task: TaskRecord, repo: RepoConfig, conv: Conversation,
             mirror: Mirror) -> tuple[str, PolicyRecord | None, dict[str, str], str | None]:
    """The task's own network; in the sandbox also its policy and surrogates.
    Returns the gateway, the policy, the agent's secrets and its model API URL."""
    base_url = repo.api_base_url or ctx.cfg.agent.api_base_url
    if not repo.network.sandbox:
        gateway = ctx.podman.create_network(resource(name), name)
        return gateway, None, dict(repo.secrets), container.host_url(base_url, gateway)
    try:
        allowlist = ctx.sandbox.allowlist(mirror)
    except SandboxError as e:
        raise Refused(str(e), reply=f"airut could not run this task: {e}") from e
    masks = ctx.sandbox.masks(repo)
    gateway = ctx.podman.create_network(resource(name), name,
                                        subnet=ctx.sandbox.allocate_subnet)
    cdir = paths.conversation_dir(ctx.state_dir, conv.conversation_id)
    policy = PolicyRecord(
        task_id=name, conversation_id=conv.conversation_id, repo=task.repo,
        subnet=str(ipaddress.ip_network(f"{gateway}/24", strict=False)),
        network_log=str(cdir / "network.log"), allowlist=allowlist, masks=masks)
    secrets = {**repo.secrets, **{m.env: m.surrogate for m in masks}}
    return gateway, policy, secrets, base_url


def collect(ctx: Context, name: str) -> None:
    """On the loop's thread: the worker is done; start the build or the unit."""
    from airut_runner import build, start

    prepared = ctx.preparing.pop(name).result()  # the worker's exception, if any
    if prepared.build_context:
        build.start(ctx, name, prepared)
    else:
        start.start_unit(ctx, name, prepared)


def _note_conversation(ctx: Context, name: str, conversation_id: str) -> None:
    record = ctx.spool.active.read(name)
    if record.get("conversation_id") != conversation_id:
        record["conversation_id"] = conversation_id
        ctx.spool.active.put(name, record)
