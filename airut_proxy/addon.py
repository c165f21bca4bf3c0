"""The mitmproxy addon: every request from a task network is checked against its
task's policy, its surrogate credentials are swapped, and the decision is logged.

Tasks reach the proxy without knowing it: their DNS answers every name with their
gateway, and the firewall redirects ports 80 and 443 there to the proxy, which reads
the target from the TLS SNI or the Host header. So:
- CONNECT is refused (nothing legitimate here speaks it);
- a request carries exactly one authority (one Host header on HTTP/1; on HTTP/2 the
  :authority, and no host header that says otherwise), which must agree with the
  SNI and the request's host; the port must be the scheme's own (443 or 80): the
  client reached us on one of those;
- the target is judged as the exact bytes that are forwarded (rules.decoded_path);
- the host is resolved here and the connection goes to the address that was checked
  (addresses.py): public addresses only, unless the operator allows a network;
- requests are decided on their headers, before any body is read or any upstream
  connection is made (connection_strategy=lazy); bodies then stream both ways, so
  the proxy holds no whole body in memory and server-sent events arrive as sent;
- anything that is not HTTP (raw TCP, TLS without HTTP) is cut.
"""

from __future__ import annotations

import json
import logging
import time

from mitmproxy import http, tcp
from mitmproxy.proxy import server_hooks

from airut_core.sandbox import ALLOWLIST_FILE, PolicyRecord
from airut_proxy import addresses, rules
from airut_proxy.netlog import NetworkLog
from airut_proxy.policies import PolicyStore

__all__ = ["NetworkLog", "Sandbox"]

logger = logging.getLogger("airut.proxy")

DEFAULT_PORT = {"https": 443, "http": 80}
HINT = (f"This request is not on the repository's network allowlist. The allowlist is "
        f"{ALLOWLIST_FILE} on the repository's default branch; a change takes effect "
        "once it is reviewed and merged there.")


class Sandbox:
    def __init__(self, store: PolicyStore, network_log: NetworkLog | None = None,
                 resolve: addresses.Resolver = addresses.system_resolver):
        self.store = store
        self.log = network_log or NetworkLog()
        self.resolve = resolve

    # -- hooks ---------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        policy = self.store.lookup(flow.client_conn.peername[0])
        self._refuse(flow, policy, "connect", "CONNECT is not allowed: connect to the host "
                                              "directly (https://host/...)")

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        policy = self.store.lookup(flow.client_conn.peername[0])
        if policy is None:
            self._refuse(flow, None, "no_policy", "this network has no running task")
            return
        problem = _target_problem(flow)
        if problem:
            self._refuse(flow, policy, "target", problem, detail=True)
            return
        request = flow.request
        request.port = DEFAULT_PORT[request.scheme]
        host = request.host
        decision = rules.decide(policy.allowlist, request.method, host, request.path)
        if not decision.allowed:
            self._refuse(flow, policy, decision.reason, HINT)
            return
        verdict = await addresses.decide(host, request.port, policy.allowed_private_networks,
                                         self.resolve)
        if verdict.address is None:
            self._refuse(flow, policy, verdict.reason, verdict.detail, detail=True,
                         status=502 if verdict.reason == "resolve" else 403)
            return
        self._swap_credentials(flow, policy)
        if request.is_http2 or request.is_http3:
            request.headers.pop("host", None)  # the checked :authority is the only one
        flow.metadata.update(airut_policy=policy, airut_host=host,
                             airut_start=time.monotonic())
        # Pinned: the connection goes to the checked address (the name still goes in
        # the Host header and, for TLS, the server name; see server_connect).
        request.data.host = verdict.address
        request.stream = True

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and "airut_policy" in flow.metadata:
            flow.response.stream = True

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Only to an address requestheaders checked; TLS names the host, not the address."""
        if addresses.literal(str(data.server.address[0])) is None:
            data.server.error = "airut: a connection to an unchecked address was refused"
            return
        if data.server.sni is not None:
            data.server.sni = data.client.sni  # required, and equal to the host, for https

    def response(self, flow: http.HTTPFlow) -> None:
        policy = flow.metadata.get("airut_policy")
        if policy is not None:
            self.log.write(policy, "ALLOWED", f"{_what(flow)} -> {flow.response.status_code}")

    def error(self, flow: http.HTTPFlow) -> None:
        policy = flow.metadata.get("airut_policy")
        if policy is not None:
            self.log.write(policy, "ERROR", f"{_what(flow)}: {flow.error}")

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        policy = self.store.lookup(flow.client_conn.peername[0])
        self.log.write(policy, "BLOCKED", f"TCP {flow.server_conn.address}: not HTTP")
        flow.kill()

    # -- helpers -------------------------------------------------------------------

    def _swap_credentials(self, flow: http.HTTPFlow, policy: PolicyRecord) -> None:
        request = flow.request
        headers, changes = rules.apply_masks(policy.masks, request.host,
                                             list(request.headers.items(multi=True)),
                                             tls=request.scheme == "https")
        if not changes:
            return
        request.headers.clear()
        for name, value in headers:
            request.headers.add(name, value)
        for change in changes:
            if change.action == "stripped":
                note = f" ({change.note})" if change.note else ""
                self.log.write(policy, "STRIPPED", f"{change.name} {request.method} "
                                                   f"{request.host} {_path(request)}{note}")

    def _refuse(self, flow: http.HTTPFlow, policy: PolicyRecord | None, reason: str,
                message: str, detail: bool = False, status: int = 403) -> None:
        request = flow.request
        body = {"error": "blocked_by_airut", "reason": reason, "method": request.method,
                "host": request.host, "path": _path(request), "message": message}
        flow.response = http.Response.make(status, json.dumps(body).encode(),
                                           {"Content-Type": "application/json"})
        why = f"{reason}: {message}" if detail else reason
        self.log.write(policy, "BLOCKED", f"{request.method} {request.host} {_path(request)} "
                                          f"-> {status} ({why})")


def _target_problem(flow: http.HTTPFlow) -> str | None:
    """What makes the request's destination ambiguous, or None."""
    request = flow.request
    host = request.host.lower().rstrip(".")
    hosts = request.headers.get_all("host")
    if request.is_http2 or request.is_http3:
        if not request.authority:
            return "an HTTP/2 request without :authority"
        if len(hosts) > 1 or (hosts and _split_host(hosts[0]) != _split_host(request.authority)):
            return (f"exactly one authority is allowed: host headers ({', '.join(hosts)}) "
                    f"besides :authority ({request.authority})")
        authority = request.authority
    else:
        if len(hosts) != 1:
            return f"{len(hosts)} Host headers: exactly one is required"
        authority = hosts[0]
    name, port = _split_host(authority)
    if name != host:
        return f"the Host header ({authority}) does not match the request's host ({host})"
    if port is not None and port != DEFAULT_PORT[request.scheme]:
        return f"port {port} is not allowed: only 80 (http) and 443 (https)"
    sni = flow.client_conn.sni
    if request.scheme == "https":
        if not sni:
            return "no TLS server name (SNI): connect to a host by its name"
        if sni.lower().rstrip(".") != host:
            return f"the TLS server name ({sni}) does not match the request's host ({host})"
    if request.scheme == "http" and flow.client_conn.tls:
        return "plain HTTP inside TLS"
    return None


def _what(flow: http.HTTPFlow) -> str:
    host = flow.metadata.get("airut_host", flow.request.host)
    return f"{flow.request.method} {host} {_path(flow.request)}"


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
