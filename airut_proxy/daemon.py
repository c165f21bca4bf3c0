"""airut-proxy: the only way out of a task's network.

One process serves every task: mitmproxy with the Sandbox addon on PROXY_PORT and
the DNS responder on DNS_PORT, both on all addresses; the firewall (airut.nft)
redirects ports 80, 443 and 53 from task networks here and drops everything else
they send to this host. Policies come from the runner through /run/airut/policies.
The proxy reads no configuration file: the operator's proxy settings travel in every
policy, it holds no secret but those in the policies of running tasks, and it runs as
its own user.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

import sdnotify
from mitmproxy import options
from mitmproxy.tools.dump import DumpMaster

from airut_core import log
from airut_core.sandbox import DEFAULT_POLICIES, DNS_PORT, PROXY_PORT
from airut_proxy import addresses, dns
from airut_proxy.addon import NetworkLog, Sandbox
from airut_proxy.policies import PolicyStore

logger = logging.getLogger("airut.proxy")


class Lifecycle:
    """Tells systemd when the proxy listens, and keeps the watchdog fed."""

    def __init__(self, store: PolicyStore, ports: tuple[int, int]):
        self.store = store
        self.ports = ports
        self.notifier = sdnotify.SystemdNotifier()

    def running(self) -> None:
        self.notifier.notify(f"READY=1\nSTATUS={self.status()}")
        asyncio.get_running_loop().create_task(self._heartbeat())
        logger.info("airut-proxy ready: HTTP(S) on port %d, DNS on port %d", *self.ports)

    def status(self) -> str:
        return f"serving {len(self.store)} task network(s)"

    async def _heartbeat(self) -> None:
        while True:
            self.notifier.notify(f"WATCHDOG=1\nSTATUS={self.status()}")
            await asyncio.sleep(5)


def build_options(confdir: Path, upstream_ca: str | None, port: int) -> options.Options:
    opts = options.Options(confdir=str(confdir))
    # Options of mitmproxy's own addons exist once the addons load: defer them.
    updates = {"listen_host": "0.0.0.0", "listen_port": port, "mode": ["regular"],
               "connection_strategy": "lazy", "flow_detail": 0, "termlog_verbosity": "warn"}
    if upstream_ca:
        updates["ssl_verify_upstream_trusted_ca"] = upstream_ca
    opts.update_defer(**updates)
    return opts


# The unit's IPAddressAllow= lets the proxy reach this local stub resolver only.
STUB_RESOLVER = "127.0.0.53"


def private_resolvers(resolv_conf: str) -> list[str]:
    """Name servers the unit's IPAddressDeny= would cut off (on cgroup v2)."""
    found = []
    for line in resolv_conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and parts[1] != STUB_RESOLVER:
            ip = addresses.literal(parts[1])
            if ip is not None and addresses.kind(ip):
                found.append(parts[1])
    return found


async def run(args: argparse.Namespace) -> None:
    try:
        for server in private_resolvers(Path("/etc/resolv.conf").read_text()):
            logger.warning("the name server %s has a private address: on cgroup v2 this "
                           "unit's IPAddressDeny= keeps the proxy from it (every request "
                           "would fail to resolve) unless a drop-in adds IPAddressAllow=%s",
                           server, server)
    except OSError:
        pass
    network_log = NetworkLog()
    store = PolicyStore(args.policies, on_load=lambda policies: network_log.keep_only(
        {p.network_log for p in policies}))
    store.watch()
    dns.serve(store, args.dns_port, lambda policy, what: network_log.write(
        policy, "BLOCKED", what))
    master = DumpMaster(build_options(args.confdir, args.upstream_ca, args.port),
                        with_termlog=False, with_dumper=False)
    master.addons.add(Sandbox(store, network_log), Lifecycle(store, (args.port, args.dns_port)))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="airut-proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--confdir", type=Path,
                        default=Path(os.environ.get("STATE_DIRECTORY", "/var/lib/airut-proxy")),
                        help="mitmproxy's directory: its CA is made here on first start")
    parser.add_argument("--upstream-ca", help="also trust this CA for upstream servers")
    parser.add_argument("--port", type=int, default=PROXY_PORT)
    parser.add_argument("--dns-port", type=int, default=DNS_PORT)
    args = parser.parse_args(argv)
    log.setup("airut-proxy")
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)  # no line per connection
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
