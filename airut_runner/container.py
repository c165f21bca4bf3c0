"""The `podman run` command line of one task.

The container sees its conversation's workspace, session state, inbox, outbox and
storage, plus the Claude Code binary read-only; nothing else of the host. The
prompt arrives on stdin and stream-json leaves on stdout (the unit wires both to
files). `--cgroups=split` keeps the container inside the task unit's cgroup, so
the unit's MemoryMax/CPUQuota/TasksMax apply to the agent itself; `--init` makes
a stop take milliseconds instead of the full stop timeout. `--pull=never`: a missing
image is an immediate, clear error, not minutes of retrying an unreachable registry.

Hardening: every capability dropped but the five package managers need, no new
privileges, and a user namespace mapping container root to an unprivileged host
uid range (agent.host_uid_base and the 65535 above it), so what the agent creates
in its workspace is not owned by host root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
USERNS_SIZE = 65536
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
    host_uid_base: int
    effort: str | None = None
    resume_session: str | None = None
    sandbox_gateway: str | None = None  # set: the task's DNS and proxy are there
    proxy_ca: str | None = None  # the proxy's CA certificate, the only one trusted
    hosts_file: str | None = None  # replaces the host's /etc/hosts podman would copy

    def argv(self) -> list[str]:
        cmd = [PODMAN, "run", "--rm", "--init", "--cgroups=split", "--interactive",
               "--log-driver=none", "--pull=never", f"--name={self.container_name}",
               f"--network={self.network}", "--workdir=/workspace",
               f"--env-file={self.env_file}",
               "--cap-drop=ALL", f"--cap-add={','.join(CAPABILITIES)}",
               "--security-opt=no-new-privileges",
               f"--uidmap=0:{self.host_uid_base}:{USERNS_SIZE}",
               f"--gidmap=0:{self.host_uid_base}:{USERNS_SIZE}",
               f"--entrypoint={CLAUDE_IN_CONTAINER}"]
        if self.sandbox_gateway:
            # Every name resolves to the gateway, where the proxy waits. No IPv6: the
            # host's link-local address must not be a way around the firewall.
            cmd += [f"--dns={self.sandbox_gateway}",
                    "--sysctl=net.ipv6.conf.all.disable_ipv6=1"]
        for sub, target in MOUNTS:
            cmd.append(f"--volume={self.conversation_dir / sub}:{target}:rw")
        cmd.append(f"--volume={self.claude_binary}:{CLAUDE_IN_CONTAINER}:ro")
        if self.hosts_file:
            cmd.append(f"--volume={self.hosts_file}:/etc/hosts:ro")
        if self.proxy_ca:
            cmd += [f"--volume={self.proxy_ca}:{CA_IN_CONTAINER}:ro",
                    f"--volume={self.proxy_ca}:{CA_BUNDLE_IN_CONTAINER}:ro"]
        cmd.append(self.image)
        if self.resume_session:
            cmd += ["--resume", self.resume_session]
        cmd += ["--model", self.model]
        if self.effort:
            cmd += ["--effort", self.effort]
        cmd += ["-p", "-", "--output-format", "stream-json", "--verbose",
                "--dangerously-skip-permissions"]
        return cmd


HOST_NAME = "host.containers.internal"


# Podman copies the host's /etc/hosts into containers: a task would learn the host's
# names and could resolve them around the sandbox's DNS. It gets only localhost.
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def host_url(url: str | None, gateway: str) -> str | None:
    """Podman puts host.containers.internal in /etc/hosts, but not every client reads
    that file (the Claude Code CLI resolves names itself): spell out the address."""
    if url and gateway:
        return url.replace(f"//{HOST_NAME}:", f"//{gateway}:").replace(
            f"//{HOST_NAME}/", f"//{gateway}/")
    return url


def env_file_text(secrets: dict[str, str], api_base_url: str | None,
                  extra: dict[str, str] | None = None, sandboxed: bool = False) -> str:
    """The container's environment as an --env-file: secrets stay out of unit properties.

    Server-wide agent.env first, then the repository's secrets (and the surrogates of
    its masked secrets), then the forced values.
    """
    env = {**(extra or {}), **secrets}
    if api_base_url:
        env["ANTHROPIC_BASE_URL"] = api_base_url
    if sandboxed:
        env.update(CA_ENV)
    env.update(AGENT_ENV)  # forced values win over repository settings
    for key, value in env.items():
        if "\n" in key or "\n" in value or "=" in key:
            raise ValueError(f"environment variable {key!r} cannot be passed to the container")
    return "".join(f"{k}={v}\n" for k, v in env.items())
