"""What a task may reach, and how its surrogate credentials become real ones.

Matching (airut's rules): `*` and `?` globs, nothing else special; hosts compare
case-insensitively and `*.x.com` does not match `x.com`; paths are percent-decoded
before matching, and a target that servers could read in more than one way (a
fragment, a `.` or `..` segment, an empty segment, a backslash, a null byte,
characters outside RFC 3986) is refused outright, since it is forwarded as it
came; methods compare case-insensitively; an empty path or method list means any.
`domains` entries allow any path and method.

Credentials: only on a host in a mask's scopes, only in headers matching its header
globs (inside `Basic` auth too), the surrogate is replaced by the real value. On
such a host, a credential header that carries none of the scoped surrogates is
removed (unless the mask allows foreign credentials). Real values go out only over
TLS: over plain HTTP a scoped credential header is removed instead. Bodies and query
strings are never touched.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from airut_core.sandbox import Allowlist, Mask


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str, ignore_case: bool) -> re.Pattern:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = (re.IGNORECASE | re.DOTALL) if ignore_case else re.DOTALL
    return re.compile(f"^{regex}$", flags)


def glob_match(pattern: str, value: str, ignore_case: bool = False) -> bool:
    return bool(_glob(pattern, ignore_case).match(value))


def host_match(pattern: str, host: str) -> bool:
    return glob_match(pattern.lower().rstrip("."), host.lower().rstrip("."), ignore_case=True)


class BadPath(ValueError):
    pass


# RFC 3986: the characters of a path (pchar and "/"), and of a query.
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_QUERY_CHARS = re.compile(r"[\x21-\x22\x24-\x7e]*")  # printable ASCII but '#'
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def decoded_path(raw: str) -> str:
    """The path part of a request target, percent-decoded, or BadPath.

    The target is forwarded exactly as it came, so anything that servers could read
    in more than one way is refused rather than judged in one of them: a fragment,
    characters outside RFC 3986, broken percent-encoding, '.' and '..' segments
    (also encoded or with ';' parameters), empty segments, backslashes, NUL.
    """
    if "#" in raw:
        raise BadPath("'#' in target (a fragment is never sent to a server)")
    if not raw.startswith("/"):
        raise BadPath("the target is not a path")
    path, _, query = raw.partition("?")
    if "\\" in path:
        raise BadPath("backslash in path")
    if not _PATH_CHARS.fullmatch(path) or not _QUERY_CHARS.fullmatch(query):
        raise BadPath("characters outside RFC 3986 in target (percent-encode them)")
    if _BAD_PERCENT.search(raw):
        raise BadPath("broken percent-encoding in target")
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadPath("path is not UTF-8 after decoding") from e
    if "\0" in decoded:
        raise BadPath("null byte in path")
    if "\\" in decoded:
        raise BadPath("backslash in path")
    segments = decoded.split("/")[1:]
    for segment in segments:
        if segment.split(";", 1)[0] in (".", ".."):
            raise BadPath(f"'{segment.split(';', 1)[0]}' segment in path")
    if "" in segments[:-1]:
        raise BadPath("empty segment ('//') in path")
    return decoded


@dataclass
class Decision:
    allowed: bool
    reason: str  # for the log and the 403 body: allowed, host, path, method, bad_path


def decide(allowlist: Allowlist, method: str, host: str, raw_path: str) -> Decision:
    try:
        path = decoded_path(raw_path)
    except BadPath as e:
        return Decision(False, f"bad_path: {e}")
    method = method.upper()
    if any(host_match(d, host) for d in allowlist.domains):
        return Decision(True, "allowed")
    host_seen = path_seen = False
    for prefix in allowlist.url_prefixes:
        if not host_match(prefix.host, host):
            continue
        host_seen = True
        if prefix.path and not glob_match(prefix.path, path):
            continue
        path_seen = True
        if prefix.methods and method not in prefix.methods:
            continue
        return Decision(True, "allowed")
    if path_seen:
        return Decision(False, "method")
    return Decision(False, "path" if host_seen else "host")


@dataclass
class HeaderChange:
    name: str
    action: str  # "swapped" or "stripped"
    note: str = ""  # why, when it is not the usual


PLAIN_HTTP = "plain HTTP: real credentials go out only over TLS"


def apply_masks(masks: list[Mask], host: str, headers: list[tuple[str, str]],
                tls: bool = True) -> tuple[list[tuple[str, str]], list[HeaderChange]]:
    """Swap surrogates for real values in the headers of a request to `host`.
    Without TLS a surrogate is never swapped: its header is removed."""
    scoped = [m for m in masks if any(host_match(s, host) for s in m.scopes)]
    if not scoped:
        return headers, []
    out, changes = [], []
    for name, value in headers:
        relevant = [m for m in scoped if any(glob_match(h, name, ignore_case=True)
                                             for h in m.headers)]
        if not relevant:
            out.append((name, value))
            continue
        new = _swap(value, relevant)
        if new is not None and tls:
            out.append((name, new))
            changes.append(HeaderChange(name, "swapped"))
        elif new is not None:
            changes.append(HeaderChange(name, "stripped", PLAIN_HTTP))
        elif all(m.allow_foreign for m in relevant):
            out.append((name, value))
        else:
            changes.append(HeaderChange(name, "stripped"))
    return out, changes


def _swap(value: str, masks: list[Mask]) -> str | None:
    """The value with surrogates replaced, or None when it carries none of them."""
    replaced = value
    for m in masks:
        replaced = replaced.replace(m.surrogate, m.value)
    if replaced != value:
        return replaced
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "basic" and token:
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        swapped = decoded
        for m in masks:
            swapped = swapped.replace(m.surrogate, m.value)
        if swapped != decoded:
            return f"{scheme} {base64.b64encode(swapped.encode()).decode()}"
    return None
