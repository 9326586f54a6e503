"""Pure retry planning: which attempt comes next, and how long to wait before it.

The order is the original's: for cycle 1..max_cycles, for each model of the chain, up to
`attempts` tries.  Waits follow DECISIONS.md: only before another try of the *same* model
(its interval, exponential backoff, or an honoured Retry-After); moving on to the next model
is immediate; a new cycle waits the first model's interval; nothing after the last try.
A new cycle that comes back to the model just tried (a one-model chain, or every other
model skipped) is another try of that model, so its backoff and Retry-After apply: without
that, `max_cycles` would turn a one-model chain into a constant-interval loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from hydrallm.config import ModelConfig, RetryConfig
from hydrallm.dataclass import dataclass
from hydrallm.routing.outcome import Action

# What the last attempt's outcome asks of the plan: RETRY (another try of the same model is
# fine), FALLBACK (skip the rest of this model's tries in this cycle) or SKIP_MODEL (this
# model cannot be asked at all in this request).
Next = Action


# Not frozen: a frozen slots dataclass sets each field through object.__setattr__,
# about 0.15 µs a field on every request.  Treated as immutable all the same.
@dataclass(slots=True)
class Attempt:
    model: ModelConfig
    index: int  # position of the model in the chain
    cycle: int  # 1-based
    try_no: int  # 1-based try of this model within this cycle
    number: int  # 1-based attempt number within the request
    wait: float  # seconds to wait before sending it
    is_retry: bool  # another try of the same model as the previous attempt


class Planner:
    """Yields attempts one by one; told after each failure what it asks for."""

    def __init__(
        self,
        chain: Sequence[ModelConfig],
        retry: RetryConfig,
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._chain = chain
        self._retry = retry
        self._rand = rand
        self._cycle = 1
        self._index = 0
        self._try = 0  # tries made of the current model in this cycle
        self._number = 0
        self._retries: dict[int, int] = {}  # chain index -> retries so far in this request
        self._skipped: set[int] = set()
        self._started = False
        self._pending_wait: float | None = None  # Retry-After honoured for the next retry
        self._last: int | None = None  # chain index of the last attempt handed out
        self._before_last: int | None = None  # ... and of the one before, for withdraw()

    @property
    def attempts_made(self) -> int:
        return self._number

    def first(self) -> Attempt | None:
        """The request's first attempt: the chain's first model, at once."""
        self._started = True
        chain = self._chain
        if not chain:
            return None
        # Straight-line version of _advance(start=True): most requests need only this one
        # attempt, and skipping the general loop saves ~1 µs each.
        self._index = 0
        self._try = 1
        self._number = 1
        self._last = 0
        # Positional: keyword arguments to a dataclass cost ~0.5 µs more per call.
        # (model, index, cycle, try_no, number, wait, is_retry)
        return Attempt(chain[0], 0, 1, 1, 1, 0.0, False)

    def next(self, after: Next, retry_after: float | None = None) -> Attempt | None:
        """The attempt after a failed one, or None when the plan is exhausted."""
        if after is Next.SKIP_MODEL:
            self._skipped.add(self._index)
            self._try = self._chain[self._index].attempts
        elif after is Next.FALLBACK:
            self._try = self._chain[self._index].attempts
        self._pending_wait = retry_after
        return self._advance(start=False)

    def another_key(self) -> Attempt:
        """The same model again, at once, on another key of its pool (issue 15): a key that
        answered with a quota, an invalid-key or a long throttle does not use up one of the
        model's tries."""
        self._number += 1
        self._before_last, self._last = self._last, self._index
        return Attempt(
            model=self._chain[self._index],
            index=self._index,
            cycle=self._cycle,
            try_no=self._try,
            number=self._number,
            wait=0.0,
            is_retry=True,
        )

    def withdraw(self) -> None:
        """The attempt just handed out was not made (the request gave up, or skipped it).

        It is not counted; follow with `next(Next.SKIP_MODEL)` to move past its model.
        """
        self._number -= 1
        self._last = self._before_last

    def _advance(self, *, start: bool) -> Attempt | None:
        chain = self._chain
        if not chain:
            return None
        new_cycle = False
        while True:
            if (
                not start
                and self._try < chain[self._index].attempts
                and self._index not in self._skipped
            ):
                break
            if start:
                start = False
                self._index, self._try = 0, 0
            else:
                self._index += 1
                self._try = 0
            if self._index >= len(chain):
                if self._cycle >= self._retry.max_cycles:
                    return None
                self._cycle += 1
                self._index = 0
                new_cycle = True
            if len(self._skipped) >= len(chain):
                return None
            if self._index in self._skipped:
                self._try = chain[self._index].attempts
                continue
            break
        model = chain[self._index]
        wait = 0.0
        is_retry = self._last == self._index
        if is_retry:
            n = self._retries.get(self._index, 0) + 1
            self._retries[self._index] = n
            wait = self._backoff(model.interval, n)
            if self._pending_wait is not None:
                wait = max(wait, self._pending_wait)
        elif new_cycle:
            wait = self._jitter_constant(model.interval)
        self._pending_wait = None
        self._before_last, self._last = self._last, self._index
        self._try += 1
        self._number += 1
        return Attempt(
            model=model,
            index=self._index,
            cycle=self._cycle,
            try_no=self._try,
            number=self._number,
            wait=wait,
            is_retry=is_retry,
        )

    def _backoff(self, interval: float, n: int) -> float:
        """Wait before the n-th retry of a model within this request."""
        if not self._retry.exponential_backoff:
            return self._jitter_constant(interval)
        return backoff_wait(interval, n, self._retry.max_interval, self._rand())

    def _jitter_constant(self, interval: float) -> float:
        # Constant interval plus up to 10% above, so synchronized clients drift apart.
        return interval * (1.0 + 0.1 * self._rand())


def backoff_wait(interval: float, n: int, cap: float, r: float) -> float:
    """Exponential backoff with equal jitter: uniform in [v/2, v], v = min(interval*2^(n-1), cap).

    Never less than `interval`, so two tries of one model are always at least that far apart.
    """
    value = min(interval * float(2 ** (n - 1)), max(cap, interval))
    drawn = value / 2 + (value / 2) * r
    return max(drawn, interval)
