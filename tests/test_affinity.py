"""Session affinity with an injected clock: naming sessions, TTLs, LRU bound, no prompt kept."""

from __future__ import annotations

import json

from hydrallm.routing.affinity import Affinity, preferred_order, session_of


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CHAT = {
    "model": "gpt",
    "messages": [
        {"role": "system", "content": "You are a secret-keeping assistant."},
        {"role": "user", "content": "my very private first question"},
    ],
}


def test_agent_headers_name_the_session_first() -> None:
    for header in ("X-Claude-Code-Session-Id", "session-id", "x-session-affinity"):
        a = session_of([(header, "abc")], CHAT)
        b = session_of([(header, "abc")], {"metadata": {"user_id": "u"}})
        assert a is not None and b is not None and a.id == b.id
    other = session_of([("X-Claude-Code-Session-Id", "xyz")], CHAT)
    assert other is not None and other.id != session_of([("session-id", "abc")], CHAT).id  # type: ignore[union-attr]


def test_body_names_then_prompt_hash() -> None:
    cache_key = session_of([], {**CHAT, "prompt_cache_key": "k1"})
    user = session_of([], {**CHAT, "metadata": {"user_id": "user-1"}})
    by_prompt = session_of([], CHAT)
    assert cache_key and user and by_prompt
    assert len({cache_key.id, user.id, by_prompt.id}) == 3
    later_turn = {**CHAT, "messages": [*CHAT["messages"], {"role": "assistant", "content": "x"}]}  # type: ignore[list-item]
    assert session_of([], later_turn).id == by_prompt.id  # type: ignore[union-attr]
    assert session_of([], {"model": "gpt"}) is None
    assert session_of([], None) is None


def test_no_prompt_text_is_kept() -> None:
    clock = Clock()
    aff = Affinity("session", 300, clock)
    session = session_of([], CHAT)
    aff.remember(session, "m1", "e1", 0)
    kept = repr(aff._entries) + repr(session)
    assert "private" not in kept and "secret-keeping" not in kept


def test_key_mode_keeps_the_key_until_the_ttl() -> None:
    clock = Clock()
    aff = Affinity("key", 300, clock)
    s = session_of([("session-id", "s1")], None)
    aff.remember(s, "m1", "team", 2)
    clock.now = 299
    assert aff.key_for(s, "team") == 2
    assert aff.key_for(s, "other") is None
    assert aff.model_for(s) is None  # "key" mode never changes the chain
    clock.now = 299 + 301  # idle longer than the TTL since the last use
    assert aff.key_for(s, "team") is None


def test_session_mode_stays_on_the_fallback_model() -> None:
    clock = Clock()
    aff = Affinity("session", 300, clock)
    s = session_of([("session-id", "s1")], None)
    aff.remember(s, "fallback", "e2", None)
    assert aff.model_for(s) == "fallback"
    assert preferred_order(["primary", "fallback", "third"], "fallback") == [
        "fallback",
        "primary",
        "third",
    ]
    clock.now = 301
    assert aff.model_for(s) is None
    assert preferred_order(["primary", "fallback"], None) == ["primary", "fallback"]


def test_one_hour_cache_control_keeps_the_session_an_hour() -> None:
    clock = Clock()
    aff = Affinity("session", 300, clock)
    body = {
        "model": "claude",
        "system": [
            {"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        "messages": [{"role": "user", "content": "hi"}],
    }
    raw = json.dumps(body).encode()
    s = session_of([], body, raw)
    assert s is not None and s.long_cache
    aff.remember(s, "m", "e", 0)
    clock.now = 3599
    assert aff.model_for(s) == "m"
    clock.now = 3601
    assert aff.model_for(s) is None


def test_off_remembers_nothing_and_memory_is_bounded() -> None:
    clock = Clock()
    off = Affinity("off", 300, clock)
    s = session_of([("session-id", "s")], None)
    off.remember(s, "m", "e", 1)
    assert len(off) == 0 and off.key_for(s, "e") is None
    aff = Affinity("key", 300, clock, max_sessions=3)
    for i in range(5):
        aff.remember(session_of([("session-id", f"s{i}")], None), "m", "e", i)
    assert len(aff) == 3
    assert aff.key_for(session_of([("session-id", "s0")], None), "e") is None
    assert aff.key_for(session_of([("session-id", "s4")], None), "e") == 4
