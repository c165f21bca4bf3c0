"""/etc/airut/airut.yaml: loading and validation.

Errors name the file and the key path, e.g.
  /etc/airut/airut.yaml: repos.demo.resource_limits.memory: expected a size like 512M or 2G
Secret values stay out of the file: `password: !secret mail-demo` names a credential
(airut_core/secrets.py: /etc/airut/credentials/mail-demo, or handed over by systemd)
that only the daemon needing it unseals; `!env NAME` reads the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml

from airut_core import paths, schedule, schema, secrets
from airut_core.sandbox import CIDR, NETWORK_LOG_MAX_BYTES, workers
from airut_core.schema import EnvRef, Match, OneOf, Range, Secret, Size
from airut_core.secrets import Sealed, SecretRef

CLAUDE_CODE_VERSION = "2.1.332"
# Relative, and no ".." component: it names a directory inside the repository.
RELATIVE_PATH = re.compile(r"^(?!/)(?!(?:.*/)?\.\.(?:/|$))[^\0]+$")


class ConfigError(ValueError):
    pass


@dataclass
class ResourceLimits:
    timeout: Annotated[int, Range(min=10)] = 1800  # seconds; the unit's RuntimeMaxSec
    memory: Annotated[int, Size] = 4 << 30  # MemoryMax
    cpus: Annotated[float, Range(min=0.01)] = 2.0  # CPUQuota = cpus * 100%
    pids_limit: Annotated[int, Range(min=16)] = 1024  # TasksMax
    # The conversation's disk: workspace, session state, inbox, outbox, storage, the
    # agent's output and the container's own writes. A task that grows past it is
    # stopped (doc/security.md, "Disk").
    disk: Annotated[int, Size] = 10 << 30


@dataclass
class MaskedSecret:
    value: Annotated[str, Secret]
    scopes: list[str]  # host globs where the proxy puts the real value in
    headers: list[str] = field(default_factory=lambda: ["Authorization", "X-Api-Key"])
    allow_foreign_credentials: bool = False


@dataclass
class NetworkConfig:
    sandbox: bool = True  # false: no proxy, no allowlist (break-glass; every reply warns)


@dataclass
class ImapConfig:
    host: str
    username: str
    password: Annotated[str, Secret]
    port: int = 993
    security: Annotated[str, OneOf(("tls", "starttls", "none"))] = "tls"
    mailbox: str = "INBOX"
    poll_interval: Annotated[float, Range(min=1)] = 60.0  # a scan even when IDLE is quiet
    ca_file: str | None = None  # a CA to trust besides the system's (an in-house server)
    quarantine_folder: str = "airut-quarantine"  # where mail airut cannot handle is moved


@dataclass
class SmtpConfig:
    host: str
    port: int = 587
    security: Annotated[str, OneOf(("tls", "starttls", "none"))] = "starttls"
    username: str | None = None
    password: Annotated[str, Secret] | None = None
    ca_file: str | None = None  # a CA to trust besides the system's (an in-house server)


@dataclass
class EmailConfig:
    address: str  # the mailbox: From of replies; address+MODEL@ picks a model
    imap: ImapConfig
    smtp: SmtpConfig
    trusted_authserv_id: str  # the authserv-id your own mail server writes
    authorized_senders: list[str]  # exact addresses or *@domain
    max_attachment_bytes: Annotated[int, Size] = 25 << 20
    max_message_bytes: Annotated[int, Size] = 64 << 20  # larger mail is quarantined unread
    dashboard_url: str | None = None  # for the link in the acknowledgment
    acknowledge: bool = True  # tell the sender a new conversation has started
    retry_limit: Annotated[int, Range(min=1)] = 8  # SMTP attempts before quarantine
    retry_delay: Annotated[float, Range(min=0.1)] = 30.0  # first retry; doubles, max 1 h


SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,20}$")


@dataclass
class SlackRule:
    """One rule of slack.authorized: exactly one key (doc/slack-setup.md)."""

    workspace_members: bool | None = None  # full members of the app's workspace
    user_group: str | None = None  # a user group's handle, without @
    user_id: Annotated[str, Match(SLACK_USER, "Slack user id")] | None = None


@dataclass
class SlackConfig:
    bot_token: Annotated[str, Secret]  # xoxb-: the Web API
    app_token: Annotated[str, Secret]  # xapp-: Socket Mode
    authorized: list[SlackRule]  # ordered; the first rule that matches admits
    # Channel ids the app answers in (empty: any channel it is invited to; DMs always).
    allowed_channels: list[Annotated[str, Match(re.compile(r"^[CG][A-Z0-9]{2,20}$"),
                                                "Slack channel id")]] = field(default_factory=list)
    api_url: str = "https://slack.com/api/"  # the Web API (Enterprise Grid or a test double)
    file_hosts: list[str] = field(default_factory=lambda: ["files.slack.com"])
    max_file_bytes: Annotated[int, Size] = 100 << 20  # a file sent to the agent
    cache_ttl: Annotated[float, Range(min=0)] = 300.0  # users and groups, seconds
    retry_limit: Annotated[int, Range(min=1)] = 8  # attempts at a reply before quarantine
    retry_delay: Annotated[float, Range(min=0.1)] = 10.0  # first retry; doubles, max 1 h
    history_max: Annotated[int, Range(min=0, max=1000)] = 200  # earlier thread messages read


@dataclass
class Delivery:
    """Where a scheduled task's answer goes: a new mail, or a new Slack message."""

    channel: Annotated[str, OneOf(("email", "slack"))]
    to: str  # email: an address; slack: a channel id


