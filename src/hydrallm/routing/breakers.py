"""Per-model circuit breaker, shared by all requests of a process; the clock is injected.

closed --(N consecutive retryable failures, or a too-long Retry-After)--> open
open --(duration lapsed; one request probes)--> half-open
half-open --success--> closed;  half-open --failure--> open again

A failed probe reopens for `duration`, doubled only up to `max_duration` when that is set
above it.  By default it is not, so a primary that recovers after an outage of any length
is probed (by one real request) at most `duration` (30 s) later and traffic returns to it.
Limits of a single key (throttles, quotas) are kept by `routing.keys`, not here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from hydrallm.config import CooldownConfig, ModelConfig

State = Literal["closed", "open", "half-open"]
StateListener = Callable[[str, State, float], None]  # model id, new state, seconds open


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    open_until: float = 0.0
    duration: float = 0.0  # the last open period's length, doubled on re-open
    probing_since: float | None = None  # a half-open probe is in flight
    state: State = "closed"


class Breakers:
    def __init__(
        self,
        config: CooldownConfig,
        clock: Callable[[], float],
        on_change: StateListener | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}
        self._on_change = on_change

    def carry_over(self, old: Breakers, keep: set[str]) -> None:
        """Take the state of the models in `keep` from a previous config's breakers."""
        for model_id in keep:
            circuit = old._circuits.get(model_id)
            if circuit is not None:
                self._circuits[model_id] = circuit

    def state(self, model_id: str) -> tuple[State, float]:
        """Current state and seconds left open (0 when not open)."""
        c = self._circuits.get(model_id)
        if c is None or c.state == "closed":
            return "closed", 0.0
        now = self._clock()
        if c.state == "open" and now >= c.open_until:
            return "half-open", 0.0
        return c.state, max(0.0, c.open_until - now)

    def plan(self, chain: Sequence[ModelConfig]) -> list[ModelConfig]:
        """The models a starting request may try: open circuits left out, unless all are open."""
        if not self.config.enabled or not self._circuits:
            return list(chain)
        allowed = [m for m in chain if self._admit(m.id)]
        return allowed or list(chain)

    def _admit(self, model_id: str) -> bool:
        c = self._circuits.get(model_id)
        if c is None or c.state == "closed":
            return True
        now = self._clock()
        if c.state == "open":
            if now < c.open_until:
                return False
            self._set(model_id, c, "half-open")
            c.probing_since = now
            return True
        # half-open: one probe at a time; a probe that never reported (client went away)
        # frees the slot after one duration.
        if c.probing_since is None or now - c.probing_since > max(c.duration, 1.0):
            c.probing_since = now
            return True
        return False

    def release(self, model_id: str) -> None:
        """A request that was admitted as a half-open probe ended without asking the model
        (an earlier model answered): free the probe slot for the next request."""
        c = self._circuits.get(model_id)
        if c is not None and c.state == "half-open":
            c.probing_since = None

    @property
    def quiet(self) -> bool:
        """No circuit has ever left the closed state (the fast path of every request)."""
        return not self._circuits

    def success(self, model_id: str) -> None:
        c = self._circuits.get(model_id)
        if c is None:
            return
        c.failures = 0
        c.probing_since = None
        if c.state != "closed":
            c.duration = 0.0
            self._set(model_id, c, "closed")

    def failure(self, model_id: str, open_for: float | None = None) -> None:
        """A retryable failure; `open_for` opens the circuit at once for that long."""
        if not self.config.enabled:
            return
        c = self._circuits.setdefault(model_id, _Circuit())
        c.failures += 1
        now = self._clock()
        if c.state == "half-open" or (c.state == "open" and now >= c.open_until):
            cap = self.config.max_duration or self.config.duration
            duration = min(
                max(c.duration * 2, self.config.duration), max(cap, self.config.duration)
            )
            self._open(model_id, c, max(duration, open_for or 0.0), now)
        elif open_for is not None:
            self._open(model_id, c, max(open_for, 0.0), now)
        elif c.state == "closed" and c.failures >= self.config.failures:
            self._open(model_id, c, self.config.duration, now)

    def _open(self, model_id: str, c: _Circuit, duration: float, now: float) -> None:
        c.duration = duration
        c.open_until = now + duration
        c.probing_since = None
        self._set(model_id, c, "open")

    def _set(self, model_id: str, c: _Circuit, state: State) -> None:
        if c.state == state and state != "open":
            return
        c.state = state
        if self._on_change is not None:
            self._on_change(model_id, state, c.duration if state == "open" else 0.0)
