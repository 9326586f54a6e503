"""Joining an endpoint's base URL with a client's request path, safely.

The client chooses only the part after the endpoint's base path: never the scheme, the
host, or anything above the base.  A path that, after one percent-decoding and removal of
dot segments, would climb above the base, or that tries to name another host, is refused.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_VERSION_PREFIX = re.compile(r"^/v\d+(?=/|$)")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_NOTHING_TO_CHECK = re.compile(r"(?:/[A-Za-z0-9_\-:~+@,;=]+)+/?")


class UnsafePath(ValueError):
    """The request path cannot be forwarded."""


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
    decoded = unquote(raw_path)
    if decoded.startswith("//") or raw_path.startswith("//"):
        raise UnsafePath("the request path may not name a host")
    if _BAD_CHARS.search(decoded):
        raise UnsafePath("the request path contains a control character or backslash")
    depth = 0
    for segment in decoded.split("/")[1:]:
        if segment == "..":
            depth -= 1
            if depth < 0:
                raise UnsafePath("the request path climbs above the endpoint's base path")
        elif segment not in ("", "."):
            depth += 1


def strip_version(path: str) -> str:
    """Remove a leading /v<digits> segment: /v1/chat/completions -> /chat/completions."""
    stripped = _VERSION_PREFIX.sub("", path, count=1)
    return stripped or "/"


def join(base_url: str, raw_path: str, query: str, *, strip_version_prefix: bool) -> str:
    """Target URL = base URL (trailing slashes trimmed) + path (+ ?query).

    `raw_path` is the path exactly as the client sent it (still percent-encoded); call
    `check_path` on it first.
    """
    path = strip_version(raw_path) if strip_version_prefix else raw_path
    url = base_url.rstrip("/") + path
    return f"{url}?{query}" if query else url
