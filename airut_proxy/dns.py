"""The only DNS a task can ask: every A query is answered with the address of the
task's own gateway, where the proxy waits; nothing is ever forwarded, so DNS
cannot carry data out. AAAA gets an empty answer (tasks have no IPv6); any other
type is refused and logged. Clients without a policy get REFUSED.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from airut_core.sandbox import PolicyRecord
from airut_proxy.policies import PolicyStore

logger = logging.getLogger("airut.proxy.dns")
TTL = 30


class SandboxResolver(BaseResolver):
    def __init__(self, store: PolicyStore,
                 on_blocked: Callable[[PolicyRecord | None, str], None]):
        self.store = store
        self.on_blocked = on_blocked

    def resolve(self, request: DNSRecord, handler) -> DNSRecord:
        reply = request.reply()
        policy = self.store.lookup(handler.client_address[0])
        if policy is None:
            reply.header.rcode = RCODE.REFUSED
            self.on_blocked(None, f"DNS from {handler.client_address[0]}: no policy")
            return reply
        for question in request.questions:
            kind = QTYPE.get(question.qtype, str(question.qtype))
            if question.qtype == QTYPE.A:
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(policy.gateway), ttl=TTL))
            elif question.qtype == QTYPE.AAAA:
                pass  # no IPv6 in task networks: an empty answer sends clients to A
            else:
                reply.header.rcode = RCODE.NOTIMP
                self.on_blocked(policy, f"DNS {kind} {str(question.qname).rstrip('.')}")
        return reply


class _Quiet(DNSLogger):
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-data,-recv,-send", prefix=False)

    def log_error(self, handler, e) -> None:
        logger.warning("DNS error from %s: %s", handler.client_address[0], e)


def serve(store: PolicyStore, port: int, on_blocked) -> list[DNSServer]:
    """UDP and TCP servers on every address; the firewall lets only task networks in."""
    resolver = SandboxResolver(store, on_blocked)
    servers = [DNSServer(resolver, port=port, address="0.0.0.0", tcp=tcp, logger=_Quiet())
               for tcp in (False, True)]
    for server in servers:
        server.start_thread()
    return servers
