"""The proxy addon's decisions on real mitmproxy flows (mitmproxy.test helpers), run
through mitmproxy's own hook dispatch; the system tests attack the running proxy."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.layers.http import _hooks as http_hooks
from mitmproxy.test import taddons, tflow

from airut_core.sandbox import Mask, PolicyRecord, parse_allowlist, subnet
from airut_core.spool import Stage
from airut_proxy import addresses
from airut_proxy.addon import NetworkLog, Sandbox
from airut_proxy.policies import PolicyStore

ALLOW = parse_allowlist("""
domains: [allowed.test, internal.test, "10.0.0.5", "1.1.1.1"]
url_prefixes:
  - {host: paths.test, path: "/open/*", methods: [GET]}
  - {host: api.example.com, path: "/v1/*"}
""", "allowlist")
REAL, SURROGATE = "sk-real-0123456789", "sk-surr-9876543210"
CLIENT = "10.199.7.2"
PUBLIC = "93.184.216.34"


class Resolver:
    """Stands in for DNS: a name's answers, and every lookup made."""

    def __init__(self, answers: dict[str, list[str]] | None = None):
        self.answers = answers or {}
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return self.answers[host]


@pytest.fixture
def proxy(tmp_path):
    stage = Stage(tmp_path / "policies").ensure()
    policy = PolicyRecord(task_id="20260101-000000-abcd", conversation_id="0a1b2c3d",
                          repo="demo", subnet=subnet(7), network_log=str(tmp_path / "net.log"),
                          allowlist=ALLOW, allowed_private_networks=["127.0.0.1/32"],
                          masks=[Mask(env="K", surrogate=SURROGATE, value=REAL,
                                      scopes=["api.example.com"], headers=["x-api-key"])])
    stage.put(policy.task_id, policy.to_dict())
    resolver = Resolver({name: [PUBLIC] for name in
                         ("allowed.test", "paths.test", "api.example.com")})
    addon = Sandbox(PolicyStore(stage.path), NetworkLog(), resolver)
    addon.resolver, addon.log_file = resolver, tmp_path / "net.log"
    return addon


def make_flow(url: str, method: str = "GET", headers: list[tuple[str, str]] | None = None,
              http2: bool = False, sni: str | None = "", client: str = CLIENT,
              body: bytes = b"") -> http.HTTPFlow:
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    host = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
    port = int(authority.rsplit(":", 1)[1]) if authority.count(":") == 1 else (
        443 if scheme == "https" else 80)
    if headers is None:
        headers = [] if http2 else [("Host", authority)]
    request = http.Request(
        host=host, port=port, method=method.encode(), scheme=scheme.encode(),
        authority=authority.encode() if http2 else b"", path=(slash + path).encode(),
        http_version=b"HTTP/2.0" if http2 else b"HTTP/1.1",
        headers=http.Headers([(k.encode(), v.encode()) for k, v in headers]),
        content=body, trailers=None, timestamp_start=0.0, timestamp_end=None)
    flow = tflow.tflow(req=request)
    flow.client_conn.peername = (client, 40000)
    flow.client_conn.tls = scheme == "https"
    flow.client_conn.sni = (host if sni == "" else sni) if scheme == "https" else None
    return flow


def hook(addon: Sandbox, event) -> None:
    """One hook, dispatched by a real mitmproxy addon manager (async hooks awaited)."""
    async def run() -> None:
        with taddons.context(addon) as tctx:
            try:
                await tctx.master.addons.invoke_addon(addon, event)
            finally:  # its log handler is bound to this event loop
                tctx.master._legacy_log_events.uninstall()
    asyncio.run(run())


def decide(addon: Sandbox, flow: http.HTTPFlow) -> http.HTTPFlow:
    hook(addon, http_hooks.HttpRequestHeadersHook(flow))
    return flow


def refusal(flow: http.HTTPFlow) -> tuple[int, str, str] | None:
    if flow.response is None:
        return None
    body = json.loads(flow.response.content)
    return flow.response.status_code, body["reason"], body["message"]


