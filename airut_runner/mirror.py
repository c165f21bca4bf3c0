"""One bare mirror per repository: the source of workspaces, Dockerfiles and allowlists.

The mirror is refreshed before each task under an exclusive flock; workspaces are
cloned from it under a shared one. What defines the agent's container (and later
its network allowlist) is read from the mirror's **default branch**, never from a
workspace the agent could have edited.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

GIT_TIMEOUT = 600


class GitError(RuntimeError):
    pass


def git(*args: str, cwd: Path | None = None, timeout: float = GIT_TIMEOUT) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, check=True, env=env)
    except subprocess.CalledProcessError as e:
        raise GitError(e.stderr.strip() or f"git {args[0]} failed with status "
                                            f"{e.returncode}") from e
    except subprocess.TimeoutExpired as e:
        raise GitError(f"git {args[0]} took longer than {timeout:.0f} s") from e
    return done.stdout


def public_url(url: str) -> str:
    """The URL without a password or token: `https://TOKEN@host/x` and
    `https://user:TOKEN@host/x` become `https://host/x`; an ssh URL keeps its user name
    (`ssh://git@host/x`, `git@host:x`), which is not a secret, but loses a password."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc or "@" not in parts.netloc:
        return url  # a path, or scp-like `user@host:path`
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    keep_user = parts.scheme in ("ssh", "git+ssh", "ssh+git") and user
    netloc = f"{user}@{hostport}" if keep_user else hostport
    if has_password or not keep_user:
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class Mirror:
    def __init__(self, state_dir: Path | str, repo_id: str, url: str):
        self.root = Path(state_dir) / "repos" / repo_id
        self.path = self.root / "mirror.git"
        self.url = url

    def _public(self, text: str) -> str:
        """Error texts reach logs and replies: never with the URL's credentials."""
        return text.replace(self.url, public_url(self.url))

    @contextlib.contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "mirror.lock", "a") as f:
            fcntl.flock(f, mode)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def update(self) -> None:
        """Clone the mirror on first use, fetch into it afterwards."""
        with self._lock(fcntl.LOCK_EX):
            if (self.path / "HEAD").exists():
                try:
                    git("fetch", "--prune", "--quiet", "origin", cwd=self.path)
                except GitError as e:
                    raise GitError(self._public(f"cannot fetch {self.url}: {e}")) from e
                return
            tmp = self.root / "mirror.git.new"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                git("clone", "--mirror", "--quiet", "--", self.url, str(tmp))
            except GitError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise GitError(self._public(f"cannot clone {self.url}: {e}")) from e
            tmp.rename(self.path)

    def clone_workspace(self, target: Path) -> None:
        """A full, independent clone (no shared objects), origin pointing at the real URL
        without its credentials: the agent reads the workspace's .git/config."""
        with self._lock(fcntl.LOCK_SH):
            git("clone", "--quiet", "--no-hardlinks", "--", str(self.path), str(target))
        git("remote", "set-url", "origin", public_url(self.url), cwd=target)

    def default_branch(self) -> str:
        return git("symbolic-ref", "--short", "HEAD", cwd=self.path).strip()

    def tree(self, path: str) -> str | None:
        """The git tree id of path on the default branch (changes iff its content does)."""
        with self._lock(fcntl.LOCK_SH):
            try:
                return git("rev-parse", "--verify", "--quiet",
                           f"{self.default_branch()}:{path}", cwd=self.path).strip()
            except GitError:
                return None

    def show(self, path: str) -> str | None:
        """A file's text on the default branch; None if there is no such file."""
        with self._lock(fcntl.LOCK_SH):
            try:
                return git("show", f"{self.default_branch()}:{path}", cwd=self.path)
            except GitError:
                return None

    def has_file(self, tree: str, name: str) -> bool:
        try:
            git("cat-file", "-e", f"{tree}:{name}", cwd=self.path)
            return True
        except GitError:
            return False

    def export(self, tree: str, target: Path) -> None:
        """Write the files of a tree into target (made whole, then renamed into place)."""
        tmp = target.with_name(target.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with self._lock(fcntl.LOCK_SH):
            archive = subprocess.run(["git", "archive", "--format=tar", tree], cwd=self.path,
                                     capture_output=True, check=True, timeout=GIT_TIMEOUT)
        subprocess.run(["tar", "-x", "--no-same-owner", "-C", str(tmp)], input=archive.stdout,
                       check=True, capture_output=True, timeout=GIT_TIMEOUT)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
