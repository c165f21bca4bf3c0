"""`airut check`: can this host run airut with this configuration? One line per check.

Each check prints `ok` or `FAIL` with what it found and, on a failure, what to do;
the command exits 1 if any failed. It runs as root (it reads the secrets the daemons
get) and changes nothing.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from airut_core import config as config_mod
from airut_core import secrets
from airut_core.config import CLAUDE_CODE_VERSION, Config, ConfigError
from airut_core.sandbox import ALLOWLIST_FILE, AllowlistError, parse_allowlist

NFT_RULES = Path("/usr/share/airut/airut.nft")
TIMEOUT = 20


@dataclass
class Line:
    name: str
    ok: bool | None  # None: not tried, because of a failure above
    detail: str

    def __str__(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[self.ok]
        return f"{mark}  {self.name}: {self.detail}"


class Failed(Exception):
    pass


class Skipped(Exception):
    pass


def run(config_path: str | None, offline: bool = False) -> Iterator[Line]:
    """Every check in order; a configuration that does not load ends the list."""
    path = config_mod.config_path(config_path)
    try:
        cfg = config_mod.load(path)
    except ConfigError as e:
        yield Line("configuration", False, str(e))
        return
    repos = ", ".join(sorted(cfg.repos)) or "no repositories yet"
    yield Line("configuration", True, f"{path} ({repos})")
    yield from _secrets(cfg)
    for name, probe in HOST_CHECKS:
        yield _line(name, lambda probe=probe: probe(cfg))
    if offline:
        return
    for repo_id, repo in sorted(cfg.repos.items()):
        yield _line(f"repository {repo_id}", lambda repo=repo: _repository(repo.repo_url))
        if repo.email:
            yield _line(f"email {repo_id}: IMAP {repo.email.imap.host}",
                        lambda repo=repo: _imap(repo.email))
            yield _line(f"email {repo_id}: SMTP {repo.email.smtp.host}",
                        lambda repo=repo: _smtp(repo.email))
        if repo.slack:
            yield _line(f"slack {repo_id}: bot token", lambda repo=repo: _slack(
                repo.slack, "bot_token"))
            yield _line(f"slack {repo_id}: app token", lambda repo=repo: _slack(
                repo.slack, "app_token"))


def _line(name: str, probe: Callable[[], str]) -> Line:
    try:
        return Line(name, True, probe())
    except Failed as e:
        return Line(name, False, str(e))
    except Skipped as e:
        return Line(name, None, str(e))
    except Exception as e:  # a check that breaks is a failed check, never a traceback
        return Line(name, False, f"{type(e).__name__}: {e}")


def _secrets(cfg: Config) -> Iterator[Line]:
    """Each named secret once, unsealed in place so the channel checks can log in."""
    for name, keys, why in config_mod.unseal_each(cfg, config_mod.every_secret):
        named = ", ".join(keys)
        yield Line(f"secret {name}", why is None,
                   f"readable ({named})" if why is None else f"{why} (named by {named})")


def _command(*cmd: str, timeout: float = TIMEOUT, input: str | None = None) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             input=input)
    except FileNotFoundError:
        raise Failed(f"{cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise Failed(f"`{' '.join(cmd)}` did not finish within {timeout:g} s") from None
    if out.returncode != 0:
        last = (out.stderr.strip() or out.stdout.strip()).splitlines()
        raise Failed(f"`{' '.join(cmd)}` exited {out.returncode}: "
                     f"{last[-1] if last else 'no output'}")
    return out.stdout.strip()


def _podman(cfg: Config) -> str:
    version = _command("podman", "version", "--format", "{{.Client.Version}}")
    runtime = _command("podman", "info", "--format", "{{.Host.OCIRuntime.Name}} "
                       "{{.Host.OCIRuntime.Version}}").splitlines()[0]
    return f"podman {version}, runtime {runtime}"


def _cgroups(cfg: Config) -> str:
    root = Path("/sys/fs/cgroup")
    controllers = root / "cgroup.controllers"
    if controllers.exists():
        have = set(controllers.read_text().split())
        missing = {"memory", "cpu", "pids"} - have
        if missing:
            raise Failed(f"cgroup v2 without the {', '.join(sorted(missing))} controller: "
                         "task limits cannot be enforced")
        return "cgroup v2 (memory, cpu, pids)"
    missing = [c for c in ("memory", "cpu", "pids") if not (root / c).is_dir()]
    if missing:
        raise Failed(f"cgroup v1 without the {', '.join(missing)} hierarchy")
    return "cgroup v1 (memory, cpu, pids); v2 is the tested default (doc/cgroups.md)"


def _nftables(cfg: Config) -> str:
    from airut_proxy import firewall

    rules = NFT_RULES if NFT_RULES.exists() else Path(__file__).parents[1] / "units/airut.nft"
    count = cfg.proxy_workers()
    _command("nft", "--check", "-f", "-", input=firewall.render(rules.read_text(), count))
    return f"the kernel accepts {rules.name} for {count} proxy worker(s)"


def _claude(cfg: Config) -> str:
    binary = Path(cfg.agent.claude_binary)
    fix = "run: airut setup claude"
    if not binary.exists():
        raise Failed(f"{binary} is missing; {fix}")
    version = _command(str(binary), "--version").split()
    if CLAUDE_CODE_VERSION not in version:
        raise Failed(f"{binary} is version {' '.join(version) or '?'}, airut needs "
                     f"{CLAUDE_CODE_VERSION}; {fix}")
    return f"{binary} ({CLAUDE_CODE_VERSION})"


def _proxy_ca(cfg: Config) -> str:
    ca = Path(cfg.proxy.ca_cert)
    if ca.exists():
        if b"BEGIN CERTIFICATE" not in ca.read_bytes()[:4096]:
            raise Failed(f"{ca} is not a PEM certificate")
        return str(ca)
    state = subprocess.run(["systemctl", "is-active", "airut-proxy@0.service"],
                           capture_output=True, text=True).stdout.strip()
    if state == "active":
        raise Failed(f"{ca} is missing although airut-proxy runs: "
                     "journalctl -u airut-proxy says why")
    return f"{ca} is made by airut-proxy on its first start"


HOST_CHECKS: list[tuple[str, Callable[[Config], str]]] = [
    ("podman", _podman), ("cgroups", _cgroups), ("nftables", _nftables),
    ("Claude Code CLI", _claude), ("proxy CA", _proxy_ca)]


def _repository(url: str) -> str:
    """The default branch is fetchable, and its allowlist (if any) parses. What it says
    names the URL without its credentials (the runner's mirror does the same)."""
    from airut_runner.mirror import GitError, git, public_url

    shown = public_url(url)
    with tempfile.TemporaryDirectory(prefix="airut-check-") as tmp:
        try:
            head = git("ls-remote", "--symref", url, "HEAD", timeout=TIMEOUT)
        except GitError as e:
            raise Failed(f"cannot reach {shown}: {_last(str(e))}".replace(url, shown)) from None
        branch = next((line.split()[1] for line in head.splitlines()
                       if line.startswith("ref:")), "HEAD")
        name = branch.removeprefix("refs/heads/")
        try:
            git("init", "-q", "--bare", cwd=Path(tmp))
            git("fetch", "-q", "--depth=1", url, branch, cwd=Path(tmp), timeout=120)
        except GitError as e:
            raise Failed(f"cannot read {name} of {shown}: {_last(str(e))}"
                         .replace(url, shown)) from None
        try:
            text = git("show", f"FETCH_HEAD:{ALLOWLIST_FILE}", cwd=Path(tmp))
        except GitError:
            return (f"{shown}: default branch {name} readable; it has no {ALLOWLIST_FILE}, "
                    "so its agents reach nothing (doc/network-sandbox.md)")
    try:
        allowlist = parse_allowlist(text, f"{ALLOWLIST_FILE} on {name}")
    except AllowlistError as e:
        raise Failed(str(e)) from None
    return (f"{shown}: default branch {name} readable, allowlist parses "
            f"({len(allowlist.domains)} domains, {len(allowlist.url_prefixes)} URL prefixes)")


def _last(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no message"


def _slack(slack: config_mod.SlackConfig, token: str) -> str:
    from slack_sdk.errors import SlackApiError

    from airut_ingest.slack import api

    if isinstance(getattr(slack, token), secrets.Sealed):
        raise Skipped(f"the {token.replace('_', ' ')} cannot be read (see its secret above)")
    try:
        return (api.check_bot if token == "bot_token" else api.check_app)(slack, TIMEOUT)
    except SlackApiError as e:
        raise Failed(f"{slack.api_url}: {api.describe(e)}") from None
    except ValueError as e:
        raise Failed(str(e)) from None
    except OSError as e:
        raise Failed(f"{slack.api_url}: cannot reach Slack's API ({e})") from None


def _imap(email: config_mod.EmailConfig) -> str:
    from airut_ingest.email.mailbox import Mailbox

    if isinstance(email.imap.password, secrets.Sealed):
        raise Skipped("not tried: its password cannot be read (above)")
    box = Mailbox(email.imap, timeout=TIMEOUT)
    try:
        box.connect()  # logs in and selects the mailbox
    except Exception as e:
        raise Failed(f"{email.imap.host}:{email.imap.port} ({email.imap.security}): "
                     f"{type(e).__name__}: {e}") from None
    box.close()
    return f"logged in as {email.imap.username}, {email.imap.mailbox} selected"


def _smtp(email: config_mod.EmailConfig) -> str:
    from airut_ingest.email.mailbox import smtp_session

    if isinstance(email.smtp.password, secrets.Sealed):
        raise Skipped("not tried: its password cannot be read (above)")
    try:
        smtp_session(email.smtp, timeout=TIMEOUT).quit()
    except Exception as e:
        raise Failed(f"{email.smtp.host}:{email.smtp.port} ({email.smtp.security}): "
                     f"{type(e).__name__}: {e}") from None
    who = f"logged in as {email.smtp.username}" if email.smtp.username else "no login"
    return f"connected, {who}"