# -- what is forwarded is what was judged ------------------------------------------

@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize(("path", "why"), [
    ("/open/x#/../../closed", "'#' in target"),
    ("/open/x?y#/../../closed", "'#' in target"),
    ("/open/./x", "'.' segment"),
    ("/open/..;/closed", "'..' segment"),
    ("/open/%2e%2E;x/closed", "'..' segment"),
    ("/open//x", "empty segment"),
    ("/open/a b", "outside RFC 3986"),
    ("/open/\u00e9", "outside RFC 3986"),
    ("/open/%zz", "broken percent-encoding"),
    ("/open/x?a=\x01", "outside RFC 3986"),
    ("*", "not a path"),
])
def test_ambiguous_targets_are_refused(proxy, scheme, path, why):
    flow = decide(proxy, make_flow(f"{scheme}://paths.test{path}"))
    status, reason, _ = refusal(flow)
    assert (status, reason.split(":")[0]) == (403, "bad_path")
    assert why in reason
    assert not proxy.resolver.asked  # refused before any lookup or connection


def test_an_allowed_request_is_forwarded_as_it_came(proxy):
    flow = decide(proxy, make_flow("https://paths.test/open/a%2Fb?q=%23x&r=[1]"))
    assert refusal(flow) is None
    assert flow.request.path == "/open/a%2Fb?q=%23x&r=[1]"
    assert flow.request.headers.get_all("host") == ["paths.test"]


# -- one authority on every protocol ------------------------------------------------

def test_http2_host_headers_must_agree_with_authority(proxy):
    flow = decide(proxy, make_flow("https://allowed.test/", http2=True,
                                   headers=[("host", "other.test"), ("host", "other.test")]))
    status, reason, message = refusal(flow)
    assert (status, reason) == (403, "target") and "exactly one authority" in message
    flow = decide(proxy, make_flow("https://allowed.test/", http2=True,
                                   headers=[("host", "other.test")]))
    assert refusal(flow)[1] == "target"


def test_http2_keeps_only_the_checked_authority(proxy):
    flow = decide(proxy, make_flow("https://allowed.test/", http2=True,
                                   headers=[("host", "allowed.test")]))
    assert refusal(flow) is None
    assert flow.request.authority == "allowed.test" and "host" not in flow.request.headers


@pytest.mark.parametrize("hosts", [[], ["allowed.test", "allowed.test"],
                                   ["allowed.test", "other.test"], ["other.test"]])
def test_http1_needs_exactly_one_matching_host_header(proxy, hosts):
    flow = decide(proxy, make_flow("http://allowed.test/", headers=[("Host", h) for h in hosts]))
    assert refusal(flow)[:2] == (403, "target")


def test_https_needs_a_server_name_that_matches(proxy):
    assert "no TLS server name" in refusal(decide(proxy, make_flow(
        "https://allowed.test/", sni=None)))[2]
    assert "TLS server name (other.test)" in refusal(decide(proxy, make_flow(
        "https://allowed.test/", sni="other.test")))[2]


# -- no private addresses through an allowed name --------------------------------

@pytest.mark.parametrize(("answers", "kind"), [
    (["127.0.0.2"], "loopback"),
    (["::1"], "loopback"),
    (["::ffff:127.0.0.2"], "loopback"),
    (["169.254.169.254"], "link-local"),
    (["fe80::1"], "link-local"),
    (["10.1.2.3"], "private"),
    (["172.16.0.1"], "private"),
    (["192.168.1.1"], "private"),
    (["fd00::1"], "private"),
    (["100.64.0.1"], "shared (CGNAT)"),
    (["224.0.0.1"], "multicast"),
    (["0.0.0.0"], "unspecified"),
    (["10.199.3.2"], "a task network"),
    (["64:ff9b::a00:1"], "private"),  # NAT64 of 10.0.0.1
    ([PUBLIC, "127.0.0.2"], "loopback"),  # one bad answer is enough
])
def test_names_that_resolve_to_private_addresses_are_refused(proxy, answers, kind):
    proxy.resolver.answers["internal.test"] = answers
    status, reason, message = refusal(decide(proxy, make_flow("http://internal.test/x")))
    assert (status, reason) == (403, "address")
    assert f"({kind})" in message
    assert "BLOCKED GET internal.test /x -> 403 (address: internal.test resolves to" in (
        proxy.log_file.read_text())


