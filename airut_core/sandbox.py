"""The network sandbox's contract: the allowlist format and the per-task policy.

The runner reads a repository's `.airut/network-allowlist.yaml` from its default
branch, and writes one policy per running task into /run/airut/policies (whole file,
then rename); airut-proxy reads them. A policy says which network the task is on,
what it may reach, and which surrogate credentials to swap for real ones. No policy
for a client: no traffic.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar

import yaml

from airut_core import schema
from airut_core.records import Record, TaskId
from airut_core.schema import SchemaError

ALLOWLIST_FILE = ".airut/network-allowlist.yaml"
DEFAULT_POLICIES = Path("/run/airut/policies")
# Every task network is a /24 in this range; the firewall (airut.nft) knows it too.
SUBNET_POOL = ipaddress.ip_network("10.199.0.0/16")
PROXY_PORT = 29080  # 80 and 443 from task networks go to a worker: PROXY_PORT + its number
DNS_PORT = 29053  # 53 (udp, tcp) from task networks is redirected here
MAX_WORKERS = 64
DNS_UNIT = "airut-proxy-dns.service"
PROXY_GROUP = "airut-proxy"
NETWORK_LOG_MAX_BYTES = 10 << 20  # per conversation; doc/network-sandbox.md says why


@dataclass(frozen=True)
class Cidr:
    """A network like 192.0.2.0/24 (or one address), kept in its canonical form."""

    def check(self, value: str, path: str) -> str:
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise SchemaError(path, f"not a network like 192.0.2.0/24: {value!r}") from None


CIDR = Cidr()


class AllowlistError(ValueError):
    pass


@dataclass
class UrlPrefix:
    host: str
    path: str = ""  # glob; empty means any path
    methods: list[str] = field(default_factory=list)  # empty means any method


@dataclass
class Allowlist:
    domains: list[str] = field(default_factory=list)  # host globs: any path, any method
    url_prefixes: list[UrlPrefix] = field(default_factory=list)


def parse_allowlist(text: str, source: str) -> Allowlist:
    """airut's format, read as it is: `domains:` and `url_prefixes:`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise AllowlistError(f"{source}: not valid YAML: {e}") from e
    try:
        allowlist = schema.build(Allowlist, data if data is not None else {})
    except SchemaError as e:
        raise AllowlistError(f"{source}: {e}") from e
    for i, prefix in enumerate(allowlist.url_prefixes):
        prefix.methods = [m.upper() for m in prefix.methods]
        if not prefix.host:
            raise AllowlistError(f"{source}: url_prefixes[{i}].host: must not be empty")
    return allowlist


@dataclass
class Mask:
    """A masked secret: the container holds `surrogate`, the proxy sends `value`."""

    env: str
    surrogate: str
    value: str
    scopes: list[str]  # host globs where the swap happens
    headers: list[str]  # header name globs where it happens
    allow_foreign: bool = False  # keep other credentials in those headers on scoped hosts


@dataclass
class PolicyRecord(Record):
    KIND: ClassVar[str] = "policy"
    task_id: TaskId
    conversation_id: str
    repo: str
    subnet: Annotated[str, schema.Match(re.compile(r"^10\.199\.\d{1,3}\.0/24$"),
                                        "task subnet")]
    network_log: str
    allowlist: Allowlist = field(default_factory=Allowlist)
    masks: list[Mask] = field(default_factory=list)
    # From the operator's proxy settings: private networks the proxy may still reach
    # (and IP-literal hosts in them), and the cap on the conversation's network.log.
    allowed_private_networks: list[Annotated[str, CIDR]] = field(default_factory=list)
    network_log_max_bytes: Annotated[int, schema.Range(min=4096)] = NETWORK_LOG_MAX_BYTES

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))


def subnet(n: int) -> str:
    return f"{SUBNET_POOL.network_address + (n << 8)}/24"


# -- the proxy's workers: task network k is served by worker k mod N ---------------------


def workers(configured: int, max_tasks: int) -> int:
    """How many proxy workers: proxy.workers, or (0) one per core but no more than
    tasks may run at once (execution.max_concurrent): a worker beyond that would only
    hold ~80 MiB."""
    default = min(os.cpu_count() or 1, max_tasks)
    return max(1, min(configured or default, MAX_WORKERS))


def worker_of(task_subnet: str, count: int) -> int:
    """The worker the firewall sends a task network's connections to (airut.nft's map):
    subnets are handed out round robin, so tasks spread evenly over the workers."""
    index = (int(ipaddress.ip_network(task_subnet).network_address)
             - int(SUBNET_POOL.network_address)) >> 8
    return index % count


def worker_unit(worker: int) -> str:
    return f"airut-proxy@{worker}.service"


def worker_port(worker: int) -> int:
    return PROXY_PORT + worker
