"""Joining endpoint URLs and client paths; no escape from the base."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hydrallm.proxy.urls import UnsafePath, check_path, join, strip_version


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
