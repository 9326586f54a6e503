"""Key pools with an injected clock: strategies, sleeps, look-ahead, invalid keys, labels."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hydrallm.config import AwsCredential, Config, EndpointConfig, ModelConfig
from hydrallm.config.load import parse_config
from hydrallm.providers.anthropic import AnthropicProvider
from hydrallm.providers.openai import OpenAIProvider
from hydrallm.routing.keys import (
    KeyPool,
    KeyPools,
    Step,
    all_sleeping_error,
    hold_for,
    label_for,
    retry_after_seconds,
)
from hydrallm.routing.limits import Budget, Kind, Limit, Policy, budget, classify
from hydrallm.testing import limits as sig
from hydrallm.testing.faults import Fault

KEYS = ("sk-live-aaaa1111", "sk-live-bbbb2222", "sk-live-cccc3333")
WALL0 = 1_790_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL0 + self.now


def pool(
    strategy: str = "fill-first", keys: tuple[str, ...] = KEYS
) -> tuple[KeyPool, Clock, list[str]]:
    clock, logged = Clock(), []
    p = KeyPool("team", keys, strategy, Policy(), clock, clock.wall, logged.append)  # type: ignore[arg-type]
    return p, clock, logged


def answer(p: KeyPool, clock: Clock, fault: Fault) -> Step:
    """Feed one upstream answer for the key `pick()` gives, as the engine would."""
    key = p.pick()
    assert key is not None
    headers = {k.lower(): v for k, v in fault.headers}
    limit = classify(fault.status_code, headers.get, fault.body or b"", clock.wall(), p.policy)
    p.observe(key, budget(headers.get, clock.wall()))
    return p.outcome(key, limit).step


def labels(p: KeyPool) -> list[str | None]:
    key = p.pick()
    return [key.label if key else None]


def test_labels_mask_keys() -> None:
    assert label_for("sk-live-aaaa1111", 0) == "…1111"
    assert label_for("shortkey", 1) == "…#2"
    assert label_for(AwsCredential(profile="team-a"), 0) == "profile:team-a"
    assert (
        label_for(AwsCredential(access_key_id="AKIAEXAMPLE7777", secret_access_key="s"), 0)
        == "…7777"
    )
    p, _, _ = pool(keys=("x-111111111", "y-111111111"))
    assert [k.label for k in p.keys] == ["…1111#1", "…1111#2"]
    assert "sk-live" not in repr(p.keys[0])


def test_fill_first_moves_on_after_a_quota_and_never_probes_before_the_reset() -> None:
    p, clock, _ = pool()
    assert answer(p, clock, sig.openai_quota()) is Step.NEXT_KEY
    first = p.keys[0]
    assert p.state(first) == "exhausted"
    for _ in range(5):
        clock.now += 60
        picked = p.pick()
        assert picked is not None and picked.index == 1
    clock.now = 500.0 + 899  # quota_duration (15 min) not yet over
    assert p.pick() is p.keys[1]
    clock.now = 500.0 + 900
    assert p.pick() is first and p.state(first) == "ready"


def test_quota_sleeps_until_the_stated_reset() -> None:
    p, clock, _ = pool()
    answer(p, clock, sig.zai_usage_limit(2 * 3600, now=clock.wall()))
    assert p.pick() is p.keys[1]
    clock.now += 2 * 3600 - 5
    assert p.pick() is p.keys[1]
    clock.now += 6
    assert p.pick() is p.keys[0]


def test_short_throttle_retries_the_same_key() -> None:
    p, clock, _ = pool()
    key = p.pick()
    assert key is not None
    decision = p.outcome(key, Limit(Kind.THROTTLE, 2.0, "rate_limit_exceeded"))
    assert decision.step is Step.RETRY_SAME and decision.wait == 2.0
    # Meanwhile other requests start on the next key; the retry after the wait finds it ready.
    assert p.pick() is p.keys[1]
    clock.now += 2
    assert p.ready(key)


def test_throttle_longer_than_max_retry_after_moves_on_and_marks_throttled() -> None:
    p, clock, _ = pool()
    assert answer(p, clock, sig.anthropic_throttle(45, now=clock.wall())) is Step.NEXT_KEY
    assert p.snapshot()[0]["state"] == "throttled"
    clock.now += 45
    assert p.pick() is p.keys[0]


def test_look_ahead_skips_a_key_at_zero_remaining() -> None:
    p, clock, _ = pool()
    ok_at_zero = Fault(headers=tuple(sig.openai_budget(0, 100, 30).items()))
    assert answer(p, clock, ok_at_zero) is Step.NOT_A_LIMIT  # the answer itself was served
    assert p.pick() is p.keys[1]  # the next request does not spend one on key 1
    clock.now += 30
    assert p.pick() is p.keys[0]


def test_invalid_key_is_taken_out_and_reported_once() -> None:
    p, clock, logged = pool()
    assert answer(p, clock, sig.openai_invalid()) is Step.NEXT_KEY
    p.outcome(p.keys[0], Limit(Kind.INVALID, None, "401"))
    assert logged == [
        'endpoint "team": key …1111 was refused (HTTP 401); it is left out until the config'
        " is reloaded"
    ]
    clock.now += 10**6
    assert p.pick() is p.keys[1]
    assert p.snapshot()[0] == {
        "label": "…1111",
        "state": "invalid",
        "until": None,
        "cache_hit_ratio": {},
    }


def test_round_robin_and_least_limited() -> None:
    p, _, _ = pool("round-robin")
    picks = [p.pick() for _ in range(4)]
    assert [k.index for k in picks if k] == [0, 1, 2, 0]
    q, _, _ = pool("least-limited")
    q.observe(q.keys[0], Budget(0.1, None))
    q.observe(q.keys[1], Budget(0.9, None))
    q.observe(q.keys[2], Budget(0.5, None))
    assert q.pick() is q.keys[1]


def test_affinity_preference_only_while_ready() -> None:
    p, _, _ = pool()
    assert p.pick(prefer=2) is p.keys[2]
    p.outcome(p.keys[2], Limit(Kind.QUOTA, None, "x"))
    assert p.pick(prefer=2) is p.keys[0]


def test_all_keys_sleeping_gives_the_earliest_reset() -> None:
    p, clock, _ = pool()
    for wait in (300.0, 120.0, 3600.0):
        key = p.pick()
        assert key is not None
        p.outcome(key, Limit(Kind.QUOTA, wait, "x"))
    assert p.pick() is None
    assert p.earliest_reset() == pytest.approx(120.0)
    clock.now += 100
    assert p.earliest_reset() == pytest.approx(20.0)
    assert hold_for(20.0, 30.0) == 20.0
    assert hold_for(20.0, 0.0) is None and hold_for(60.0, 30.0) is None


def test_proxy_made_429_is_in_the_clients_format_with_whole_seconds() -> None:
    status, headers, body = all_sleeping_error(AnthropicProvider(), 119.2)
    assert status == 429 and ("Retry-After", "120") in headers
    assert b'"rate_limit_error"' in body
    status, headers, body = all_sleeping_error(OpenAIProvider(), 0.3)
    assert ("Retry-After", "1") in headers and b'"error"' in body
    assert retry_after_seconds(2.0) == "2"


def test_snapshot_until_is_iso_utc_and_never_shows_a_key() -> None:
    p, clock, _ = pool()
    p.outcome(p.keys[0], Limit(Kind.QUOTA, 60.0, "x"))
    snap = p.snapshot()
    expected = datetime.fromtimestamp(clock.wall() + 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert snap[0]["until"] == expected
    assert all(secret not in repr(snap) for secret in KEYS)


CONFIG = """
[providers.team]
url = "https://api.example.com"
api_key = "$KEY_A"
api_keys = ["$KEY_A", "$KEY_B", "$KEY_MISSING", "literal-key-0000"]
key_strategy = "round-robin"