def test_an_allowed_private_network_is_reachable_but_never_a_task_network(proxy, tmp_path):
    proxy.resolver.answers["internal.test"] = ["127.0.0.1"]
    flow = decide(proxy, make_flow("http://internal.test/"))
    assert refusal(flow) is None and flow.request.host == "127.0.0.1"
    policy = proxy.store.lookup(CLIENT)
    policy.allowed_private_networks = ["10.0.0.0/8"]
    proxy.resolver.answers["internal.test"] = ["10.199.9.2"]
    assert refusal(decide(proxy, make_flow("http://internal.test/")))[1] == "address"


@pytest.mark.parametrize("host", ["10.0.0.5", "1.1.1.1"])
def test_ip_literal_hosts_are_refused_unless_listed(proxy, host):
    status, reason, _ = refusal(decide(proxy, make_flow(f"http://{host}/")))
    assert (status, reason) == (403, "ip_literal")
    proxy.store.lookup(CLIENT).allowed_private_networks = ["10.0.0.0/8", "1.1.1.0/24"]
    assert refusal(decide(proxy, make_flow(f"http://{host}/"))) is None


def test_an_unknown_name_is_a_502_not_a_connection(proxy):
    proxy.resolver.answers.pop("allowed.test")
    status, reason, message = refusal(decide(proxy, make_flow("http://allowed.test/")))
    assert (status, reason) == (502, "resolve") and "cannot resolve allowed.test" in message


def test_the_connection_is_pinned_to_the_checked_address(proxy):
    flow = decide(proxy, make_flow("https://allowed.test/page"))
    # The name's answer changes after the check (DNS rebinding): the connection
    # still goes to the address that was checked, and TLS still names the host.
    proxy.resolver.answers["allowed.test"] = ["127.0.0.2"]
    assert flow.request.host == PUBLIC and flow.request.host_header == "allowed.test"
    server = flow.server_conn
    server.address, server.sni = (flow.request.host, 443), flow.request.host
    hook(proxy, server_hooks.ServerConnectHook(
        server_hooks.ServerConnectionHookData(client=flow.client_conn, server=server)))
    assert server.error is None and server.sni == "allowed.test"
    assert proxy.resolver.asked == ["allowed.test"]  # once, before the decision


def test_a_connection_to_an_unchecked_name_is_cut(proxy):
    server = tflow.tserver_conn()
    server.address = ("internal.test", 80)
    hook(proxy, server_hooks.ServerConnectHook(
        server_hooks.ServerConnectionHookData(client=tflow.tclient_conn(), server=server)))
    assert "unchecked address" in server.error


# -- credentials only over TLS ---------------------------------------------------

def test_surrogates_are_swapped_only_over_tls(proxy):
    flow = decide(proxy, make_flow("https://api.example.com/v1/x",
                                   headers=[("Host", "api.example.com"), ("x-api-key", SURROGATE)]))
    assert flow.request.headers["x-api-key"] == REAL
    flow = decide(proxy, make_flow("http://api.example.com/v1/x",
                                   headers=[("Host", "api.example.com"), ("x-api-key", SURROGATE)]))
    assert refusal(flow) is None and "x-api-key" not in flow.request.headers
    log = proxy.log_file.read_text()
    assert "STRIPPED x-api-key GET api.example.com /v1/x (plain HTTP" in log
    assert REAL not in log and SURROGATE not in log


# -- decided on headers, then streamed -------------------------------------------

