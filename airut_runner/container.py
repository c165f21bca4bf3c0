"""The `podman run` command line of one task.

The container sees its conversation's workspace, session state, inbox, outbox and
storage, plus the Claude Code binary read-only; nothing else of the host. The
prompt arrives on stdin and stream-json leaves on stdout (the unit wires both to
files). `--cgroups=split` keeps the container inside the task unit's cgroup, so
the unit's MemoryMax/CPUQuota/TasksMax apply to the agent itself; `--init` makes
a stop take milliseconds instead of the full stop timeout. `--pull=never`: a missing
image is an immediate, clear error, not minutes of retrying an unreachable registry.

Hardening: every capability dropped but the five package managers need, no new
privileges, a user namespace mapping container root to the conversation's own
unprivileged range of host ids (uids.py), so what the agent creates in its workspace
is not owned by host root and two conversations are two users; and a seccomp profile
that denies creating user namespaces inside the container (a repository may allow
them with allow_user_namespaces), since nothing a task does needs them and they open
kernel surface (mounts, more capabilities inside the new namespace).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from airut_core.spool import write_atomic
from airut_runner.uids import USERNS_SIZE

PODMAN = "/usr/bin/podman"
CLAUDE_IN_CONTAINER = "/opt/claude/claude"

# Forced in every agent container (design.md, "Claude Code in the container").
AGENT_ENV = {
    "IS_SANDBOX": "1",  # root inside the container's own namespaces
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_DISABLE_BACKGROUND_TASKS": "1",  # -p would exit before background jobs end
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CONFIG_DIR": "/root/.claude",  # keep all agent state in the mounted directory
}

CA_IN_CONTAINER = "/usr/local/share/ca-certificates/airut-proxy.crt"
CA_BUNDLE_IN_CONTAINER = "/etc/ssl/certs/ca-certificates.crt"
# All TLS goes through the proxy: its CA is the only one a task needs, for every client.
CA_ENV = {"NODE_EXTRA_CA_CERTS": CA_IN_CONTAINER, "SSL_CERT_FILE": CA_BUNDLE_IN_CONTAINER,
          "REQUESTS_CA_BUNDLE": CA_BUNDLE_IN_CONTAINER, "CURL_CA_BUNDLE": CA_BUNDLE_IN_CONTAINER,
          "GIT_SSL_CAINFO": CA_BUNDLE_IN_CONTAINER}
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID")

MOUNTS = (("workspace", "/workspace"), ("claude", "/root/.claude"), ("inbox", "/inbox"),
          ("outbox", "/outbox"), ("storage", "/storage"))


@dataclass
class AgentRun:
    container_name: str
    conversation_dir: Path
    image: str
    claude_binary: str
    network: str
    model: str
    env_file: Path
    uid_base: int
    effort: str | None = None
    resume_session: str | None = None
    sandbox_gateway: str | None = None  # set: the task's DNS and proxy are there
    proxy_ca: str | None = None  # the proxy's CA certificate, the only one trusted
    hosts_file: str | None = None  # replaces the host's /etc/hosts podman would copy
    seccomp_profile: str | None = None  # None: podman's default (user namespaces allowed)

    def argv(self) -> list[str]:
        cmd = [PODMAN, "run", "--rm", "--init", "--cgroups=split", "--interactive",
               "--log-driver=none", "--pull=never", f"--name={self.container_name}",
               f"--label=airut.task={self.container_name.removeprefix('airut-')}",
               f"--network={self.network}", "--workdir=/workspace",
               f"--env-file={self.env_file}",
               f"--uidmap=0:{self.uid_base}:{USERNS_SIZE}",
               f"--gidmap=0:{self.uid_base}:{USERNS_SIZE}",
               f"--entrypoint={CLAUDE_IN_CONTAINER}"]
        cmd += confinement(self.seccomp_profile, self.sandbox_gateway, self.hosts_file,
                           self.proxy_ca)
        for sub, target in MOUNTS:
            cmd.append(f"--volume={self.conversation_dir / sub}:{target}:rw")
        cmd.append(f"--volume={self.claude_binary}:{CLAUDE_IN_CONTAINER}:ro")
        cmd.append(self.image)
        if self.resume_session:
            cmd += ["--resume", self.resume_session]
        cmd += ["--model", self.model]
        if self.effort:
            cmd += ["--effort", self.effort]
        cmd += ["-p", "-", "--output-format", "stream-json", "--verbose",
                "--dangerously-skip-permissions"]
        return cmd


# A command runs through sh's exec: one that is not there exits 127 (126: not
# executable) as in a shell, not 1 with a message of podman's init.
EXEC = ["/bin/sh", "-c", 'exec "$@"', "sh"]


@dataclass
class CommandRun:
    """A command in the sandbox (`airut sandbox run`, a schedule's trigger_command): a
    task's confinement, its workspace at /workspace, no Claude Code mounts, and the
    command as the entrypoint (the image's own entrypoint and CMD do not run; the
    image needs /bin/sh)."""

    container_name: str
    command_id: str
    image: str
    command: list[str]
    network: str
    env_file: Path
    workspace: Path
    uid_map: list[str]  # podman --uidmap values: container root first
    gid_map: list[str]
    sandbox_gateway: str | None = None
    proxy_ca: str | None = None
    hosts_file: str | None = None
    seccomp_profile: str | None = None

    def argv(self) -> list[str]:
        cmd = [PODMAN, "run", "--rm", "--init", "--cgroups=split", "--log-driver=none",
               "--pull=never", f"--name={self.container_name}",
               f"--label=airut.command={self.command_id}", f"--network={self.network}",
               "--workdir=/workspace", f"--env-file={self.env_file}",
               *[f"--uidmap={m}" for m in self.uid_map],
               *[f"--gidmap={m}" for m in self.gid_map],
               f"--entrypoint={json.dumps([*EXEC, *self.command])}"]
        cmd += confinement(self.seccomp_profile, self.sandbox_gateway, self.hosts_file,
                           self.proxy_ca)
        cmd += [f"--volume={self.workspace}:/workspace:rw", self.image]
        return cmd


def confinement(seccomp_profile: str | None, sandbox_gateway: str | None,
                hosts_file: str | None, proxy_ca: str | None) -> list[str]:
    """What confines every task's and command's container beyond its user namespace."""
    cmd = ["--cap-drop=ALL", f"--cap-add={','.join(CAPABILITIES)}",
           "--security-opt=no-new-privileges"]
    if seccomp_profile:
        cmd.append(f"--security-opt=seccomp={seccomp_profile}")
    if sandbox_gateway:
        # Every name resolves to the gateway, where the proxy waits. No IPv6: the
        # host's link-local address must not be a way around the firewall.
        cmd += [f"--dns={sandbox_gateway}", "--sysctl=net.ipv6.conf.all.disable_ipv6=1"]
    if hosts_file:
        cmd.append(f"--volume={hosts_file}:/etc/hosts:ro")
    if proxy_ca:
        cmd += [f"--volume={proxy_ca}:{CA_IN_CONTAINER}:ro",
                f"--volume={proxy_ca}:{CA_BUNDLE_IN_CONTAINER}:ro"]
    return cmd


HOST_NAME = "host.containers.internal"


# Podman copies the host's /etc/hosts into containers: a task would learn the host's
# names and could resolve them around the sandbox's DNS. It gets only localhost.
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def hosts_file(state_dir: Path) -> Path:
    return Path(state_dir) / "container-hosts"


def seccomp_file(state_dir: Path) -> Path:
    return Path(state_dir) / "seccomp-no-userns.json"


PODMAN_SECCOMP = Path("/usr/share/containers/seccomp.json")
CLONE_NEWUSER = 0x10000000
NO_USERNS = ("clone", "clone3", "unshare")


def write_container_files(state_dir: Path, default_profile: Path = PODMAN_SECCOMP) -> None:
    """What every task container is given: its /etc/hosts and the seccomp profile.

    The profile is podman's own default with one change: creating a user namespace is
    refused (EPERM) in clone and unshare, and clone3 answers ENOSYS (its flags are in
    memory seccomp cannot read), so C libraries fall back to clone."""
    write_atomic(hosts_file(state_dir), HOSTS.encode(), mode=0o644)
    write_atomic(seccomp_file(state_dir), json.dumps(no_userns_profile(
        json.loads(default_profile.read_text())), indent=1).encode(), mode=0o644)


def no_userns_profile(profile: dict) -> dict:
    profile = copy.deepcopy(profile)
    for rule in profile["syscalls"]:
        if rule.get("action") == "SCMP_ACT_ALLOW" and not rule.get("args"):
            rule["names"] = [n for n in rule["names"] if n not in NO_USERNS]
    for name in ("clone", "unshare"):
        profile["syscalls"] += [
            {"names": [name], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": CLONE_NEWUSER, "valueTwo": 0,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER,
                       "op": "SCMP_CMP_MASKED_EQ"}]}]
    profile["syscalls"].append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                                "errnoRet": 38})
    return profile


def host_url(url: str | None, gateway: str) -> str | None:
    """Podman puts host.containers.internal in /etc/hosts, but not every client reads
    that file (the Claude Code CLI resolves names itself): spell out the address."""
    if url and gateway:
        return url.replace(f"//{HOST_NAME}:", f"//{gateway}:").replace(
            f"//{HOST_NAME}/", f"//{gateway}/")
    return url


def env_file_text(secrets: dict[str, str], api_base_url: str | None,
                  extra: dict[str, str] | None = None, sandboxed: bool = False,
                  agent: bool = True) -> str:
    """The container's environment as an --env-file: secrets stay out of unit properties.

    Server-wide agent.env first, then the repository's secrets (and the surrogates of
    its masked secrets), then the forced values.
    """
    env = {**(extra or {}), **secrets}
    if api_base_url:
        env["ANTHROPIC_BASE_URL"] = api_base_url
    if sandboxed:
        env.update(CA_ENV)
    if agent:
        env.update(AGENT_ENV)  # forced values win over repository settings
    for key, value in env.items():
        if "\n" in key or "\n" in value or "=" in key:
            raise ValueError(f"environment variable {key!r} cannot be passed to the container")
    return "".join(f"{k}={v}\n" for k, v in env.items())
