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
