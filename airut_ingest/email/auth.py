"""Who sent a mail, and may they use airut? (design.md, "Channel auth")

Authentication: only the **topmost** Authentication-Results header counts (the one
our own mail server added; anything below it came with the message and anyone can
write it). Its authserv-id must be the configured one, and it must carry the result
`dmarc=pass` for the domain of the From address, as a result of its own (authres
parses the header, so a `dmarc=pass` inside a comment or a property is no pass).
The From header is parsed strictly: exactly one, holding exactly one address.
Both headers are read raw and parsed here (never by the email package's header
objects, which raise on inputs such as `From: "`): whatever the sender wrote, the
verdict is a clean rejection, not a crash.

Authorization: the address matches `authorized_senders` (exact, or `*@domain`),
case-insensitively. Rejected mail gets no reply; the reason is logged.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import getaddresses

import authres

from airut_ingest.email.parse import raw_headers


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason  # not_authenticated | not_authorized | malformed


def sender_address(msg: EmailMessage) -> str:
    """The one address of the one From header, lower-cased."""
    headers = raw_headers(msg, "From")
    if len(headers) != 1:
        raise Rejected("malformed", f"{len(headers)} From headers (exactly one is needed)")
    raw = headers[0]
    try:
        # strict: a display name that looks like an address stays a display name.
        addresses = getaddresses([raw], strict=True)
    except Exception as e:
        raise Rejected("malformed", f"unreadable From header {raw[:200]!r}: {e}") from e
    if len(addresses) != 1 or not addresses[0][1]:
        raise Rejected("malformed", "From header does not hold exactly one address: "
                                    f"{raw[:200]!r}")
    address = addresses[0][1].strip().lower()
    local, _, domain = address.rpartition("@")
    if (not local or not domain or "." not in domain or len(address) > 254
            or not _utf8(address) or not address.isprintable() or " " in address
            or "[" in domain):
        raise Rejected("malformed", f"not a usable address in From: {address[:200]!r}")
    return address


def _utf8(text: str) -> bool:
    """False for the lone surrogates that stand for undecodable bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def authenticate(msg: EmailMessage, trusted_authserv_id: str) -> str:
    """The sender's address if our server verified DMARC for it; else Rejected."""
    address = sender_address(msg)
    headers = raw_headers(msg, "Authentication-Results")
    if not headers:
        raise Rejected("not_authenticated", "no Authentication-Results header")
    try:
        top = authres.AuthenticationResultsHeader.parse_value(headers[0])
    except Exception as e:  # authres raises its own SyntaxError subclasses
        raise Rejected("not_authenticated", f"unreadable Authentication-Results: {e}") from e
    if (top.authserv_id or "").lower() != trusted_authserv_id.lower():
        raise Rejected("not_authenticated", f"topmost Authentication-Results is from "
                                            f"{top.authserv_id!r}, not the trusted "
                                            f"{trusted_authserv_id!r}")
    domain = address.rpartition("@")[2]
    for result in top.results:
        if result.method.lower() != "dmarc" or result.result.lower() != "pass":
            continue
        header_from = {p.value.lower() for p in result.properties
                       if p.type.lower() == "header" and p.name.lower() == "from"}
        if header_from == {domain}:
            return address
    raise Rejected("not_authenticated", f"no dmarc=pass for {domain} in the topmost "
                                        "Authentication-Results")


def authorize(address: str, authorized_senders: list[str]) -> None:
    domain = address.rpartition("@")[2]
    for pattern in authorized_senders:
        pattern = pattern.strip().lower()
        if pattern == address or (pattern.startswith("*@") and pattern[2:] == domain):
            return
    raise Rejected("not_authorized", f"{address} is not an authorized sender")
