"""The engine's per-request key API (routing.pooling) with injected clocks, no sockets."""

from __future__ import annotations

from hydrallm.config import Config, EndpointConfig, ModelConfig
from hydrallm.formats.body import parse_body
from hydrallm.providers.base import ClientRequest
from hydrallm.routing.affinity import Affinity
from hydrallm.routing.keys import KeyPools, Step
from hydrallm.routing.pooling import for_request, with_retry_after
from hydrallm.testing import limits as sig

KEYS = ("sk-unit-aaaa0001", "sk-unit-bbbb0002")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_790_000_000.0 + self.now


def setup(mode: str = "key") -> tuple[KeyPools, Affinity, Clock, Config]:
    clock = Clock()
    cfg = Config(
        endpoints={
            "team": EndpointConfig(name="team", url="http://t", api_keys=KEYS),
            "spare": EndpointConfig(name="spare", url="http://s", api_keys=("sk-spare-key-9999",)),
        },
        models={
            "main": ModelConfig(id="main", endpoint="team", type="openai", model="m1"),
            "spare": ModelConfig(id="spare", endpoint="spare", type="openai", model="m2"),
        },
    )
    return KeyPools(cfg, clock, clock.wall), Affinity(mode, 300, clock), clock, cfg


def request(session: str | None = None) -> ClientRequest:
    body = b'{"model":"x","messages":[{"role":"user","content":"hi"}]}'
    headers = (("session-id", session),) if session else ()
    return ClientRequest("POST", "/v1/chat/completions", "", headers, body, parse_body(body), False)


def test_choose_applies_only_the_chosen_key() -> None:
    pools, aff, clock, cfg = setup()
    keyed = for_request(pools, aff, request(), clock.wall)
    assert keyed is not None
    chosen = keyed.choose(cfg.endpoints["team"])
    assert chosen is not None and chosen.endpoint.api_key == KEYS[0]
    again = keyed.choose(cfg.endpoints["team"])
    assert again is not None and again.endpoint is chosen.endpoint  # made once per key


def test_quota_then_all_sleeping_then_earliest_and_hold() -> None:
    pools, aff, clock, cfg = setup()
    keyed = for_request(pools, aff, request(), clock.wall)
    assert keyed is not None
    team = cfg.endpoints["team"]
    for reset in (600.0, 90.0):
        chosen = keyed.choose(team)
        assert chosen is not None
        fault = sig.zai_usage_limit(reset, now=clock.wall())
        headers = dict(fault.headers)
        decision = keyed.answered(chosen, 429, headers.get, fault.body or b"")
        assert decision.step is Step.NEXT_KEY
    assert keyed.choose(team) is None
    chain = [cfg.models["main"]]
    end = keyed.at_end(chain, hold_left=0.0)
    assert end is not None and 89 <= end.earliest <= 91 and end.hold is None
    held = keyed.at_end(chain, hold_left=120.0)
    assert held is not None and held.hold == held.earliest
    # A chain with an endpoint that has a ready key: nothing to announce.
    assert keyed.at_end([cfg.models["main"], cfg.models["spare"]], 0.0) is None


def test_retry_after_header_is_replaced_with_whole_seconds() -> None:
    headers = [("Content-Type", "application/json"), ("retry-after", "7999")]
    assert with_retry_after(headers, 89.2) == [
        ("Content-Type", "application/json"),
        ("Retry-After", "90"),
    ]


def test_session_affinity_through_the_request_api() -> None:
    pools, aff, clock, cfg = setup("session")
    team = cfg.endpoints["team"]
    first = for_request(pools, aff, request("s-1"), clock.wall)
    assert first is not None
    chosen = first.choose(team)
    assert chosen is not None and chosen.key is not None and chosen.key.index == 0
    # Served by the second key (the first was busy), the session remembers key 2 ...
    second = first.choose(team, retry_key=1)
    assert second is not None and second.key is not None and second.key.index == 1
    first.served(cfg.models["spare"], second)
    later = for_request(pools, aff, request("s-1"), clock.wall)
    assert later is not None
    chain = later.session_chain([cfg.models["main"], cfg.models["spare"]])
    assert [m.id for m in chain] == ["spare", "main"]  # ... and its model
    other = for_request(pools, aff, request("s-2"), clock.wall)
    assert other is not None
    assert [m.id for m in other.session_chain([cfg.models["main"], cfg.models["spare"]])] == [
        "main",
        "spare",
    ]


def test_no_pools_no_per_request_work() -> None:
    clock = Clock()
    cfg = Config(endpoints={"open": EndpointConfig(name="open", url="http://o")})
    assert for_request(KeyPools(cfg, clock, clock.wall), None, request(), clock.wall) is None
