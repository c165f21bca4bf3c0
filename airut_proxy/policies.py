"""The policies of running tasks, as airut-runner writes them into /run/airut/policies.

A watcher thread reloads the directory when inotify rings; a lookup that finds no
policy for a client rescans once before saying no (the scan is the truth, the
doorbell only a hint). Clients are told apart by their address: every task has its
own /24 network (the address to /24 step is cached: it was a share of every request).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from airut_core.sandbox import PolicyRecord
from airut_core.spool import Doorbell, RecordError, Stage

logger = logging.getLogger("airut.proxy.policies")


class PolicyStore:
    def __init__(self, directory: Path | str,
                 on_load: Callable[[list[PolicyRecord]], None] | None = None):
        self.stage = Stage(directory)
        self._by_subnet: dict[str, PolicyRecord] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.on_load = on_load  # told the policies after every load

    def __len__(self) -> int:
        return len(self._by_subnet)

    def load(self) -> None:
        policies = {}
        for name in self.stage.names():
            try:
                policy = PolicyRecord.from_dict(self.stage.read(name), f"policy {name}")
            except FileNotFoundError:
                continue
            except (RecordError, OSError) as e:
                logger.error("ignoring unreadable policy %s: %s", name, e)
                continue
            policies[policy.subnet] = policy
        with self._lock:
            self._by_subnet = policies
        if self.on_load is not None:
            self.on_load(list(policies.values()))

    def lookup(self, address: str) -> PolicyRecord | None:
        key = _subnet_of(address)
        if key is None:
            return None
        policy = self._by_subnet.get(key)
        if policy is None:
            self.load()
            policy = self._by_subnet.get(key)
        return policy

    def watch(self) -> threading.Thread:
        self.load()
        thread = threading.Thread(target=self._watch, name="policies", daemon=True)
        thread.start()
        return thread

    def _watch(self) -> None:
        bell = Doorbell([self.stage.path], deletions=True)
        while not self._stop.is_set():
            if bell.wait(5.0):
                self.load()

    def stop(self) -> None:
        self._stop.set()


@functools.lru_cache(maxsize=4096)
def _subnet_of(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if not isinstance(ip, ipaddress.IPv4Address):
        return None
    return str(ipaddress.ip_network(f"{ip}/24", strict=False))
