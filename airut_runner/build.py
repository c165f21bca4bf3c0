"""Image builds: a transient unit per image; tasks that need it wait for it.

The unit name is the lock, so an image is built once however many tasks wait for it.
Its ExecStopPost writes builds/<image>.json; the loop then starts the waiting tasks'
units, or gives them up with the end of the build's log.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

from airut_runner import images
from airut_runner.context import Context, Prepared, Refused

FAILED = ("The container image for this repository failed to build, so the task could not "
          "run. Fix {path}/Dockerfile on the default branch, then send your message again.")


def start(ctx: Context, name: str, prepared: Prepared, waiting: dict | None = None) -> None:
    """Build the image a task (or, with waiting=ctx.command_building, a command) needs."""
    spec = prepared.image
    build = images.BuildUnit(spec=spec, context=prepared.build_context,
                             repo=prepared.repo, spool_dir=str(ctx.spool.root),
                             timeout=ctx.cfg.agent.build_timeout, no_cache=prepared.rebuild)
    under_way = any(p.image.tag == spec.tag for p in [*ctx.building.values(),
                                                      *ctx.command_building.values()])
    # Only once the unit is started (or known to be) does the task wait for it: a unit
    # that cannot start must not hold the task's slot.
    started = not under_way and ctx.systemd.start(build.name, build.properties())
    (ctx.building if waiting is None else waiting)[name] = prepared
    if started:
        ctx.log(name).info("building image %s in unit %s%s", spec.tag, build.name,
                           " (stale, without cache)" if prepared.rebuild else "")
    else:
        ctx.log(name).info("waiting for the image build %s already under way", build.name)


@dataclass
class Built:
    name: str  # the build's name (the image tag's last part)
    ok: bool
    invocation: str | None
    waiters: dict[str, Prepared]
    commands: dict  # command id -> its CommandPrepared


def collect(ctx: Context, build_name: str) -> Built:
    """A build ended: who was waiting for it, and whether it worked."""
    marker = ctx.peek(ctx.spool.builds, build_name)
    ok = marker.get("service_result") == "success"
    invocation = marker.get("invocation_id")
    waiters = {n: p for n, p in ctx.building.items() if p.image.build_name == build_name}
    for name in waiters:
        del ctx.building[name]
    commands = {n: p for n, p in ctx.command_building.items()
                if p.image.build_name == build_name}
    for name in commands:
        del ctx.command_building[name]
    if ok:
        ctx.image_created[f"{images.REPO_IMAGE}:{build_name}"] = time.time()
    ctx.spool.builds.remove(build_name)
    for context in (ctx.state_dir / "builds").glob(f"{build_name}-*"):  # every task's copy
        shutil.rmtree(context, ignore_errors=True)
    return Built(build_name, ok, invocation if isinstance(invocation, str) else None, waiters,
                 commands)


def failed(ctx: Context, name: str, tail: list[str]) -> Refused:
    """Why a waiting task cannot run: its image did not build."""
    record = ctx.peek(ctx.spool.active, name)
    repo = ctx.cfg.repos.get(record.get("repo")) if isinstance(record.get("repo"), str) else None
    text = FAILED.format(path=repo.container_path if repo else ".airut/container")
    if tail:
        text += "\n\nBuild output (end):\n```\n" + "\n".join(tail) + "\n```"
    return Refused("the container image failed to build", reply=text)
