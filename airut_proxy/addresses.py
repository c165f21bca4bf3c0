"""Where the proxy may connect: public addresses only, unless the operator says otherwise.

Host rules match names, and a name can point anywhere: an allowlisted name (or `*`)
must not become a way to the host's loopback services, the cloud metadata service,
the local network or other tasks. So the proxy resolves every name itself, refuses
the request if any of its addresses is not a public unicast address, and connects
to the address it checked (no second lookup an attacker's DNS could answer
differently). Networks the operator lists (proxy.allowed_private_networks) are
exempt; an IP-literal host must be in one of them. Task networks never are.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from airut_core.sandbox import SUBNET_POOL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Not covered (or not reliably) by ipaddress's is_global.
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")

Resolver = Callable[[str, int], Awaitable[list[str]]]


def kind(ip: IPAddress) -> str | None:
    """Why the proxy must not connect to `ip` on its own accord, or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return kind(embedded)
    if ip in SUBNET_POOL:
        return "a task network"
    for test, name in ((ip.is_loopback, "loopback"), (ip.is_link_local, "link-local"),
                       (ip.is_multicast, "multicast"), (ip.is_unspecified, "unspecified"),
                       (ip in CGNAT, "shared (CGNAT)")):
        if test:
            return name
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in SIX_TO_FOUR:
        return ip.sixtofour
    return None


@dataclass
class Verdict:
    address: str | None  # the address to connect to; None when refused
    reason: str = ""  # "ip_literal", "address" or "resolve" when refused
    detail: str = ""  # for the 403 body and the log


def in_networks(ip: IPAddress, networks: list[str]) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(n) for n in networks)


def literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def _refusal(ip: IPAddress, allowed: list[str]) -> str | None:
    why = kind(ip)
    if why == "a task network" or (why and not in_networks(ip, allowed)):
        return why
    return None


def check(host: str, addresses: list[str], allowed: list[str]) -> Verdict:
    """Every address of `host` must be public or in an allowed network, and no task's."""
    if not addresses:
        return Verdict(None, "resolve", f"{host} has no address")
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%")[0])
        why = _refusal(ip, allowed)
        if why:
            return Verdict(None, "address", f"{host} resolves to {ip} ({why}), which "
                                            "tasks may not reach")
    return Verdict(addresses[0])


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: list[str] = []
    for *_, sockaddr in infos:
        if sockaddr[0] not in seen:
            seen.append(sockaddr[0])
    return seen


async def decide(host: str, port: int, allowed: list[str],
                 resolve: Resolver = system_resolver) -> Verdict:
    """Where a request to `host` may go: the checked address, or why nowhere."""
    ip = literal(host)
    if ip is not None:
        if _refusal(ip, allowed) or not in_networks(ip, allowed):
            return Verdict(None, "ip_literal", f"{ip} is an IP address: only names, or "
                                               "addresses the operator allows, may be used")
        return Verdict(str(ip))
    try:
        addresses = await resolve(host, port)
    except (OSError, UnicodeError) as e:
        return Verdict(None, "resolve", f"cannot resolve {host}: {e}")
    return check(host, addresses, allowed)
