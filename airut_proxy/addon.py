"""The mitmproxy addon: every request from a task network is checked against its
task's policy, its surrogate credentials are swapped, and the decision is logged.

Tasks reach the proxy without knowing it: their DNS answers every name with their
gateway, and the firewall redirects ports 80 and 443 there to the proxy, which reads
the target from the TLS SNI or the Host header. So:
- CONNECT is refused (nothing legitimate here speaks it);
- the SNI, the Host header and the request's host must agree, and the port must be
  the scheme's own (443 or 80): the client reached us on one of those;
- requests are decided on their headers, before any body is read or any upstream
  connection is made (connection_strategy=lazy);
- anything that is not HTTP (raw TCP, TLS without HTTP) is cut.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from mitmproxy import http, tcp

from airut_core import log
from airut_core.sandbox import ALLOWLIST_FILE, PolicyRecord
from airut_proxy import rules
from airut_proxy.policies import PolicyStore

logger = logging.getLogger("airut.proxy")

DEFAULT_PORT = {"https": 443, "http": 80}
HINT = (f"This request is not on the repository's network allowlist. The allowlist is "
        f"{ALLOWLIST_FILE} on the repository's default branch; a change takes effect "
        "once it is reviewed and merged there.")


class NetworkLog:
    """network.log in the task's conversation; BLOCKED and STRIPPED also to the journal."""

    def write(self, policy: PolicyRecord | None, verdict: str, detail: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = f"{stamp} {verdict} {detail}"
        if policy is not None:
            try:
                with open(policy.network_log, "a") as f:
                    f.write(line + "\n")
            except OSError as e:
                logger.error("cannot write %s: %s", policy.network_log, e)
        if verdict != "ALLOWED":
            task_log = log.for_task(logger, policy.task_id if policy else None,
                                    policy.conversation_id if policy else None,
                                    policy.repo if policy else None)
            task_log.warning("%s %s", verdict, detail)


class Sandbox:
    def __init__(self, store: PolicyStore, network_log: NetworkLog | None = None):
        self.store = store
        self.log = network_log or NetworkLog()

    # -- hooks ---------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        policy = self.store.lookup(flow.client_conn.peername[0])
        self._refuse(flow, policy, "connect", "CONNECT is not allowed: connect to the host "
                                              "directly (https://host/...)")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        policy = self.store.lookup(flow.client_conn.peername[0])
        if policy is None:
            self._refuse(flow, None, "no_policy", "this network has no running task")
            return
        problem = self._target_problem(flow)
        if problem:
            self._refuse(flow, policy, "target", problem)
            return
        request = flow.request
        request.port = DEFAULT_PORT[request.scheme]
        decision = rules.decide(policy.allowlist, request.method, request.host, request.path)
        if not decision.allowed:
            self._refuse(flow, policy, decision.reason, HINT)
            return
        headers, changes = rules.apply_masks(policy.masks, request.host,
                                             list(request.headers.items(multi=True)))
        if changes:
            request.headers.clear()
            for name, value in headers:
                request.headers.add(name, value)
            for change in changes:
                if change.action == "stripped":
                    self.log.write(policy, "STRIPPED", f"{change.name} {request.method} "
                                                       f"{request.host} {_path(request)}")
        flow.metadata["airut_policy"] = policy
        flow.metadata["airut_start"] = time.monotonic()

    def response(self, flow: http.HTTPFlow) -> None:
        policy = flow.metadata.get("airut_policy")
        if policy is not None:
            self.log.write(policy, "ALLOWED", f"{flow.request.method} {flow.request.host} "
                                              f"{_path(flow.request)} -> "
                                              f"{flow.response.status_code}")

    def error(self, flow: http.HTTPFlow) -> None:
        policy = flow.metadata.get("airut_policy")
        if policy is not None:
            self.log.write(policy, "ERROR", f"{flow.request.method} {flow.request.host} "
                                            f"{_path(flow.request)}: {flow.error}")

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        policy = self.store.lookup(flow.client_conn.peername[0])
        self.log.write(policy, "BLOCKED", f"TCP {flow.server_conn.address}: not HTTP")
        flow.kill()

    # -- helpers -------------------------------------------------------------------

    def _target_problem(self, flow: http.HTTPFlow) -> str | None:
        request = flow.request
        host = request.host.lower().rstrip(".")
        header = request.host_header
        if header is not None:
            name, port = _split_host(header)
            if name != host:
                return f"the Host header ({header}) does not match the request's host ({host})"
            if port is not None and port != DEFAULT_PORT[request.scheme]:
                return f"port {port} is not allowed: only 80 (http) and 443 (https)"
        sni = flow.client_conn.sni
        if request.scheme == "https" and sni and sni.lower().rstrip(".") != host:
            return f"the TLS server name ({sni}) does not match the request's host ({host})"
        if request.scheme == "http" and flow.client_conn.tls:
            return "plain HTTP inside TLS"
        return None

    def _refuse(self, flow: http.HTTPFlow, policy: PolicyRecord | None, reason: str,
                message: str) -> None:
        request = flow.request
        body = {"error": "blocked_by_airut", "reason": reason, "method": request.method,
                "host": request.host, "path": _path(request), "message": message}
        flow.response = http.Response.make(403, json.dumps(body).encode(),
                                           {"Content-Type": "application/json"})
        self.log.write(policy, "BLOCKED", f"{request.method} {request.host} {_path(request)} "
                                          f"-> 403 ({reason})")


def _path(request: http.Request) -> str:
    return request.path.split("?", 1)[0]


def _split_host(value: str) -> tuple[str, int | None]:
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = value.partition(":")
    if not port:
        return host.rstrip("."), None
    return host.rstrip("."), int(port) if port.isdigit() else -1
