"""Retry planning: order, counts and waits (pure; no clock)."""

from __future__ import annotations

from hydrallm.config import ModelConfig, RetryConfig
from hydrallm.routing.plan import Next, Planner, backoff_wait


def chain(*attempts: int, interval: float = 0.1) -> list[ModelConfig]:
    return [
        ModelConfig(
            id=f"m{i}", endpoint="e", type="openai", model=f"m{i}", attempts=a, interval=interval
        )
        for i, a in enumerate(attempts)
    ]


def run_all(planner: Planner, after: Next = Next.RETRY) -> list[tuple[str, int, int, float]]:
    out = []
    att = planner.first()
    while att is not None:
        out.append((att.model.id, att.cycle, att.try_no, att.wait))
        att = planner.next(after)
    return out


def test_attempts_times_models_times_cycles_in_order() -> None:
    seq = run_all(Planner(chain(2, 1, 3), RetryConfig(max_cycles=2), rand=lambda: 0.0))
    assert [(m, c, t) for m, c, t, _ in seq] == [
        ("m0", 1, 1),
        ("m0", 1, 2),
        ("m1", 1, 1),
        ("m2", 1, 1),
        ("m2", 1, 2),
        ("m2", 1, 3),
        ("m0", 2, 1),
        ("m0", 2, 2),
        ("m1", 2, 1),
        ("m2", 2, 1),
        ("m2", 2, 2),
        ("m2", 2, 3),
    ]


def test_waits_only_before_a_retry_of_the_same_model_and_at_a_new_cycle() -> None:
    seq = run_all(Planner(chain(2, 1), RetryConfig(max_cycles=2), rand=lambda: 0.0))
    waits = [w for *_, w in seq]
    # first try: none; retry of m0: interval; move to m1: none; new cycle: first model's interval
    assert waits == [0.0, 0.1, 0.0, 0.1, 0.1, 0.0]


def test_constant_interval_jitter_is_at_most_ten_percent_above() -> None:
    seq = run_all(Planner(chain(3), RetryConfig(max_cycles=1), rand=lambda: 1.0))
    assert [round(w, 6) for *_, w in seq] == [0.0, 0.11, 0.11]


def test_fallback_skips_the_rest_of_the_models_tries() -> None:
    seq = run_all(Planner(chain(3, 2), RetryConfig(max_cycles=1)), after=Next.FALLBACK)
    assert [(m, t) for m, _, t, _ in seq] == [("m0", 1), ("m1", 1)]


def test_skip_model_drops_it_for_the_whole_request() -> None:
    planner = Planner(chain(2, 1), RetryConfig(max_cycles=3), rand=lambda: 0.0)
    att = planner.first()
    assert att is not None and att.model.id == "m0"
    att = planner.next(Next.SKIP_MODEL)
    seen = []
    while att is not None:
        seen.append(att.model.id)
        att = planner.next(Next.RETRY)
    assert seen == ["m1", "m1", "m1"]


def test_retry_after_is_honoured_when_longer_than_the_interval() -> None:
    planner = Planner(chain(2), RetryConfig(max_cycles=1), rand=lambda: 0.0)
    planner.first()
    att = planner.next(Next.RETRY, retry_after=2.0)
    assert att is not None and att.wait == 2.0


def test_exponential_backoff_doubles_with_equal_jitter_and_cap() -> None:
    retry = RetryConfig(max_cycles=1, exponential_backoff=True, max_interval=0.5)
    seq = run_all(Planner(chain(6, interval=0.1), retry, rand=lambda: 1.0))
    assert [round(w, 6) for *_, w in seq] == [0.0, 0.1, 0.2, 0.4, 0.5, 0.5]
    low = run_all(Planner(chain(6, interval=0.1), retry, rand=lambda: 0.0))
    # Equal jitter draws from [v/2, v] but never below the interval.
    assert [round(w, 6) for *_, w in low] == [0.0, 0.1, 0.1, 0.2, 0.25, 0.25]


def test_backoff_wait_never_below_interval() -> None:
    for n in range(1, 10):
        for r in (0.0, 0.3, 1.0):
            assert backoff_wait(0.2, n, 10.0, r) >= 0.2


def test_attempts_made_counts() -> None:
    planner = Planner(chain(1, 1), RetryConfig(max_cycles=3))
    assert len(run_all(planner)) == 6
    assert planner.attempts_made == 6
