"""The runner's side of the network sandbox: what a task may reach, its surrogate
credentials, its subnet, and handing its policy to airut-proxy.

The runner writes /run/airut/policies/<task>.json (group airut-proxy, 0640: it holds
real secret values) just before the task's unit starts and removes it when the task
ends. A sandboxed task starts only when the proxy runs and the firewall is loaded.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from airut_core import paths
from airut_core.config import ProxyConfig, RepoConfig
from airut_core.sandbox import (
    ALLOWLIST_FILE,
    DNS_UNIT,
    PROXY_GROUP,
    SUBNET_POOL,
    Allowlist,
    AllowlistError,
    Mask,
    PolicyRecord,
    parse_allowlist,
    subnet,
    worker_of,
    worker_unit,
)
from airut_core.spool import Stage
from airut_runner import surrogates
from airut_runner.mirror import Mirror

# The hooks of airut.nft: the redirect to the proxy, the drop of everything else a
# task sends to this host, and the drop of everything it would send elsewhere.
FIREWALL_HOOKS = ("prerouting", "input", "forward")
NO_ALLOWLIST = (
    f"the repository has no {ALLOWLIST_FILE} on its default branch, so the agent could "
    "reach nothing, not even the model API. Add one (doc/network-sandbox.md has an "
    "example), or turn the sandbox off for this repository (network.sandbox: false)")


class NotReady(RuntimeError):
    """The proxy or the firewall is not in place right now (restarting, most likely)."""


class SandboxError(ValueError):
    """The repository's sandbox settings cannot work: retrying will not help."""


class NetworkSandbox:
    def __init__(self, proxy: ProxyConfig, used_subnets: Callable[[], set[str]],
                 workers: int):
        self.proxy = proxy
        self.workers = workers
        self.policies = Stage(proxy.policies)
        self._used_subnets = used_subnets
        self._lock = threading.Lock()
        self._next = 0

    def allowlist(self, mirror: Mirror) -> Allowlist:
        """From the default branch of the mirror, never from a workspace."""
        text = mirror.show(ALLOWLIST_FILE)
        if text is None:
            raise SandboxError(NO_ALLOWLIST)
        try:
            return parse_allowlist(text, f"{ALLOWLIST_FILE} on the default branch")
        except AllowlistError as e:
            raise SandboxError(str(e)) from e

    @staticmethod
    def masks(repo: RepoConfig) -> list[Mask]:
        """Fresh surrogates for the repository's masked secrets."""
        return [Mask(env=env, surrogate=surrogates.surrogate(m.value), value=m.value,
                     scopes=m.scopes, headers=m.headers,
                     allow_foreign=m.allow_foreign_credentials)
                for env, m in repo.masked_secrets.items()]

    def allocate_subnet(self) -> str:
        """A /24 of the pool no task network uses, round robin (worker threads call it)."""
        with self._lock:
            used = self._used_subnets()
            size = 1 << (24 - SUBNET_POOL.prefixlen)
            for step in range(size):
                n = (self._next + step) % size
                if subnet(n) not in used:
                    self._next = n + 1
                    return subnet(n)
        raise RuntimeError(f"every task subnet in {SUBNET_POOL} is in use")

    def check_ready(self, state_of: Callable[[str], str | None], task_subnet: str) -> None:
        """The proxy worker the task's network is sent to, the DNS responder and the
        firewall must be up before a sandboxed task starts."""
        worker = worker_unit(worker_of(task_subnet, self.workers))
        for unit in (worker, DNS_UNIT):
            if state_of(unit) != "active":
                raise NotReady(f"the network proxy ({unit}) is not running, so the task "
                               "cannot start safely; the operator should check "
                               f"`systemctl status {unit}`")
        firewall = subprocess.run(["nft", "-j", "list", "table", "inet", "airut"],
                                  capture_output=True, text=True, timeout=10)
        problem = (firewall_problem(firewall.stdout) if firewall.returncode == 0
                   else "its table inet airut is not loaded")
        if problem:
            raise NotReady(f"the airut firewall is not in place ({problem}; "
                               "`systemctl restart airut-firewall.service` loads it), so "
                               "the task cannot start safely")
        if not Path(self.proxy.ca_cert).is_file():
            raise NotReady(f"the proxy's CA certificate is missing at "
                               f"{self.proxy.ca_cert} (proxy.ca_cert)")

    def write_policy(self, policy: PolicyRecord) -> None:
        """The policy, readable by the proxy's group only; its network.log, the proxy's.
        The operator's proxy settings travel in every policy."""
        policy.allowed_private_networks = list(self.proxy.allowed_private_networks)
        policy.network_log_max_bytes = self.proxy.network_log_max_bytes
        gid = grp.getgrnam(PROXY_GROUP).gr_gid
        log_file = Path(policy.network_log)
        log_file.touch(mode=0o640)
        os.chown(log_file, pwd.getpwnam(PROXY_GROUP).pw_uid, paths.daemon_gid() or gid)
        self.policies.ensure(mode=0o750)
        os.chown(self.policies.path, 0, gid)
        self.policies.put(policy.task_id, policy.to_dict(), gid=gid)

    def remove_policy(self, task: str) -> None:
        self.policies.remove(task)


def firewall_problem(listing: str) -> str | None:
    """What is missing from `nft -j list table inet airut`, or None."""
    try:
        items = json.loads(listing)["nftables"]
    except (ValueError, KeyError, TypeError):
        return "its table cannot be read"
    chains = {i["chain"]["name"]: i["chain"].get("hook") for i in items
              if isinstance(i, dict) and "chain" in i}
    rules = [i["rule"]["chain"] for i in items if isinstance(i, dict) and "rule" in i]
    for hook in FIREWALL_HOOKS:
        names = [name for name, h in chains.items() if h == hook]
        if not names:
            return f"its {hook} chain is missing"
        if not any(rules.count(name) for name in names):
            return f"its {hook} chain is empty"
    return None