def test_allowed_bodies_stream_both_ways_refused_ones_do_not(proxy):
    flow = decide(proxy, make_flow("https://allowed.test/up", method="POST", body=b"x" * 10))
    assert flow.request.stream is True
    flow.response = http.Response.make(200, b"")
    hook(proxy, http_hooks.HttpResponseHeadersHook(flow))
    assert flow.response.stream is True
    refused = decide(proxy, make_flow("https://other.test/"))
    assert refused.request.stream is False and refusal(refused)[1] == "host"
    hook(proxy, http_hooks.HttpResponseHeadersHook(refused))
    assert refused.response.stream is False


def test_the_log_names_the_host_not_the_address(proxy):
    flow = decide(proxy, make_flow("https://allowed.test/page?q=1"))
    flow.response = http.Response.make(200, b"")
    hook(proxy, http_hooks.HttpResponseHook(flow))
    assert "ALLOWED GET allowed.test /page -> 200" in proxy.log_file.read_text()


def test_no_policy_no_traffic(proxy):
    flow = decide(proxy, make_flow("https://allowed.test/", client="10.199.99.2"))
    assert refusal(flow)[:2] == (403, "no_policy")


# -- network.log is capped --------------------------------------------------------

def test_network_log_keeps_the_newest_lines_under_its_cap(proxy, tmp_path):
    policy = proxy.store.lookup(CLIENT)
    policy.network_log_max_bytes = 4096
    log = NetworkLog()
    for i in range(500):
        log.write(policy, "ALLOWED", f"GET allowed.test /{i:04d} -> 200")
    data = proxy.log_file.read_text()
    assert len(data.encode()) <= 4096
    lines = data.splitlines()
    assert " NOTE network.log reached its cap: " in lines[0]
    assert lines[-1].endswith("GET allowed.test /0499 -> 200")
    numbers = [int(line.split("/")[1][:4]) for line in lines[1:]]
    assert numbers == list(range(numbers[0], 500))  # whole lines, none lost in between


def test_network_log_does_not_follow_a_link(proxy, tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    proxy.log_file.unlink(missing_ok=True)
    os.symlink(target, proxy.log_file)
    NetworkLog().write(proxy.store.lookup(CLIENT), "ALLOWED", "GET x / -> 200")
    assert Path(target).read_text() == ""


def test_network_log_stays_open_while_a_policy_names_it(proxy, tmp_path):
    policy = proxy.store.lookup(CLIENT)
    log = NetworkLog()
    proxy.store.on_load = lambda policies: log.keep_only({p.network_log for p in policies})

    def open_logs() -> int:
        return sum(os.path.realpath(f"/proc/self/fd/{fd}") == str(proxy.log_file)
                   for fd in os.listdir("/proc/self/fd"))

    for i in range(3):
        log.write(policy, "ALLOWED", f"GET x /{i} -> 200")
    assert open_logs() == 1  # one file, opened once
    assert proxy.log_file.read_text().count("ALLOWED") == 3
    proxy.store.load()
    assert open_logs() == 1  # the policy is still there
    for name in proxy.store.stage.names():
        proxy.store.stage.remove(name)
    proxy.store.load()
    assert open_logs() == 0


def test_addresses_kinds():
    kind = addresses.kind
    ip = addresses.ipaddress.ip_address
    assert kind(ip(PUBLIC)) is None and kind(ip("2606:4700::1111")) is None
    assert kind(ip("2002:7f00:1::")) == "loopback"  # 6to4 of 127.0.0.1
    assert kind(ip("198.18.0.1")) == "private"  # benchmarking range


def test_private_name_servers_are_named_for_the_operator():
    from airut_proxy.daemon import private_resolvers
    conf = ("# generated\nnameserver 127.0.0.53\nnameserver 192.168.1.1\n"
            "nameserver 9.9.9.9\nnameserver fe80::1%eth0\nsearch corp.test\n")
    assert private_resolvers(conf) == ["192.168.1.1", "fe80::1%eth0"]
