"""Container images: one per Dockerfile tree on a repository's default branch.

An image is tagged by the git tree id of its build context
(`localhost/airut-repo:<tree>`), so identical content shares one image and any
change on the default branch makes a new one; a change in the agent's workspace
never does. A repository without `<container_path>/Dockerfile` runs in
`agent.image`. Images older than `agent.image_max_age_hours` are rebuilt.

Builds run as transient units `airut-build-<tree>.service` (their log is in the
journal); the unit name doubles as the lock, so an image is built once however
many tasks wait for it. Queries and pruning go through podman_api.
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from airut_runner import units
from airut_runner.mirror import Mirror

REPO_IMAGE = "localhost/airut-repo"
LABEL = "airut.tree"
BUILD_PREFIX = "airut-build-"
BUILD_SLICE = "airut-builds.slice"


@dataclass
class ImageSpec:
    tag: str
    tree: str | None = None  # None: the operator's default image, never built here
    dockerfile: str = "Dockerfile"

    @property
    def built_here(self) -> bool:
        return self.tree is not None

    @property
    def build_name(self) -> str:
        return self.tag.rsplit(":", 1)[1]


def resolve(mirror: Mirror, container_path: str, default_image: str) -> ImageSpec:
    tree = mirror.tree(container_path.strip("/") or ".")
    if tree and mirror.has_file(tree, "Dockerfile"):
        return ImageSpec(tag=f"{REPO_IMAGE}:{tree[:20]}", tree=tree)
    return ImageSpec(tag=default_image)


@contextlib.contextmanager
def in_use(state_dir: Path, exclusive: bool = False) -> Iterator[None]:
    """Taking an image for a task (shared) against pruning images (exclusive): a task
    records its image in its record's state under the shared lock, and housekeeping
    keeps every image recorded there."""
    with open(Path(state_dir) / "images.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def epoch(created: object) -> float | None:
    if isinstance(created, int | float):
        return float(created)
    if isinstance(created, str):
        text = created.replace("Z", "+00:00")
        if "." in text:  # Go prints nanoseconds; Python takes at most microseconds
            head, _, rest = text.partition(".")
            digits = "".join(ch for ch in rest if ch.isdigit())
            zone = rest[len(digits):]
            text = f"{head}.{digits[:6]}{zone}"
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            return None
    return None


def is_stale(created: float, max_age_hours: float) -> bool:
    return time.time() - created > max_age_hours * 3600


@dataclass
class BuildUnit:
    spec: ImageSpec
    context: Path
    repo: str
    spool_dir: str
    timeout: int
    no_cache: bool = False

    @property
    def name(self) -> str:
        return f"{BUILD_PREFIX}{self.spec.build_name}.service"

    def properties(self) -> dict[bytes, object]:
        argv = ["/usr/bin/podman", "build", "--pull=never", "--layers",
                f"--tag={self.spec.tag}", f"--label={LABEL}={self.spec.tree}",
                f"--label=airut.repo={self.repo}",
                f"--file={self.context / self.spec.dockerfile}", str(self.context)]
        if self.no_cache:
            argv.insert(2, "--no-cache")
        exit_helper = [sys.executable, "-m", "airut_runner.task_exit", "--stage", "builds",
                       self.spool_dir, self.spec.build_name]
        return {
            b"Description": f"airut image build {self.spec.tag} (repository {self.repo})"
                            .encode(),
            b"Slice": BUILD_SLICE.encode(),
            b"ExecStart": [units.exec_line(argv)],
            b"ExecStopPost": [units.exec_line(exit_helper)],
            b"StandardOutput": b"journal",
            b"StandardError": b"journal",
            b"SyslogIdentifier": b"airut-build",
            b"LogExtraFields": [f"AIRUT_IMAGE={self.spec.tag}".encode(),
                                f"AIRUT_REPO={self.repo}".encode()],
            b"RuntimeMaxUSec": self.timeout * 1_000_000,
            b"CollectMode": b"inactive-or-failed",
        }
