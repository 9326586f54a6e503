"""Joining endpoint URLs and client paths; no escape from the base."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hydrallm.providers.urls import UnsafePath, check_path, join, strip_version


def test_join_and_strip_version_prefix() -> None:
    base = "https://api.z.ai/api/coding/paas/v4"
    assert (
        join(base, "/v1/chat/completions", "", strip_version_prefix=True)
        == base + "/chat/completions"
    )
    assert (
        join(base + "/", "/v1/chat/completions", "a=1", strip_version_prefix=False)
        == base + "/v1/chat/completions?a=1"
    )
    assert join(
        "https://api.anthropic.com", "/v1/messages", "beta=true", strip_version_prefix=False
    ) == ("https://api.anthropic.com/v1/messages?beta=true")
    assert strip_version("/v12/x") == "/x"
    assert strip_version("/v1") == "/"
    assert strip_version("/vx/y") == "/vx/y"
    assert strip_version("/v1beta/models") == "/v1beta/models"


@pytest.mark.parametrize(
    "path",
    [
        "//evil.example/x",
        "/%2F%2Fevil/x",
        "/../x",
        "/v1/../../x",
        "/%2e%2e/x",
        "/a\\b",
        "/x%00",
        "evil.example/x",
        "http://evil/x",
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        check_path(path)


def test_dot_segments_that_stay_inside_are_fine() -> None:
    check_path("/v1/models/../chat/completions")
    check_path("/v1/./messages")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("/.%2eE5cC\\a:@?#")), max_size=20))
def test_no_accepted_path_leaves_the_base(path: str) -> None:
    from urllib.parse import unquote, urlsplit

    path = "/" + path
    try:
        check_path(path)
    except UnsafePath:
        return
    url = join("https://api.example.com/base", path, "", strip_version_prefix=False)
    parts = urlsplit(url)
    assert parts.netloc == "api.example.com"
    # Resolve dot segments of the decoded path: it stays under /base.
    stack: list[str] = []
    for seg in unquote(parts.path).split("/")[1:]:
        if seg == "..":
            assert stack, url
            stack.pop()
        elif seg not in ("", "."):
            stack.append(seg)
    assert stack[:1] == ["base"]


class _Endpoint:
    def __init__(self, url: str) -> None:
        self.url = url


def test_client_errors_name_endpoints_not_addresses() -> None:
    from hydrallm.providers.urls import scrub_upstream

    endpoints = {
        "zai": _Endpoint("https://user:pw@api.z.ai/api/paas/v4?key=abc"),
        "local": _Endpoint("http://127.0.0.1:8081"),
        "twin-a": _Endpoint("http://10.0.0.9:80/a"),
        "twin-b": _Endpoint("http://10.0.0.9/b"),
    }
    text = (
        "cannot connect to api.z.ai:443: refused; url='https://user:pw@api.z.ai/api/paas/v4/x?key=abc'"
        " | Connect call failed ('127.0.0.1', 8081) | 10.0.0.9:80 | http://elsewhere.example/x"
    )
    shown = scrub_upstream(text, endpoints)
    assert 'cannot connect to endpoint "zai": refused' in shown
    assert "url='endpoint \"zai\"'" in shown
    assert 'failed endpoint "local"' in shown
    # Two endpoints on one address: no guess, and no address either.
    assert "| the upstream | the upstream" in shown
    for leak in ("api.z.ai", "pw", "abc", "127.0.0.1", "10.0.0.9", "elsewhere"):
        assert leak not in shown, (leak, shown)
