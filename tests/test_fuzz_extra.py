"""URL joining fuzzed as the transport sees it (issue 8): any accepted path, query or
encoded form stays on the endpoint's host and under its base path.

The examples are bounded for CI; `HYDRALLM_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_extra.py`
runs a longer search locally.
"""

from __future__ import annotations

import json
import os
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from hydrallm.formats.body import BodyError, parse_strict
from hydrallm.providers.urls import UnsafePath, check_path, join

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


# --- issue 14: encoded separators, every way an upstream may read them --------------------

_ENCODED = st.sampled_from(
    [
        "/",
        "..",
        ".",
        "%2F",
        "%2f",
        "%5C",
        "%5c",
        "%2E",
        "%2e",
        "%2E%2E",
        ".%2e",
        "%252F",
        "%252E",
        "%25252F",
        "%255C",
        "%25%32%65",
        "%25%32%46",
        "%c0%ae",
        "%c0%af",
        "%e0%80%ae",
        "%ff",
        "..;",
        ";",
        "v1",
        "x",
        "y",
        "%20",
    ]
)
_ENCODED_PATHS = st.lists(_ENCODED, min_size=1, max_size=14).map(lambda p: "/" + "".join(p))


def _walk(segments: list[str]) -> list[str] | None:
    stack: list[str] = []
    for seg in segments:
        name = seg.split(";", 1)[0]
        if name == "..":
            if not stack:
                return None
            stack.pop()
        elif name not in ("", "."):
            stack.append(seg)
    return stack


def _readings(raw: str) -> dict[str, list[str] | None]:
    """How different upstreams resolve the forwarded path (relative to the base)."""
    once = unquote(raw)
    return {
        # RFC 3986 / WHATWG: split on the raw "/", a segment of %2e%2e is a dot segment.
        "split-then-decode": _walk([unquote(s) for s in raw.split("/")[1:]]),
        # Servers that decode %2F before resolving dot segments.
        "decode-then-split": _walk(once.split("/")[1:]),
        # Servers (or a WAF in front of them) that decode twice.
        "decode-twice": _walk(unquote(once).split("/")[1:]),
        # Windows-style servers that treat a backslash as a separator.
        "backslash": _walk(once.replace("\\", "/").split("/")[1:]),
    }


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ENCODED_PATHS)
@example("/v1%2Fx%2Fy%2Fz/../../../../other/secret")
@example("/v1/%252e%252e/%252e%252e/x")
@example("/v1/..;/..;/x")
def test_no_reading_of_an_accepted_path_climbs_the_base(path: str) -> None:
    try:
        check_path(path)
    except UnsafePath:
        return
    for how, resolved in _readings(path).items():
        assert resolved is not None, f"{path!r} climbs above the base when read {how}"


# --- issue 14: bodies that are not strictly one JSON object ---------------------------------

_VALID_OBJECTS = st.dictionaries(
    st.sampled_from(["model", "messages", "stream", "n", "x", "é"]),
    st.one_of(st.text(max_size=6), st.integers(), st.booleans(), st.none()),
    max_size=5,
).map(lambda d: json.dumps(d, ensure_ascii=False).encode())

_MUTATIONS = st.sampled_from(
    [
        lambda b: b"\xef\xbb\xbf" + b,  # byte-order mark
        lambda b: b + b"x",  # trailing data
        lambda b: b + b' {"model":"other"}',  # a second object
        lambda b: b + b"\x00",
        lambda b: b[:-1] + b',"model":"dup"}' if b != b"{}" else b'{"model":"a","model":"b"}',
        lambda b: b.replace(b"}", b',"t":NaN}', 1),
        lambda b: b.replace(b"}", b',"t":-Infinity}', 1),
        lambda b: b.replace(b"{", b'{"s":"\xff\xfe",', 1),  # invalid UTF-8 in a string
        lambda b: b.replace(b"{", b'{"s":"\xed\xa0\x80",', 1),  # an encoded surrogate
        lambda b: b.replace(b"{", b'{"s":"\xc0\xaf",', 1),  # an overlong form
        lambda b: b[: len(b) // 2],  # cut short
        lambda b: b,  # unchanged: must be accepted
    ]
)


def _strict_model(raw: bytes) -> tuple[bool, object]:
    """What a strict reader makes of `raw`: (accepted, the single top-level model or None)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False, None
    if text.startswith("\ufeff"):
        return False, None

    def no_constants(name: str) -> object:
        raise ValueError(name)

    pairs_seen: list[list[tuple[str, object]]] = []

    def hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        pairs_seen.append(pairs)
        return dict(pairs)

    try:
        value = json.loads(text, parse_constant=no_constants, object_pairs_hook=hook)
    except ValueError:
        return False, None
    if not isinstance(value, dict):
        return False, None
    top = pairs_seen[-1]
    models = [v for k, v in top if k == "model"]
    if len(models) > 1:
        return False, None
    return True, models[0] if models else None


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_VALID_OBJECTS, _MUTATIONS)
def test_strict_parse_accepts_exactly_what_a_strict_reader_does(raw: bytes, mutate: object) -> None:
    body = mutate(raw)  # type: ignore[operator]
    accepted, model = _strict_model(body)
    try:
        parsed = parse_strict(body)
    except BodyError as exc:
        assert not accepted, f"{body!r} refused ({exc}) though it is strict JSON"
        assert str(exc)
        return
    assert accepted, f"{body!r} accepted though it is not strictly one JSON object"
    assert parsed.requested_model == (model if isinstance(model, str) else None)
    # The rewrite is what reaches the upstream: exactly one model, the one routed to.
    rewritten = json.loads(parsed.with_model("routed"))
    assert rewritten["model"] == "routed"
