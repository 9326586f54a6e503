"""What the client's request head says to the proxy, and the headers its answer gets.

Proxy auth (every header a key can arrive in, compared in constant time), whether a
request body's encoding is one the server inflates, which client headers are forwarded
(RFC 9110 hop-by-hop rules, the proxy key stripped wherever it was presented), and the
`x-hydrallm-*` headers on every answer.  Pure functions of the head: the handler
(`handler.py`) calls them per request.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from multidict import CIMultiDictProxy

from hydrallm.providers.base import HOP_BY_HOP
from hydrallm.proxy.wire import INFLATED

__all__ = ["auth_ok", "forwarded_headers", "readable_encoding", "tags"]

_NO_CONTROLS = dict.fromkeys([*range(32), 127])


def auth_ok(
    auth_keys: Iterable[bytes], headers: CIMultiDictProxy[str]
) -> tuple[bool, frozenset[tuple[str, str]]]:
    """Check proxy auth against the listener's keys; returns (ok, the (header, value)
    pairs that carry a proxy key).

    Every header the listener accepts keys in is checked, each occurrence of it: a proxy
    key is removed from all of them before forwarding, not only from the one that
    authenticated.
    """
    presented: list[tuple[str, str, str]] = []
    for auth in headers.getall("Authorization", ()):
        if auth[:7].lower() == "bearer ":
            presented.append(("authorization", auth, auth[7:].strip()))
    for key in headers.getall("x-api-key", ()):
        presented.append(("x-api-key", key, key.strip()))
    carrying: set[tuple[str, str]] = set()
    for name, raw, value in presented:
        candidate = value.encode()
        # Compare against every key, always, so timing says nothing about which matched.
        matched = False
        for k in auth_keys:
            matched |= hmac.compare_digest(candidate, k)
        if matched:
            carrying.add((name, raw))
    return bool(carrying), frozenset(carrying)


def readable_encoding(value: str) -> bool:
    """Whether a request Content-Encoding is one the body arrives inflated from."""
    return (value.isascii() and value.lower() in INFLATED) or value.strip().lower() == "identity"


def _connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """Header names the client's `Connection:` header values nominate as hop-by-hop."""
    names: set[str] = set()
    for v in values:
        names.update(t.strip().lower() for t in v.split(",") if t.strip())
    return frozenset(names)


# Never forwarded: hop-by-hop, and Content-Encoding (the body was inflated when read).
_DROPPED = HOP_BY_HOP | {"content-encoding"}


def forwarded_headers(
    headers: CIMultiDictProxy[str], names: list[str], strip: frozenset[tuple[str, str]]
) -> tuple[tuple[tuple[str, str], ...], str]:
    """The client's headers less hop-by-hop ones (fixed, and those its `Connection:` names,
    RFC 9110 §7.6.1), the proxy key wherever it was presented, and `Content-Encoding`
    (the body was inflated when read); also its (last) Accept.  `names` are the header
    names in lower case, in order: no header is lower-cased here again."""
    drop = _DROPPED
    if "Connection" in headers:
        drop = drop | _connection_tokens(headers.getall("Connection"))
    kept = [pair for pair, name in zip(headers.items(), names, strict=True) if name not in drop]
    if strip:
        kept = [(k, v) for k, v in kept if (k.lower(), v) not in strip]
    accept = ""
    if "Accept" in headers and "accept" not in drop:
        accept = headers.getall("Accept")[-1]
    if "Accept-Encoding" not in headers or "accept-encoding" in drop:
        # The upstream client does not decompress; ask for what the client can read.
        kept.append(("Accept-Encoding", "identity"))
    return tuple(kept), accept


def tags(model: str | None, endpoint: str | None, attempts: int) -> list[tuple[str, str]]:
    """The x-hydrallm-* headers every response carries."""
    count = ("x-hydrallm-attempts", str(attempts))
    if model is None:
        return [("x-hydrallm-endpoint", endpoint), count] if endpoint is not None else [count]
    # A "*" model is the client's own string: no CR/LF/NUL may reach a header line.
    # (isprintable first: translate with a table costs ~2 µs even when nothing changes.)
    shown = ("x-hydrallm-model", model if model.isprintable() else model.translate(_NO_CONTROLS))
    if endpoint is None:
        return [shown, count]
    return [shown, ("x-hydrallm-endpoint", endpoint), count]
