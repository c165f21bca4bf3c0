"""airut-proxy: the only way out of a task's network.

Worker processes (airut-proxy@<n>.service, `--worker N`) each run mitmproxy with the
Sandbox addon on PROXY_PORT + N; the DNS responder is a process of its own
(airut-proxy-dns.service, `--dns-only`) on DNS_PORT; all listen on all addresses. The
firewall (airut.nft, loaded by `--firewall WORKERS`) sends ports 80 and 443 of task
network k to worker k mod WORKERS and port 53 to the responder, and drops everything
else tasks send to this host: one task's burst loads one worker, and a worker that
dies takes its own tasks' connections only. Every process loads every policy from
the runner (/run/airut/policies). The proxy reads no configuration file: the
operator's proxy settings travel in every policy, it holds no secret but those in
the policies of running tasks, and it runs as its own user. Without --worker or
--dns-only one process does both (development, benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import threading
from pathlib import Path

import sdnotify

from airut_core import log
from airut_core.sandbox import DEFAULT_POLICIES, DNS_PORT, MAX_WORKERS, worker_port
from airut_proxy import addresses, dns
from airut_proxy.netlog import NetworkLog
from airut_proxy.policies import PolicyStore

logger = logging.getLogger("airut.proxy")


class Lifecycle:
    """Tells systemd when the proxy listens, and keeps the watchdog fed."""

    def __init__(self, store: PolicyStore, serving: str):
        self.store = store
        self.serving = serving
        self.notifier = sdnotify.SystemdNotifier()

    def running(self) -> None:
        self.notifier.notify(f"READY=1\nSTATUS={self.status()}")
        asyncio.get_running_loop().create_task(self._heartbeat())
        logger.info("airut-proxy ready: %s", self.serving)

    def status(self) -> str:
        return f"serving {len(self.store)} task network(s)"

    async def _heartbeat(self) -> None:
        while True:
            self.notifier.notify(f"WATCHDOG=1\nSTATUS={self.status()}")
            await asyncio.sleep(5)


def build_options(confdir: Path, upstream_ca: str | None, port: int):
    from mitmproxy import options

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


def make_ca(confdir: Path) -> None:
    """mitmproxy's CA, made once: workers starting together would each make their own
    and all but one would sign with a CA the tasks do not trust."""
    from mitmproxy.certs import CertStore

    confdir.mkdir(parents=True, exist_ok=True)
    with open(confdir / "ca.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        CertStore.from_store(confdir, "mitmproxy", 2048)


def warn_private_resolvers() -> None:
    try:
        for server in private_resolvers(Path("/etc/resolv.conf").read_text()):
            logger.warning("the name server %s has a private address: on cgroup v2 this "
                           "unit's IPAddressDeny= keeps the proxy from it (every request "
                           "would fail to resolve) unless a drop-in adds IPAddressAllow=%s",
                           server, server)
    except OSError:
        pass


def policies(args: argparse.Namespace, network_log: NetworkLog) -> PolicyStore:
    store = PolicyStore(args.policies, on_load=lambda found: network_log.keep_only(
        {p.network_log for p in found}))
    store.watch()
    return store


def serve_dns(store: PolicyStore, network_log: NetworkLog, port: int) -> None:
    dns.serve(store, port, lambda policy, what: network_log.write(policy, "BLOCKED", what))


async def run(args: argparse.Namespace) -> None:
    """HTTP(S) on the worker's port (and DNS too without --worker)."""
    from mitmproxy.tools.dump import DumpMaster

    from airut_proxy.addon import Sandbox

    warn_private_resolvers()
    network_log = NetworkLog()
    store = policies(args, network_log)
    port = worker_port(args.worker) if args.worker is not None else args.port
    serving = f"HTTP(S) on port {port}"
    if args.worker is None:
        serve_dns(store, network_log, args.dns_port)
        serving += f", DNS on port {args.dns_port}"
    make_ca(args.confdir)
    master = DumpMaster(build_options(args.confdir, args.upstream_ca, port),
                        with_termlog=False, with_dumper=False)
    master.addons.add(Sandbox(store, network_log), Lifecycle(store, serving))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()


def run_dns(args: argparse.Namespace) -> None:
    """The responder alone: every new connection of every task asks it first."""
    network_log = NetworkLog()
    store = policies(args, network_log)
    serve_dns(store, network_log, args.dns_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    notifier = sdnotify.SystemdNotifier()
    status = lambda: f"STATUS=answering {len(store)} task network(s)"  # noqa: E731
    notifier.notify(f"READY=1\n{status()}")
    logger.info("airut-proxy DNS ready on port %d", args.dns_port)
    while not stop.wait(5):
        notifier.notify(f"WATCHDOG=1\n{status()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="airut-proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--confdir", type=Path,
                        default=Path(os.environ.get("STATE_DIRECTORY", "/var/lib/airut-proxy")),
                        help="mitmproxy's directory: its CA is made here on first start")
    parser.add_argument("--upstream-ca", help="also trust this CA for upstream servers")
    parser.add_argument("--port", type=int, default=worker_port(0))
    parser.add_argument("--dns-port", type=int, default=DNS_PORT)
    role = parser.add_mutually_exclusive_group()
    role.add_argument("--worker", type=int, choices=range(MAX_WORKERS), metavar="N",
                      help=f"HTTP(S) only, on port {worker_port(0)} + N (airut-proxy@N)")
    role.add_argument("--dns-only", action="store_true", help="the DNS responder only")
    role.add_argument("--firewall", type=int, metavar="WORKERS",
                      help="load airut's nftables ruleset for this many workers, and exit")
    args = parser.parse_args(argv)
    if args.firewall is not None:
        from airut_proxy import firewall

        raise SystemExit(firewall.main(args.firewall))
    log.setup("airut-proxy-dns" if args.dns_only else "airut-proxy")
    if args.dns_only:
        run_dns(args)
        return
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)  # no line per connection
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