[providers.aws]
aws_profiles = ["team-a"]
aws_key_pairs = [{access_key_id = "$AWS_ID", secret_access_key = "$AWS_SECRET"}]

[models.m]
provider = "team"
type = "openai"
model = "gpt"

[models.b]
provider = "aws"
type = "bedrock"
model = "anthropic.claude"

[routing]
affinity = "session"
affinity_ttl = "10m"

[retry]
quota_threshold = "20m"
hold = "1m"

[cooldown]
quota_duration = "1h"

[[listeners]]
name = "x"
port = 9999
models = ["m"]

[[listeners]]
name = "y"
port = 9998
models = ["b"]
"""


def test_config_pool_keys_resolved_and_unset_left_out() -> None:
    env = {
        "KEY_A": "sk-a-123456789",
        "KEY_B": "sk-b-987654321",
        "AWS_ID": "AKIA1",
        "AWS_SECRET": "s3",
    }
    cfg = parse_config(CONFIG, env=env)
    team = cfg.endpoints["team"]
    assert team.api_keys == ("sk-a-123456789", "sk-b-987654321", "literal-key-0000")
    assert team.key_strategy == "round-robin"
    assert any("KEY_MISSING" in w and "left out of the pool" in w for w in cfg.warnings)
    assert cfg.endpoints["aws"].aws_pool == (
        AwsCredential(profile="team-a"),
        AwsCredential(None, "AKIA1", "s3", None),
    )
    assert cfg.routing.affinity == "session" and cfg.routing.affinity_ttl == 600
    assert cfg.retry.quota_threshold == 1200 and cfg.retry.hold == 60
    assert cfg.cooldown.quota_duration == 3600
    assert "sk-b-987654321" in cfg.secrets and "s3" in cfg.secrets
    assert "sk-b" not in repr(team)  # the pool is not in the repr
    only_pool = parse_config(CONFIG.replace('api_key = "$KEY_A"\n', ""), env=env)
    # A path that does not choose from the pool still sends a pool key, never the client's.
    assert only_pool.endpoints["team"].api_key == "sk-a-123456789"


def test_config_defaults_and_bad_values() -> None:
    cfg = Config()
    assert cfg.routing.affinity == "key" and cfg.routing.affinity_ttl == 300
    assert cfg.retry.quota_threshold == 600 and cfg.retry.hold == 0
    from hydrallm.errors import ConfigError

    bad = CONFIG.replace('"round-robin"', '"random"').replace('"session"', '"sticky"')
    with pytest.raises(ConfigError) as caught:
        parse_config(bad, env={})
    text = str(caught.value)
    assert "key_strategy" in text and "round-robin" in text
    assert "routing.affinity" in text


def test_pools_carry_sleeps_over_a_reload_but_not_invalid() -> None:
    clock = Clock()
    ep = EndpointConfig(name="e", url="http://x", api_keys=KEYS)
    cfg = Config(
        endpoints={"e": ep, "plain": EndpointConfig(name="plain", url="http://y")},
        models={"m": ModelConfig(id="m", endpoint="e", type="openai", model="m")},
    )
    old = KeyPools(cfg, clock, clock.wall)
    e = old.get("e")
    assert e is not None and old.get("plain") is None
    e.outcome(e.keys[0], Limit(Kind.QUOTA, 100.0, "x"))
    e.outcome(e.keys[1], Limit(Kind.INVALID, None, "401"))
    new = KeyPools(cfg, clock, clock.wall)
    new.carry_over(old)
    fresh = new.get("e")
    assert fresh is not None
    assert [fresh.state(k) for k in fresh.keys] == ["exhausted", "ready", "ready"]
    assert new.earliest_reset(["e"]) == 0.0
    assert new.earliest_reset(["plain"]) == 0.0
    assert new.snapshot()["e"]["keys"][0]["label"] == "…1111"  # type: ignore[index]
