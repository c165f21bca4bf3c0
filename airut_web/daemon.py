"""airut-web: the dashboard, a bottle application under waitress (a threaded
production WSGI server; bottle's own server is for development only).

It reads what the daemons write and writes only stop requests into control/. Ready
for systemd once it listens; the watchdog is fed by asking the server itself for a
page, so a wedged server (every thread stuck) is restarted, not just a live process.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import logging
import signal
import sys
import threading
import time

import sdnotify
import waitress

from airut_core import config as config_mod
from airut_core import log
from airut_core.config import ConfigError
from airut_web.app import make_app, secure
from airut_web.state import State
from airut_web.systemd import Units

logger = logging.getLogger("airut.web")
HEARTBEAT = 10.0  # seconds between the watchdog's own requests (WatchdogSec=60)


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def heartbeat(host: str, port: int, notifier: sdnotify.SystemdNotifier,
              stop: threading.Event, status) -> None:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    while not stop.wait(HEARTBEAT):
        try:
            conn = http.client.HTTPConnection(target, port, timeout=HEARTBEAT)
            conn.request("GET", "/static/favicon.svg")
            ok = conn.getresponse().status == 200
            conn.close()
        except OSError as e:
            logger.warning("the dashboard does not answer itself: %s", e)
            continue
        if ok:
            notifier.notify(f"WATCHDOG=1\nSTATUS={status()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="airut-web", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="airut.yaml (default: $AIRUT_CONFIG or "
                        "/etc/airut/airut.yaml)")
    parser.add_argument("--host", help="address to listen on (default: dashboard.host)")
    parser.add_argument("--port", type=int, help="port (default: dashboard.port)")
    args = parser.parse_args(argv)
    log.setup("airut-web")
    notifier = sdnotify.SystemdNotifier()
    try:
        cfg = config_mod.load(args.config)  # no secret is unsealed: the page shows none
    except ConfigError as e:
        logger.error("%s", e)
        notifier.notify(f"STATUS=configuration error: {e}")
        sys.exit(78)
    host = args.host or cfg.dashboard.host
    port = args.port if args.port is not None else cfg.dashboard.port
    if not loopback(host):
        logger.warning("the dashboard listens on %s, not on a loopback address: it has no "
                       "login of its own; put it behind a reverse proxy that authenticates "
                       "(doc/dashboard.md)", host)
    state = State(cfg, Units())
    server = waitress.create_server(secure(make_app(state)), host=host, port=port,
                                    threads=cfg.dashboard.threads, ident="airut-web",
                                    clear_untrusted_proxy_headers=True)
    where = f"http://{host}:{server.effective_port}" if ":" not in host \
        else f"http://[{host}]:{server.effective_port}"
    stop = threading.Event()

    def status() -> str:
        return f"serving on {where}"

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        raise SystemExit(0)  # waitress's loop closes the server on it

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=heartbeat, args=(host, server.effective_port, notifier, stop,
                                             status), daemon=True, name="watchdog").start()
    logger.info("airut-web ready on %s", where)
    notifier.notify(f"READY=1\nSTATUS={status()}")
    started = time.monotonic()
    server.run()
    notifier.notify("STOPPING=1")
    logger.info("airut-web stopped after %.0f s", time.monotonic() - started)


if __name__ == "__main__":
    main()
