"""Joining an endpoint's base URL with a client's request path, safely.

The client chooses only the part after the endpoint's base path: never the scheme, the
host, or anything above the base.  The rule is decided on the exact bytes that are
forwarded, and must hold for every way an upstream may read them:

- split on raw `/` first and decode each segment afterwards (RFC 3986, WHATWG URL): a
  segment that decodes to `.` or `..` (`%2e%2e`, `.%2E`) is a dot segment;
- decode first and split afterwards (servers that decode `%2F`): the decoded path is
  walked again.

The path is refused when either walk climbs above the base, when it tries to name another
host, when it carries a control character or a backslash (raw or encoded), when an encoded
separator sits in a segment next to a dot segment (`a%2F..`), when a separator or dot is
encoded twice (`%252F`, `%252E`), or when its percent-escapes are not valid UTF-8 (overlong
forms such as `%c0%ae` are how some servers were tricked into a `.`).  Encoded `/` alone is
kept: Bedrock model ARNs travel as `inference-profile%2Fus.anthropic…`.

An endpoint URL may carry a query (Gemini-style `?key=…`): it is kept, and the client's
query is appended after it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import unquote, unquote_to_bytes, urlsplit

_VERSION_PREFIX = re.compile(r"^/v\d+(?=/|$)")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_NOTHING_TO_CHECK = re.compile(r"(?:/[A-Za-z0-9_\-:~+@,;=]+)+/?")
# A separator, dot or backslash percent-encoded twice: one decoding leaves `%2F`, which a
# second decoder (some frameworks, some WAFs) turns into a separator.
_DOUBLE_ENCODED = re.compile(r"%25(?:25)*(?:2[eEfF]|5[cC])")


class HasUrl(Protocol):
    @property
    def url(self) -> str: ...


class UnsafePath(ValueError):
    """The request path cannot be forwarded."""


def _is_dot(segment: str) -> bool:
    # `..;x` is a dot segment to servers that strip path parameters first (Tomcat).
    return segment.split(";", 1)[0] in (".", "..")


def _walk(segments: list[str]) -> None:
    depth = 0
    for segment in segments:
        name = segment.split(";", 1)[0]
        if name == "..":
            depth -= 1
            if depth < 0:
                raise UnsafePath("the request path climbs above the endpoint's base path")
        elif name not in ("", "."):
            depth += 1


def check_path(raw_path: str) -> None:
    """Raise UnsafePath unless `raw_path` (no query) stays below the base it is appended to."""
    if not raw_path.startswith("/"):
        raise UnsafePath("the request path must start with '/'")
    if "#" in raw_path or "?" in raw_path:
        # The query is split off before this check, and a fragment never belongs on the
        # wire; either left in the path could hide a climb ("/..#x").
        raise UnsafePath("the request path may not carry a fragment")
    if _NOTHING_TO_CHECK.fullmatch(raw_path):
        # Plain API paths (/v1/chat/completions) have no escape, dot or double slash:
        # skipping the decode saves ~1 µs per request.
        return
    try:
        unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafePath("the request path is not valid UTF-8 once percent-decoded") from None
    decoded = unquote(raw_path)
    if decoded.startswith("//") or raw_path.startswith("//"):
        raise UnsafePath("the request path may not name a host")
    if _BAD_CHARS.search(decoded):
        raise UnsafePath("the request path contains a control character or backslash")
    if _DOUBLE_ENCODED.search(raw_path):
        raise UnsafePath(
            "the request path encodes a separator or dot twice, which could climb above"
            " the endpoint's base path"
        )
    raw_segments = raw_path.split("/")[1:]
    segments: list[str] = []
    for raw_segment in raw_segments:
        segment = unquote(raw_segment)
        if "/" in segment and any(_is_dot(part) for part in segment.split("/")):
            raise UnsafePath(
                "the request path hides a dot segment behind an encoded '/',"
                " which could climb above the endpoint's base path"
            )
        segments.append(segment)
    _walk(segments)  # split on the raw '/', each segment decoded (RFC 3986)
    _walk(decoded.split("/")[1:])  # decoded first, split afterwards
    twice = unquote(decoded)
    if twice != decoded:
        # Decoded twice (some frameworks, a WAF in front): `%25%32%65` is "." then.
        if _BAD_CHARS.search(twice):
            raise UnsafePath("the request path contains a control character or backslash")
        _walk(twice.split("/")[1:])


def strip_version(path: str) -> str:
    """Remove a leading /v<digits> segment: /v1/chat/completions -> /chat/completions."""
    stripped = _VERSION_PREFIX.sub("", path, count=1)
    return stripped or "/"


def join(base_url: str, raw_path: str, query: str, *, strip_version_prefix: bool) -> str:
    """Target URL = base URL (trailing slashes trimmed) + path (+ ?base query & query).

    `raw_path` is the path exactly as the client sent it (still percent-encoded); call
    `check_path` on it first.  A query written in the base URL comes first, the client's
    after it.
    """
    path = strip_version(raw_path) if strip_version_prefix else raw_path
    base, sep, base_query = base_url.partition("?")
    url = base.rstrip("/") + path
    if sep and base_query:
        query = f"{base_query}&{query}" if query else base_query
    return f"{url}?{query}" if query else url


_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>]+", re.IGNORECASE)
# How Python's socket errors print an address: "Connect call failed ('10.0.0.5', 443)".
_ADDRESS_TUPLE = re.compile(r"\('([^']*)', (\d+)(?:, \d+, \d+)?\)")


def scrub_upstream(text: str, endpoints: Mapping[str, HasUrl]) -> str:
    """`text` (a client-facing error) with every upstream URL and `host:port` replaced by
    the name of its endpoint (`endpoint "zai"`), or by `the upstream` when the address is
    not one endpoint's.  The internal topology, and credentials written in a URL, stay
    inside the proxy."""
    by_address: dict[str, set[str]] = {}
    for name, endpoint in endpoints.items():
        for address in _addresses(endpoint.url):
            by_address.setdefault(address, set()).add(name)

    def label(address: str) -> str:
        names = by_address.get(address.lower())
        return f'endpoint "{next(iter(names))}"' if names and len(names) == 1 else "the upstream"

    def url_label(match: re.Match[str]) -> str:
        try:
            parts = urlsplit(match.group(0))
            port = parts.port
        except ValueError:
            return "the upstream"
        host = (parts.hostname or "").lower()
        if port is None:
            port = 443 if parts.scheme.lower() == "https" else 80
        return label(f"{host}:{port}")

    text = _URL_IN_TEXT.sub(url_label, text)
    text = _ADDRESS_TUPLE.sub(lambda m: label(f"{m.group(1).lower()}:{m.group(2)}"), text)
    for address in sorted(by_address, key=len, reverse=True):
        if address in text.lower():
            text = re.sub(re.escape(address), lambda m: label(m.group(0)), text, flags=re.I)
    return text


def _addresses(url: str) -> set[str]:
    """`host:port` forms of an endpoint URL's address (explicit and default port)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return set()
    if not host:
        return set()
    host = host.lower()
    if port is None:
        port = 443 if parts.scheme.lower() == "https" else 80
    return {f"{host}:{port}"}
