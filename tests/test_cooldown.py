"""Circuit breaker transitions with an injected clock."""

from __future__ import annotations

from hydrallm.config import CooldownConfig, ModelConfig
from hydrallm.routing.breakers import Breakers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def models(*ids: str) -> list[ModelConfig]:
    return [ModelConfig(id=i, endpoint="e", type="openai", model=i) for i in ids]


def test_opens_after_consecutive_failures_and_skips_model() -> None:
    clock = Clock()
    changes: list[tuple[str, str]] = []
    b = Breakers(
        CooldownConfig(failures=3, duration=30), clock, lambda m, s, d: changes.append((m, s))
    )
    chain = models("a", "b")
    b.failure("a")
    b.failure("a")
    assert [m.id for m in b.plan(chain)] == ["a", "b"]
    b.failure("a")
    assert b.state("a")[0] == "open"
    assert [m.id for m in b.plan(chain)] == ["b"]
    assert changes == [("a", "open")]


def test_success_resets_the_count() -> None:
    b = Breakers(CooldownConfig(failures=2), Clock())
    b.failure("a")
    b.success("a")
    b.failure("a")
    assert b.state("a")[0] == "closed"


def test_half_open_probe_then_close_or_reopen_doubled() -> None:
    clock = Clock()
    b = Breakers(CooldownConfig(failures=1, duration=10, max_duration=25), clock)
    chain = models("a", "b")
    b.failure("a")
    clock.now += 10
    assert b.state("a")[0] == "half-open"
    assert [m.id for m in b.plan(chain)] == ["a", "b"]  # the probe
    assert [m.id for m in b.plan(chain)] == ["b"]  # only one probe at a time
    b.failure("a")
    state, left = b.state("a")
    assert state == "open" and left == 20
    clock.now += 20
    b.plan(chain)
    b.failure("a")
    assert b.state("a") == ("open", 25)  # capped at max_duration
    clock.now += 25
    b.plan(chain)
    b.success("a")
    assert b.state("a")[0] == "closed"


def test_all_open_means_try_all() -> None:
    b = Breakers(CooldownConfig(failures=1), Clock())
    b.failure("a")
    b.failure("b")
    assert [m.id for m in b.plan(models("a", "b"))] == ["a", "b"]


def test_retry_after_opens_for_that_long() -> None:
    b = Breakers(CooldownConfig(failures=5), Clock())
    b.failure("a", open_for=120)
    assert b.state("a") == ("open", 120)


def test_disabled_never_opens() -> None:
    b = Breakers(CooldownConfig(enabled=False, failures=1), Clock())
    b.failure("a")
    assert b.state("a")[0] == "closed"


def test_a_probe_slot_not_used_is_released() -> None:
    clock = Clock()
    b = Breakers(CooldownConfig(failures=1, duration=10), clock)
    chain = models("a", "b")
    b.failure("b")
    clock.now += 10
    assert [m.id for m in b.plan(chain)] == ["a", "b"]  # b admitted as the probe
    # "a" answered, so "b" was never asked: the next request may probe it.
    b.release("b")
    assert [m.id for m in b.plan(chain)] == ["a", "b"]
    b.release("a")  # closed circuits are untouched
    assert b.state("a")[0] == "closed"


def test_primary_back_within_30s_after_a_60s_outage_with_the_defaults() -> None:
    """Defaults (failures 3, duration 30s, no max_duration): the primary fails for 60 s; every
    request in that time that is admitted as a probe fails.  After it recovers, the next
    probe (one real request) is at most 30 s later, whatever the outage's length."""
    for outage in (60.0, 600.0, 3600.0):
        clock = Clock()
        b = Breakers(CooldownConfig(), clock)
        chain = models("primary", "fallback")
        start = clock.now
        recovered_at = start + outage
        back_at = None
        while back_at is None:
            plan = [m.id for m in b.plan(chain)]
            if plan[0] == "primary":
                if clock.now < recovered_at:
                    b.failure("primary")
                else:
                    b.success("primary")
                    back_at = clock.now
            clock.now += 1.0  # one request a second
        assert back_at - recovered_at <= 30.0, outage
        assert b.state("primary")[0] == "closed"


def test_explicit_max_duration_still_doubles() -> None:
    clock = Clock()
    b = Breakers(CooldownConfig(failures=1, duration=10, max_duration=40), clock)
    b.failure("a")
    clock.now += 10
    b.plan(models("a"))
    b.failure("a")
    assert b.state("a") == ("open", 20)
