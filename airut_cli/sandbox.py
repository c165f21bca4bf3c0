"""`airut sandbox`: any command in the sandbox a task would get, and the image cache of CI.

`run` writes a command record (airut_core/commands.py) and follows its output: the
runner prepares and runs it with the same code as a task's (image, network policy,
masked secrets, limits) as airut-sandbox-<id>.service. The trusted configuration is
the repository's default branch (--repo) or a checkout the caller trusts (--dir, its
.airut/ files); the workspace is --dir, or a fresh clone of the default branch.

Exit codes: the command's own; 124 when it ran past its timeout, 125 when the sandbox
could not run it (what went wrong is said on stderr), 137 when it ran out of memory,
130 when it was stopped (Ctrl-C).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

from airut_core import commands
from airut_core.config import Config, ConfigError, RepoConfig
from airut_core.paths import Spool
from airut_core.records import CommandRecord
from airut_core.sandbox import ALLOWLIST_FILE

CONTAINER_PATH = RepoConfig.__dataclass_fields__["container_path"].default
ALLOWLIST_MAX = 1 << 20
REPO_IMAGE = "localhost/airut-repo"  # the runner's tag for images it builds (images.py)
TREE_LABEL = "airut.tree"


class SandboxCliError(RuntimeError):
    pass


def run(cfg: Config, argv: list[str], repo: str | None, directory: str | None,
        timeout: int | None, network_log: str | None) -> int:
    if os.geteuid() != 0:
        raise SandboxCliError("airut sandbox run needs root (sudo): it asks airut-runner "
                              "through the spool")
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SandboxCliError("no command given: airut sandbox run [options] -- CMD ...")
    if repo is not None:
        cfg.repo(repo)  # a clear error now, not from the runner
    record = CommandRecord(argv=argv, requested_by=f"airut sandbox run (uid {os.getuid()}, "
                           f"pid {os.getpid()})", repo=repo, timeout=timeout)
    context = None
    if directory is not None or repo is None:
        workspace = Path(directory or os.getcwd()).resolve()
        info = workspace.stat()
        if not workspace.is_dir():
            raise SandboxCliError(f"{workspace} is not a directory")
        if info.st_uid == 0:
            raise SandboxCliError(
                f"{workspace} belongs to root: the command's container root would be host "
                "root there. Use a checkout owned by an unprivileged user (chown -R)")
        record.workspace, record.workspace_owner = str(workspace), [info.st_uid, info.st_gid]
        if repo is None:
            record.allowlist = _allowlist(workspace, info.st_uid)
            candidate = workspace / CONTAINER_PATH
            context = candidate if (candidate / "Dockerfile").is_file() else None
    spool = Spool(cfg.paths.spool)
    owner = (record.workspace_owner[0], record.workspace_owner[1]) if context else None
    cid = commands.submit(spool, record, context, owner)
    directory_of_run = commands.run_dir(cfg.paths.state, cid)
    stopping = []

    def on_signal(signum: int, frame: object) -> None:
        if stopping:
            sys.exit(commands.STOPPED)
        stopping.append(signum)
        print(f"\nairut: stopping sandbox command {cid} (again to leave it running)",
              file=sys.stderr)
        commands.stop(spool, cid, f"airut sandbox run (pid {os.getpid()}, signal {signum})")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def waiting(seconds: float) -> None:
        print(f"airut: airut-runner has not taken command {cid} after {seconds:.0f} s; "
              "is it running? (systemctl status airut-runner)", file=sys.stderr)

    result = commands.follow(directory_of_run, sys.stdout.buffer, sys.stderr.buffer, waiting)
    if network_log:
        source = directory_of_run / "network.log"
        if source.exists():
            shutil.copyfile(source, network_log)
        else:
            Path(network_log).write_text("")  # no sandbox, or nothing happened
    if result.outcome != "exited" or result.exit_code == commands.INFRASTRUCTURE:
        print(f"airut: {result.error or result.outcome} (exit code {result.exit_code}; "
              f"journalctl AIRUT_SANDBOX={cid})", file=sys.stderr)
    commands.remove_run(directory_of_run)
    return result.exit_code


def _allowlist(workspace: Path, owner: int) -> str | None:
    """The checkout's allowlist: a file of the checkout's owner (root reads it; a link
    to a file of someone else is refused)."""
    path = workspace / ALLOWLIST_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SandboxCliError(f"cannot read {path}: {e}") from e
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if info.st_uid != owner or not stat.S_ISREG(info.st_mode):
            raise SandboxCliError(f"{path} is not a file of the checkout's owner")
        data = f.read(ALLOWLIST_MAX + 1)
    if len(data) > ALLOWLIST_MAX:
        raise SandboxCliError(f"{path} is larger than {ALLOWLIST_MAX} bytes")
    return data.decode("utf-8", errors="replace")


# -- the image cache -------------------------------------------------------------------------


def tree(cfg: Config, repo: str | None, directory: str | None) -> str:
    """The tree id the runner tags the image by (SandboxCliError: no Dockerfile)."""
    if repo is not None:
        from airut_runner.mirror import Mirror  # the runner's mirror, read as root

        repo_cfg = cfg.repo(repo)
        mirror = Mirror(cfg.paths.state, repo, repo_cfg.repo_url)
        mirror.update()
        found = mirror.tree(repo_cfg.container_path.strip("/") or ".")
        if not found or not mirror.has_file(found, "Dockerfile"):
            raise SandboxCliError(f"{repo} has no {repo_cfg.container_path}/Dockerfile on "
                                  f"its default branch: tasks use {cfg.agent.image}")
        return found
    workspace = Path(directory or os.getcwd()).resolve()
    context = workspace / CONTAINER_PATH
    if not (context / "Dockerfile").is_file():
        raise SandboxCliError(f"no {context}/Dockerfile: commands use {cfg.agent.image}")
    info = workspace.stat()
    return commands.snapshot(context, owner=(info.st_uid, info.st_gid) if info.st_uid
                             else None)


def tag_of(tree_id: str) -> str:
    return f"{REPO_IMAGE}:{tree_id[:20]}"


def save(tag: str, file: str) -> None:
    if subprocess.run(["podman", "image", "exists", tag]).returncode != 0:
        raise SandboxCliError(f"no image {tag} here yet: `airut sandbox run ... -- true` "
                              "builds it")
    _podman("save", "--quiet", "--output", file, tag)


def load(file: str) -> list[str]:
    """Load a saved image; anything in it that is not an image airut built, labelled
    with the tree its tag names, is removed again and refused."""
    output = _podman("load", "--input", file)
    names = [n.strip() for line in output.splitlines() if ":" in line
             and line.lower().startswith("loaded image")
             for n in line.split(":", 1)[1].split(",")]
    bad = []
    for name in names:
        label = _podman("image", "inspect", "--format",
                        f'{{{{index .Labels "{TREE_LABEL}"}}}}', name).strip()
        if not (name.startswith(f"{REPO_IMAGE}:") and label
                and tag_of(label) == name):
            bad.append(name)
    for name in bad:
        subprocess.run(["podman", "rmi", "--force", name], capture_output=True)
    if bad:
        raise SandboxCliError(f"{file} holds images airut did not build or whose tag does "
                              f"not match their content label: {', '.join(bad)} (removed)")
    if not names:
        raise SandboxCliError(f"{file} held no image")
    return names


def _podman(*args: str) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SandboxCliError(f"podman {args[0]}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def main(cfg: Config, args) -> int:
    try:
        if args.sandbox_command == "run":
            return run(cfg, args.cmd, args.repo, args.dir, args.timeout, args.network_log)
        if args.image_command == "load":
            print("\n".join(load(args.file)))
            return 0
        tree_id = tree(cfg, args.repo, args.dir)
        if args.image_command == "hash":
            print(tree_id)
        elif args.image_command == "save":
            save(tag_of(tree_id), args.file)
        return 0
    except (SandboxCliError, ConfigError, commands.SnapshotError, OSError) as e:
        print(f"airut: {e}", file=sys.stderr)
        return commands.INFRASTRUCTURE if args.sandbox_command == "run" else 1