@dataclass
class ScheduleConfig:
    """repos.<id>.schedules.<name>: a task that starts by itself (doc/schedules.md)."""

    deliver: Delivery
    cron: str | None = None  # five fields, translated into calendar lines
    on_calendar: str | None = None  # systemd's calendar syntax
    timezone: str | None = None  # IANA name; DST-aware (systemd computes the times)
    enable: bool = True
    catch_up: bool = False  # Persistent=: a run missed while the host was off runs at boot
    prompt: str | None = None
    trigger_command: str | None = None  # script mode: its output becomes the prompt
    trigger_timeout: Annotated[int, Range(min=1)] = 300
    output_limit: Annotated[int, Size, Range(min=1)] = 100 << 10
    model: str | None = None
    effort: Annotated[str, OneOf(("low", "medium", "high", "max"))] | None = None


@dataclass
class RepoConfig:
    repo_url: str
    model: str = "sonnet"
    effort: Annotated[str, OneOf(("low", "medium", "high", "max"))] | None = None
    resource_limits: ResourceLimits = field(default_factory=ResourceLimits)
    secrets: dict[str, Annotated[str, Secret]] = field(default_factory=dict)  # agent's env
    # The agent sees a surrogate of the same shape; only the proxy holds the value.
    masked_secrets: dict[str, MaskedSecret] = field(default_factory=dict)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    api_base_url: str | None = None  # this repository's model API, over agent.api_base_url
    email: EmailConfig | None = None  # the airut-email@<repo> channel
    slack: SlackConfig | None = None  # the airut-slack@<repo> channel
    schedules: dict[Annotated[str, Match(schedule.NAME, "schedule name (a-z, 0-9, _ -)")],
                    ScheduleConfig] = field(default_factory=dict)
    # Dockerfile and build context, read from the default branch of the repository.
    container_path: Annotated[str, Match(RELATIVE_PATH, "relative path inside the "
                                         "repository")] = ".airut/container"
    # Let the agent create user namespaces inside its container (rootless podman or
    # bubblewrap in a task). Off: nothing else needs them and they widen the kernel
    # surface the agent can reach.
    allow_user_namespaces: bool = False


@dataclass
class AgentConfig:
    """How the agent container is run (server-wide)."""

    claude_binary: str = f"/var/cache/airut/claude/{CLAUDE_CODE_VERSION}/claude"
    image: str = "localhost/airut-base:latest"  # for repositories without a Dockerfile
    # Where the agent sends model requests; unset means Anthropic's API. The
    # offline demo model on this host is http://host.containers.internal:8765.
    api_base_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment, every agent
    # Each conversation's container root is a host uid (and gid) of its own: ranges of
    # 65536 ids, uid_ranges of them, from host_uid_base on. Keep them out of the
    # /etc/subuid ranges of other users.
    host_uid_base: Annotated[int, Range(min=65536, max=4_000_000_000)] = 1_000_000_000
    uid_ranges: Annotated[int, Range(min=1, max=4096)] = 1024  # conversations at once
    image_max_age_hours: Annotated[float, Range(min=0)] = 24.0  # rebuild older images
    build_timeout: Annotated[int, Range(min=10)] = 1800  # seconds per image build


@dataclass
class ProxyConfig:
    """airut-proxy, the only way out of a task's network."""

    ca_cert: str = "/var/lib/airut-proxy/mitmproxy-ca-cert.pem"  # what agents trust
    policies: str = "/run/airut/policies"
    # Private, loopback or link-local networks the proxy may reach although they are
    # private (an in-house server); an IP-literal host must be in one of them too.
    allowed_private_networks: list[Annotated[str, CIDR]] = field(default_factory=list)
    network_log_max_bytes: Annotated[int, Size, Range(min=4096)] = NETWORK_LOG_MAX_BYTES
    # Worker processes (airut-proxy@<n>), each serving the task networks the firewall
    # sends it; 0: one per core. One task's burst loads one worker, not all.
    workers: Annotated[int, Range(min=0, max=64)] = 0


