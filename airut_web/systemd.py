"""airut's units as systemd has them, over D-Bus (pystemd): read-only calls any user
may make on the system bus. One connection, one caller at a time (sd-bus is not
thread-safe), answers kept for a second (every live page asks)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

logger = logging.getLogger("airut.web")

DESTINATION = b"org.freedesktop.systemd1"
SERVICE_IF = b"org.freedesktop.systemd1.Service"
DAEMON_PATTERNS = [b"airut.target", b"airut-*.service", b"airut-*.timer"]
TRANSIENT = ("airut-task-", "airut-build-", "airut-sandbox-")  # per task, not daemons
TTL = 1.0


@dataclass
class UnitState:
    name: str
    active: str  # ActiveState
    sub: str
    result: str = ""
    restarts: int = 0
    status: str = ""  # STATUS= of a notify daemon

    @property
    def failed(self) -> bool:
        return self.active == "failed"


class Units:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bus = None
        self._cache: dict[str, tuple[float, object]] = {}
        self.error: str | None = None  # why systemd could not be asked, last time

    def daemons(self) -> list[UnitState]:
        """airut's own units (not the transient ones of tasks and builds)."""
        return self._cached("daemons", self._daemons, [])

    def builds(self) -> set[str]:
        """Image builds running now, by unit name (airut-build-<tree>.service)."""
        return self._cached("builds", lambda: {u.name for u in self._list(
            [b"airut-build-*.service"], details=False) if u.active in ("active",
                                                                       "activating")}, set())

    def _cached(self, key: str, make, empty):
        with self._lock:
            hit = self._cache.get(key)
            if hit and time.monotonic() - hit[0] < TTL:
                return hit[1]
            try:
                value = make()
            except Exception:  # the bus went away (systemd re-executed): once more
                self._close()
                try:
                    value = make()
                except Exception as e:
                    if self.error is None:
                        logger.error("cannot ask systemd over D-Bus: %s", e)
                    self.error = str(e) or type(e).__name__
                    self._close()
                    value = empty
                else:
                    self.error = None
            else:
                self.error = None
            self._cache[key] = (time.monotonic(), value)
            return value

    def _daemons(self) -> list[UnitState]:
        return [u for u in self._list(DAEMON_PATTERNS, details=True)
                if not u.name.startswith(TRANSIENT)]

    def _list(self, patterns: list[bytes], details: bool) -> list[UnitState]:
        bus, manager = self._connect()
        found = []
        for u in manager.Manager.ListUnitsByPatterns([], patterns):
            name, load_state = u[0].decode(), u[2].decode()
            if load_state != "loaded":
                continue
            state = UnitState(name, u[3].decode(), u[4].decode())
            if details:
                self._details(bus, u[6], state)
            found.append(state)
        return sorted(found, key=lambda s: s.name)

    def _details(self, bus, path: bytes, state: UnitState) -> None:
        if state.name.endswith(".service"):
            state.result = bus.get_property(DESTINATION, path, SERVICE_IF, b"Result",
                                            b"s").decode()
            state.restarts = bus.get_property(DESTINATION, path, SERVICE_IF, b"NRestarts",
                                              b"u")
            state.status = bus.get_property(DESTINATION, path, SERVICE_IF, b"StatusText",
                                            b"s").decode(errors="replace")

    def _connect(self):
        """The bus and systemd's manager on it, introspected once per connection."""
        if self._bus is None:
            from pystemd.dbuslib import DBus
            from pystemd.systemd1 import Manager

            bus = DBus()
            bus.open()
            manager = Manager(bus=bus)
            manager.load()
            self._bus = (bus, manager)
        return self._bus

    def _close(self) -> None:
        if self._bus is not None:
            try:
                self._bus[0].close()
            finally:
                self._bus = None


