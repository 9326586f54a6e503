"""Per-model circuit breaker, shared by all requests of a process; the clock is injected.

closed --(N consecutive retryable failures, or a too-long Retry-After)--> open
open --(duration lapsed; one request probes)--> half-open
half-open --success--> closed;  half-open --failure--> open again

A failed probe reopens for `duration`, doubled only up to `max_duration` when that is set
above it.  By default it is not, so a primary that recovers after an outage of any length
is probed (by one real request) at most `duration` (30 s) later and traffic returns to it.
Limits of a single key (throttles, quotas) are kept by `routing.keys`, not here.

With a cluster (`shared` set, see `hydrallm.routing.shared`), opening and closing are
published as "breaker" records named by the model id, the run of failures of a closed
circuit as "<model id>#failures", records from other instances are adopted (`adopt`),
and a half-open model is probed only by the instance that holds its probe slot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from hydrallm.config import CooldownConfig, ModelConfig
from hydrallm.dataclass import dataclass

if TYPE_CHECKING:
    from hydrallm.routing.shared import Record, SharedState

State = Literal["closed", "open", "half-open"]
StateListener = Callable[[str, State, float], None]  # model id, new state, seconds open
KIND = "breaker"
# A "closed" record only has to outlive its propagation; a missing record means closed.
CLOSED_TTL = 60.0
# "<model id>#failures": the run of failures of a closed circuit, shared for `duration`.
FAILURES_SUFFIX = "#failures"


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
        self.shared: SharedState | None = None

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

    def plan(self, chain: Sequence[ModelConfig]) -> Sequence[ModelConfig]:
        """The models a starting request may try: open circuits left out, unless all are open
        (`chain` itself when none is left out)."""
        if not self.config.enabled or not self._circuits:
            return chain
        allowed = [m for m in chain if self._admit(m.id)]
        return allowed if allowed and len(allowed) != len(chain) else chain

    def _admit(self, model_id: str) -> bool:
        c = self._circuits.get(model_id)
        if c is None or c.state == "closed":
            return True
        now = self._clock()
        if c.state == "open":
            if now < c.open_until or not self._may_probe(model_id, c):
                return False
            self._set(model_id, c, "half-open")
            c.probing_since = now
            return True
        # half-open: one probe at a time; a probe that never reported (client went away)
        # frees the slot after one duration.
        stale = c.probing_since is None or now - c.probing_since > max(c.duration, 1.0)
        if stale and self._may_probe(model_id, c):
            c.probing_since = now
            return True
        return False

    def _may_probe(self, model_id: str, c: _Circuit) -> bool:
        """In a cluster, only the holder of the model's probe slot probes it."""
        if self.shared is None:
            return True
        return self.shared.may(_probe_slot(model_id), max(c.duration, 1.0))

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
        counted = c.failures
        c.failures = 0
        c.probing_since = None
        if c.state != "closed":
            c.duration = 0.0
            self._set(model_id, c, "closed")
            self._share(model_id, c)
        elif counted and self.shared is not None:
            self._share_failures(model_id, 0)  # the run of failures is broken, everywhere

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
        elif c.state == "closed" and self.shared is not None:
            self._share_failures(model_id, c.failures)

    def _open(self, model_id: str, c: _Circuit, duration: float, now: float) -> None:
        c.duration = duration
        c.open_until = now + duration
        c.probing_since = None
        self._set(model_id, c, "open")
        self._share(model_id, c)

    # --- cluster ------------------------------------------------------------------------

    def _record(self, c: _Circuit, now: float) -> tuple[Record, float]:
        if c.state == "closed":
            return {"state": "closed"}, CLOSED_TTL
        left = max(0.0, c.open_until - now)
        # Kept through half-open, so a re-open anywhere doubles the last duration.
        return {
            "state": "open",
            "open_ms": int(left * 1000),
            "duration": c.duration,
        }, left + (self.config.max_duration or self.config.duration)

    def _share(self, model_id: str, c: _Circuit) -> None:
        shared = self.shared
        if shared is None:
            return
        record, ttl = self._record(c, self._clock())
        shared.publish(KIND, model_id, record, ttl)
        shared.release(_probe_slot(model_id))

    def _share_failures(self, model_id: str, count: int) -> None:
        """The run of consecutive failures, counted across instances: each adopts the
        highest count it hears of, so the instance that sees the threshold opens."""
        assert self.shared is not None
        self.shared.publish(
            KIND, model_id + FAILURES_SUFFIX, {"failures": count}, self.config.duration
        )

    def snapshot(self) -> list[tuple[str, Record, float]]:
        """Every circuit that is not closed, as records (to publish again after an outage)."""
        now = self._clock()
        out = []
        for model_id, c in self._circuits.items():
            if c.state != "closed":
                record, ttl = self._record(c, now)
                out.append((model_id, record, ttl))
        return out

    def adopt(self, model_id: str, record: Record | None, age: float) -> None:
        """A breaker record another instance published `age` seconds ago."""
        if record is None or not self.config.enabled:
            return  # a record that lapsed says nothing new
        if model_id.endswith(FAILURES_SUFFIX):
            self._adopt_failures(model_id.removesuffix(FAILURES_SUFFIX), record)
            return
        state = record.get("state")
        now = self._clock()
        if state == "open":
            try:
                left = float(record["open_ms"]) / 1000 - age
                duration = float(record.get("duration", self.config.duration))
            except (KeyError, TypeError, ValueError):
                return
            c = self._circuits.setdefault(model_id, _Circuit())
            if c.state == "open" and abs(c.open_until - (now + left)) < 1.0:
                return  # already known (a periodic resync): no new log line
            c.failures = 0
            c.duration = min(max(duration, 0.0), self.config.max_duration or self.config.duration)
            c.open_until = now + left
            c.probing_since = None
            self._set(model_id, c, "open")
        elif state == "closed":
            c2 = self._circuits.get(model_id)
            if c2 is None:
                return
            c2.failures = 0
            c2.probing_since = None
            c2.duration = 0.0
            self._set(model_id, c2, "closed")
        if self.shared is not None:
            self.shared.forget_claim(_probe_slot(model_id))

    def _set(self, model_id: str, c: _Circuit, state: State) -> None:
        if c.state == state and state != "open":
            return
        c.state = state
        if self._on_change is not None:
            self._on_change(model_id, state, c.duration if state == "open" else 0.0)

    def _adopt_failures(self, model_id: str, record: Record) -> None:
        count = record.get("failures")
        if not isinstance(count, int):
            return
        c = self._circuits.get(model_id)
        if c is None:
            if count <= 0:
                return
            c = self._circuits.setdefault(model_id, _Circuit())
        if c.state == "closed":
            c.failures = max(c.failures, count) if count > 0 else 0


def _probe_slot(model_id: str) -> str:
    """The model's half-open probe slot in the shared store (asked only in a cluster, so
    the shared-state module loads with one, not at every start)."""
    from hydrallm.routing.shared import CLAIM_PREFIX

    return CLAIM_PREFIX + model_id