@dataclass
class ExecutionConfig:
    max_concurrent: Annotated[int, Range(min=1)] = 3
    retry_delay: Annotated[float, Range(min=0)] = 10.0  # before retrying a failed start
    stop_grace: Annotated[int, Range(min=1)] = 10  # SIGTERM to SIGKILL, seconds
    # A prepared task waits this long for the proxy and the firewall (a restart takes
    # seconds) before it is given up and its sender told why.
    sandbox_wait: Annotated[float, Range(min=0)] = 120.0
    reply_max_age_days: Annotated[float, Range(min=0.001)] = 7.0  # unclaimed local replies
    conversation_max_age_days: Annotated[float, Range(min=0.001)] = 7.0  # since last activity
    outbox_max_bytes: Annotated[int, Size] = 25 << 20  # files sent with one reply


@dataclass
class DashboardConfig:
    # Loopback by default: the dashboard has no login of its own (doc/dashboard.md puts
    # it behind a reverse proxy that authenticates).
    host: str = "127.0.0.1"
    port: Annotated[int, Range(min=1, max=65535)] = 5200
    threads: Annotated[int, Range(min=2, max=256)] = 8  # requests served at once


@dataclass
class PathsConfig:
    spool: str = str(paths.DEFAULT_SPOOL)
    state: str = str(paths.DEFAULT_STATE)


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    repos: dict[Annotated[str, schema.Match(paths.REPO_ID, "repository id")],
                RepoConfig] = field(default_factory=dict)
    source: str = field(default="", metadata={"internal": True})  # the file read

    def proxy_workers(self) -> int:
        """How many proxy workers run (airut_core.sandbox.workers)."""
        return workers(self.proxy.workers, self.execution.max_concurrent)

    def repo(self, repo_id: str) -> RepoConfig:
        try:
            return self.repos[repo_id]
        except KeyError:
            known = ", ".join(sorted(self.repos)) or "none"
            raise ConfigError(f"{self.source}: no repository {repo_id!r} is configured "
                              f"(configured: {known})") from None


class _Loader(yaml.SafeLoader):
    pass


def _env(loader: yaml.SafeLoader, node: yaml.Node) -> EnvRef:
    return EnvRef(loader.construct_scalar(node))


def _secret(loader: yaml.SafeLoader, node: yaml.Node) -> SecretRef:
    return SecretRef(loader.construct_scalar(node))


_Loader.add_constructor("!env", _env)
_Loader.add_constructor("!secret", _secret)

# Which secrets a process unseals, by the key that names them.
Unseal = Callable[[str], bool]


def email_secrets(repo_id: str) -> Unseal:
    """The mail passwords of one repository: its airut-email@ unit's only secrets."""
    return lambda key: key.startswith(f"repos.{repo_id}.email.")


def slack_secrets(repo_id: str) -> Unseal:
    """The Slack tokens of one repository: its airut-slack@ unit's only secrets."""
    return lambda key: key.startswith(f"repos.{repo_id}.slack.")


def task_secrets(key: str) -> bool:
    """What the runner hands to tasks (the agent's environment) and to the proxy
    (the real values behind masked secrets)."""
    return re.match(r"^repos\.[^.]+\.(secrets|masked_secrets)\.", key) is not None


def every_secret(key: str) -> bool:
    return True


def config_path(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("AIRUT_CONFIG") or paths.DEFAULT_CONFIG)


def load(path: str | Path | None = None, unseal: Unseal | None = None) -> Config:
    """Read and check the configuration, and read the secrets `unseal` picks;
    ConfigError says what and where."""
    path = config_path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror}") from e
    config = parse(text, str(path))
    if unseal:
        unseal_secrets(config, unseal)
    return config


def sealed(config: Config) -> Iterator[tuple[Any, Any, Sealed]]:
    """Every secret still sealed: (holder, attribute or key, the Sealed)."""
    stack: list[Any] = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            items = list(node.items())
        elif hasattr(node, "__dataclass_fields__"):
            items = [(name, getattr(node, name)) for name in node.__dataclass_fields__]
        else:
            continue
        for key, value in items:
            if isinstance(value, Sealed):
                yield node, key, value
            elif isinstance(value, dict) or hasattr(value, "__dataclass_fields__"):
                stack.append(value)


def unseal_secrets(config: Config, unseal: Unseal,
                   credentials_dir: Path = secrets.CREDENTIALS_DIR) -> None:
    """Replace the picked secrets by their values; every key whose secret cannot be
    read is named in one ConfigError."""
    errors = [f"{key}: secret {name} cannot be read: {why}"
              for name, keys, why in unseal_each(config, unseal, credentials_dir) if why
              for key in keys]
    if errors:
        raise ConfigError(f"{config.source}: " + f"\n{config.source}: ".join(errors))


