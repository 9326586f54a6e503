"""URL joining fuzzed as the transport sees it (issue 8): any accepted path, query or
encoded form stays on the endpoint's host and under its base path.

The examples are bounded for CI; `HYDRALLM_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_extra.py`
runs a longer search locally.
"""

from __future__ import annotations

import os
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from hydrallm.proxy.urls import UnsafePath, check_path, join

EXAMPLES = int(os.environ.get("HYDRALLM_FUZZ_EXAMPLES", "400"))

_PIECES = st.sampled_from(
    [
        "/",
        "//",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%5c",
        "\\",
        "%00",
        "%",
        "@",
        ":",
        "?",
        "#",
        "http:",
        "https://evil.example",
        "evil.example",
        "%252e",
        "é",
        "ｅ",
        "\u2024",
        "\u3002",
        "\ufe52",
        "%c0%ae",
        "v1",
        "chat",
        "x",
        ";",
        "&",
        "=",
    ]
)
_PATHS = st.lists(_PIECES, max_size=12).map("".join)
_QUERIES = st.lists(
    st.sampled_from(["a=1", "&", "..", "/", "%2F", "#", "?", "//h", "é"]), max_size=5
).map("".join)
_BASES = st.sampled_from(
    ["https://api.example.com/base", "https://api.example.com/base/v4/", "http://127.0.0.1:8080"]
)


def _resolved(path: str) -> list[str]:
    stack: list[str] = []
    for seg in unquote(path).split("/")[1:]:
        if seg == "..":
            if not stack:
                return ["<above the root>"]
            stack.pop()
        elif seg not in ("", "."):
            stack.append(seg)
    return stack


@pytest.mark.parametrize("path", ["/..#x", "/v1/../..#/chat", "/x/../..#"])
def test_a_fragment_cannot_hide_a_dot_segment(path: str) -> None:
    try:
        check_path(path)
    except UnsafePath:
        return
    url = URL(join("https://h/base/v4", path, "", strip_version_prefix=False), encoded=True)
    assert _resolved(url.raw_path)[:2] == ["base", "v4"], url


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_BASES, _PATHS, _QUERIES)
@example("https://api.example.com/base", "..#", "")
def test_no_path_or_query_leaves_the_endpoint(base: str, tail: str, query: str) -> None:
    path = "/" + tail
    raw, _, inline_query = path.partition("?")  # the server splits the raw target so
    query = inline_query or query
    try:
        check_path(raw)
    except UnsafePath:
        return
    url = URL(join(base, raw, query, strip_version_prefix=False), encoded=True)
    want = URL(base)
    assert (url.scheme, url.host, url.port) == (want.scheme, want.host, want.port), url
    base_segments = [s for s in want.path.split("/") if s]
    assert _resolved(url.raw_path)[: len(base_segments)] == base_segments, url
    assert "#" not in url.raw_path