def unseal_each(config: Config, unseal: Unseal,
                credentials_dir: Path = secrets.CREDENTIALS_DIR
                ) -> Iterator[tuple[str, list[str], str | None]]:
    """Each picked secret, read once however many keys name it and put in their place:
    (its name, the keys naming it, why it could not be read or None)."""
    uses: dict[str, list[tuple[Any, Any, Sealed]]] = {}
    for found in sealed(config):
        if unseal(found[2].key):
            uses.setdefault(found[2].name, []).append(found)
    for name, found in sorted(uses.items()):
        keys = sorted(secret.key for _, _, secret in found)
        try:
            value = secrets.read(name, credentials_dir)
        except secrets.Unreadable as e:
            yield name, keys, str(e)
            continue
        for holder, key, _ in found:
            if isinstance(holder, dict):
                holder[key] = value
            else:
                setattr(holder, key, value)
        yield name, keys, None


def secret_names(config: Config, unseal: Unseal) -> list[str]:
    """The names of the still sealed secrets that `unseal` picks (for the generator)."""
    return sorted({s.name for _, _, s in sealed(config) if unseal(s.key)})


def parse(text: str, source: str) -> Config:
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    try:
        config = schema.build(Config, data)
    except schema.SchemaError as e:
        raise ConfigError(f"{source}: {e}") from e
    config.source = source
    last = config.agent.host_uid_base + config.agent.uid_ranges * 65536 - 1
    if last > 0xFFFFFFFE:
        raise ConfigError(f"{source}: agent.uid_ranges: {config.agent.uid_ranges} ranges from "
                          f"agent.host_uid_base {config.agent.host_uid_base} end past the "
                          "largest host id (4294967294)")
    for repo_id, repo in config.repos.items():
        if repo.email and not repo.email.authorized_senders:
            raise ConfigError(f"{source}: repos.{repo_id}.email.authorized_senders: must name "
                              "at least one sender (nobody could use the mailbox)")
        if repo.slack:
            _check_slack(source, repo_id, repo.slack)
        for name, sched in repo.schedules.items():
            _check_schedule(f"{source}: repos.{repo_id}.schedules.{name}", repo, sched)
    return config


EMAIL_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


def _check_schedule(where: str, repo: RepoConfig, sched: ScheduleConfig) -> None:
    """What the schema cannot say: one of each pair, a delivery that has a channel."""
    if (sched.cron is None) == (sched.on_calendar is None):
        raise ConfigError(f"{where}: exactly one of cron and on_calendar")
    if (sched.prompt is None) == (sched.trigger_command is None):
        raise ConfigError(f"{where}: exactly one of prompt and trigger_command")
    if sched.trigger_command is not None and not sched.trigger_command.strip():
        raise ConfigError(f"{where}.trigger_command: empty")
    try:
        if sched.timezone:
            schedule.check_timezone(sched.timezone)
        if sched.cron is not None:
            schedule.from_cron(sched.cron, sched.timezone)
    except schedule.ScheduleError as e:
        raise ConfigError(f"{where}: {e}") from e
    to = sched.deliver.to
    if sched.deliver.channel == "email":
        if repo.email is None:
            raise ConfigError(f"{where}.deliver: channel email needs the repository's email "
                              "block (the answer goes out through its mailbox)")
        if not EMAIL_ADDRESS.match(to):
            raise ConfigError(f"{where}.deliver.to: not one mail address: {to!r}")
    else:
        if repo.slack is None:
            raise ConfigError(f"{where}.deliver: channel slack needs the repository's slack "
                              "block (the answer is posted by its app)")
        if not re.match(r"^[CGD][A-Z0-9]{2,20}$", to):
            raise ConfigError(f"{where}.deliver.to: not a Slack channel id (C…): {to!r}")


def _check_slack(source: str, repo_id: str, slack: SlackConfig) -> None:
    where = f"{source}: repos.{repo_id}.slack"
    if not slack.authorized:
        raise ConfigError(f"{where}.authorized: must name at least one rule (nobody could "
                          "use the app)")
    for i, rule in enumerate(slack.authorized):
        given = [k for k in ("workspace_members", "user_group", "user_id")
                 if getattr(rule, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"{where}.authorized[{i}]: a rule has exactly one of "
                              f"workspace_members, user_group, user_id (got {len(given)})")
        if rule.workspace_members is False:
            raise ConfigError(f"{where}.authorized[{i}]: workspace_members: false admits "
                              "nobody; leave the rule out")
    if not slack.api_url.endswith("/") or not slack.api_url.startswith(("https://", "http://")):
        raise ConfigError(f"{where}.api_url: an http(s) URL ending in / "
                          f"(got {slack.api_url!r})")
