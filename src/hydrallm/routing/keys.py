"""Key pools: which of an endpoint's keys serves the next attempt, and what each key's state is.

One `KeyPool` per endpoint with a key (`api_key`, `api_keys`, or Bedrock `aws_profiles` /
`aws_key_pairs`), shared by every request of a config generation.  Clocks are injected:
`clock` (monotonic) times the sleeps, `wall` (epoch seconds) reads reset headers and
shows `until` as ISO-8601 UTC.

States: ready; throttled until T; exhausted until T (a quota); invalid (refused: out until
the config is reloaded).  Keys are secrets: a `Key` shows only its label (`…` + last 4
characters; `…#N` for keys of 8 characters or fewer), and only `Key.secret` (read by the
engine to sign one request) holds the value.

With a cluster, each change of a key's state (throttled / exhausted until, invalid, a
budget share that moved a tenth) is published as a "key" record and records of other
instances are adopted, so a key exhausted elsewhere sleeps here until the same reset
(`hydrallm.routing.keyshare`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import field
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Final, Literal

from hydrallm.config import AwsCredential, Config, EndpointConfig, KeyStrategy
from hydrallm.dataclass import dataclass
from hydrallm.providers.base import Provider
from hydrallm.routing.keyshare import KIND, SharedKeys, merged_sleep, record_of, share_names
from hydrallm.routing.limits import Budget, Kind, Limit, Policy

if TYPE_CHECKING:
    from hydrallm.routing.shared import Record, SharedState

KeyState = Literal["ready", "throttled", "exhausted", "invalid"]
STATE_VALUES: Final[Mapping[KeyState, int]] = {
    "ready": 0,
    "throttled": 1,
    "exhausted": 2,
    "invalid": 3,
}
Secret = str | AwsCredential
__all__ = ["KIND", "SharedKeys"]  # re-exported: the cluster registers keys by these


class Step(Enum):
    """What the engine does after a limit answer."""

    NOT_A_LIMIT = "not-a-limit"  # handle the status as any other
    RETRY_SAME = "retry-same"  # retry this key after `Decision.wait` (counts an attempt)
    NEXT_KEY = "next-key"  # ask the next ready key at once (does not count an attempt)


@dataclass(frozen=True, slots=True)
class Decision:
    step: Step
    wait: float | None = None


def label_for(secret: Secret, index: int) -> str:
    if isinstance(secret, AwsCredential):
        if secret.profile is not None:
            return f"profile:{secret.profile}"
        secret = secret.access_key_id or ""
    return f"…{secret[-4:]}" if len(secret) > 8 else f"…#{index + 1}"


@dataclass(eq=False, slots=True)
class Key:
    index: int
    label: str
    secret: Secret = field(repr=False)
    state: KeyState = "ready"
    until: float = 0.0  # monotonic; meaningful when throttled or exhausted
    fraction: float | None = None  # remaining share by the last answer's headers
    # model id -> [input tokens in total, of which read from the prompt cache]
    cache: dict[str, list[int]] = field(default_factory=dict, repr=False)
    # (endpoint as configured, the same with only this key): made on first use.
    applied: tuple[EndpointConfig, EndpointConfig] | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"Key({self.label}, {self.state})"


class KeyPool:
    def __init__(
        self,
        endpoint: str,
        secrets: Sequence[Secret],
        strategy: KeyStrategy,
        policy: Policy,
        clock: Callable[[], float],
        wall: Callable[[], float],
        on_invalid: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.strategy = strategy
        self.policy = policy
        self._clock = clock
        self._wall = wall
        self._on_invalid = on_invalid
        self._cursor = -1  # round-robin: the index last picked
        labels = [label_for(s, i) for i, s in enumerate(secrets)]
        self.keys = [
            Key(i, lab if labels.count(lab) == 1 else f"{lab}#{i + 1}", s)
            for i, (lab, s) in enumerate(zip(labels, secrets, strict=True))
        ]
        # Names in the shared store: the label when it is the key's own; a short digest
        # when two keys share a label (a "#N" suffix depends on each instance's order).
        self.names = share_names(endpoint, labels, secrets)
        self.shared: SharedState | None = None

    # --- state -------------------------------------------------------------------------

    def state(self, key: Key) -> KeyState:
        if key.state in ("throttled", "exhausted") and self._clock() >= key.until:
            key.state = "ready"
        return key.state

    def ready(self, key: Key) -> bool:
        return self.state(key) == "ready"

    def earliest_reset(self) -> float | None:
        """Seconds until the first sleeping key wakes: 0 when one is ready, None when every
        key is invalid."""
        now = self._clock()
        waits = [
            0.0 if self.state(k) == "ready" else max(0.0, k.until - now)
            for k in self.keys
            if self.state(k) != "invalid"
        ]
        return min(waits) if waits else None

    # --- choosing ----------------------------------------------------------------------

    def pick(self, exclude: Collection[int] = (), prefer: int | None = None) -> Key | None:
        """The key for the next attempt, or None when every key (less `exclude`) sleeps."""
        ready = [k for k in self.keys if k.index not in exclude and self.ready(k)]
        if not ready:
            return None
        if prefer is not None:
            for k in ready:
                if k.index == prefer:
                    return k
        if self.strategy == "round-robin":
            after = [k for k in ready if k.index > self._cursor]
            chosen = after[0] if after else ready[0]
            self._cursor = chosen.index
            return chosen
        if self.strategy == "least-limited":
            return max(ready, key=lambda k: (1.0 if k.fraction is None else k.fraction, -k.index))
        return ready[0]

    # --- outcomes ----------------------------------------------------------------------

    def outcome(self, key: Key, limit: Limit) -> Decision:
        """Record a limit answer for `key` and say what the request does next."""
        now = self._clock()
        if limit.kind is Kind.NONE:
            return Decision(Step.NOT_A_LIMIT)
        if limit.kind is Kind.INVALID:
            if key.state != "invalid":
                key.state = "invalid"
                self._share(key)
                if self._on_invalid is not None:
                    self._on_invalid(
                        f'endpoint "{self.endpoint}": key {key.label} was refused'
                        f" (HTTP {limit.reason}); it is left out until the config is reloaded"
                    )
            return Decision(Step.NEXT_KEY)
        if limit.kind is Kind.QUOTA:
            # A stated reset that has (nearly) passed still rests the key a second, so that
            # a clock apart from the provider's does not make us hammer it.
            rest = self.policy.quota_duration if limit.wait is None else max(limit.wait, 1.0)
            self._sleep(key, "exhausted", now + rest)
            return Decision(Step.NEXT_KEY)
        wait = limit.wait
        if wait is not None and wait > self.policy.quota_threshold:
            self._sleep(key, "exhausted", now + wait)
            return Decision(Step.NEXT_KEY)
        if wait is not None and wait > self.policy.max_retry_after:
            self._sleep(key, "throttled", now + wait)
            return Decision(Step.NEXT_KEY)
        if wait is not None and wait > 0:
            # Short: this request retries the same key after the wait; meanwhile others
            # start on the next key instead of adding to the throttle.
            self._sleep(key, "throttled", now + wait)
        return Decision(Step.RETRY_SAME, wait)

    def observe(self, key: Key, seen: Budget) -> None:
        """Any answer's budget headers: remember the share; a count at 0 until a reset puts
        the key to sleep until then, so no request is spent finding out (look-ahead)."""
        if seen.fraction is not None:
            before = key.fraction
            key.fraction = seen.fraction
            # Shared when it moves a tenth, not per answer (the hot path stays quiet).
            if self.shared is not None and (
                before is None or math.floor(before * 10) != math.floor(seen.fraction * 10)
            ):
                self._share(key)
        if seen.empty_for is not None and seen.empty_for > 0 and key.state != "invalid":
            kind: KeyState = (
                "exhausted" if seen.empty_for > self.policy.quota_threshold else "throttled"
            )
            self._sleep(key, kind, self._clock() + seen.empty_for)

    def record_usage(self, key: Key, model_id: str, input_tokens: int, cached: int) -> None:
        counts = key.cache.setdefault(model_id, [0, 0])
        counts[0] += max(0, input_tokens)
        counts[1] += max(0, cached)

    def _sleep(self, key: Key, state: KeyState, until: float) -> None:
        if key.state == state and key.until >= until:
            return
        key.state, key.until = state, until
        self._share(key)

    # --- cluster ------------------------------------------------------------------------

    def _record(self, key: Key, now: float) -> tuple[Record, float] | None:
        return record_of(self.state(key), key.until, key.fraction, now)

    def _share(self, key: Key) -> None:
        if self.shared is None:
            return
        made = self._record(key, self._clock())
        if made is not None:
            self.shared.publish(KIND, self.names[key.index], made[0], made[1])

    def shared_records(self) -> list[tuple[str, Record, float]]:
        now = self._clock()
        out = []
        for key in self.keys:
            made = self._record(key, now)
            if made is not None:
                out.append((self.names[key.index], made[0], made[1]))
        return out

    def adopt(self, key: Key, record: Record, age: float) -> None:
        """A record of `key` another instance published `age` seconds ago (not re-shared)."""
        state = record.get("state")
        if key.state == "invalid":
            return  # refused here already: only a reload brings it back
        if state in ("throttled", "exhausted"):
            now = self._clock()
            merged = merged_sleep(self.state(key), key.until, record, age, now)
            if merged is not None:
                key.state = "exhausted" if merged[0] == "exhausted" else "throttled"
                key.until = merged[1]
        elif state == "invalid":
            key.state = "invalid"
            if self._on_invalid is not None:
                self._on_invalid(
                    f'endpoint "{self.endpoint}": key {key.label} was refused by another'
                    " instance; it is left out until the config is reloaded"
                )
        elif state == "ready":
            fraction = record.get("fraction")
            if isinstance(fraction, int | float) and 0 <= fraction <= 1:
                key.fraction = float(fraction)

    # --- exposure ----------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, object]]:
        now, wall = self._clock(), self._wall()
        out: list[dict[str, object]] = []
        for k in self.keys:
            st = self.state(k)
            until = None
            if st in ("throttled", "exhausted"):
                stamp = datetime.fromtimestamp(wall + (k.until - now), UTC)
                until = stamp.isoformat(timespec="seconds").replace("+00:00", "Z")
            ratios = {m: round(c[1] / c[0], 4) for m, c in sorted(k.cache.items()) if c[0] > 0}
            out.append({"label": k.label, "state": st, "until": until, "cache_hit_ratio": ratios})
        return out

    def cache_ratios(self) -> list[tuple[str, str, float]]:
        """(model id, key label, share of input tokens read from the prompt cache)."""
        return [
            (model, k.label, counts[1] / counts[0])
            for k in self.keys
            for model, counts in sorted(k.cache.items())
            if counts[0] > 0
        ]


def secrets_of(endpoint: EndpointConfig) -> tuple[Secret, ...]:
    return (*endpoint.api_keys, *endpoint.aws_pool)


class KeyPools:
    """Every endpoint's pool for one config generation."""

    def __init__(
        self,
        config: Config,
        clock: Callable[[], float],
        wall: Callable[[], float],
        on_invalid: Callable[[str], None] | None = None,
    ) -> None:
        policy = Policy.of(config)
        self.pools: dict[str, KeyPool] = {
            name: KeyPool(name, secrets_of(ep), ep.key_strategy, policy, clock, wall, on_invalid)
            for name, ep in config.endpoints.items()
            if secrets_of(ep)
        }
        self._secrets = {name: secrets_of(ep) for name, ep in config.endpoints.items()}
        self._named: dict[str, tuple[KeyPool, Key]] = {
            name: (pool, key)
            for pool in self.pools.values()
            for name, key in zip(pool.names, pool.keys, strict=True)
        }
        self.sharer = SharedKeys(self)

    def adopt(self, name: str, record: Record | None, age: float) -> None:
        """A "key" record from another instance; None (lapsed) says nothing new."""
        found = self._named.get(name)
        if found is not None and record is not None:
            found[0].adopt(found[1], record, age)

    def shared_snapshot(self) -> list[tuple[str, Record, float]]:
        return [r for pool in self.pools.values() for r in pool.shared_records()]

    def label_of(self, endpoint: str, index: int | None) -> str | None:
        pool = self.pools.get(endpoint)
        if pool is None or index is None or not 0 <= index < len(pool.keys):
            return None
        return pool.names[index].partition("/")[2]

    def index_of(self, endpoint: str, label: str | None) -> int | None:
        found = self._named.get(f"{endpoint}/{label}") if label is not None else None
        return found[1].index if found is not None else None

    def get(self, endpoint: str) -> KeyPool | None:
        return self.pools.get(endpoint)

    def carry_over(self, old: KeyPools) -> None:
        """Keep sleeps (not `invalid`: a reload gives refused keys another chance) of keys
        that are still configured for the same endpoint."""
        for name, pool in self.pools.items():
            before = old.pools.get(name)
            if before is None:
                continue
            by_secret = {k.secret: k for k in before.keys}
            for key in pool.keys:
                previous = by_secret.get(key.secret)
                if previous is not None and previous.state != "invalid":
                    key.state, key.until = previous.state, previous.until
                    key.fraction, key.cache = previous.fraction, previous.cache

    def earliest_reset(self, endpoints: Iterable[str]) -> float | None:
        """Seconds until any key of these endpoints is ready (0: one is); None when no pool
        says (an endpoint without a pool is always worth a try)."""
        waits: list[float] = []
        for name in endpoints:
            pool = self.pools.get(name)
            if pool is None:
                return 0.0
            wait = pool.earliest_reset()
            if wait is not None:
                waits.append(wait)
        return min(waits) if waits else None

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {name: {"keys": pool.snapshot()} for name, pool in self.pools.items()}


def retry_after_seconds(wait: float) -> str:
    """Whole seconds for a Retry-After header, never 0 for a wait that has not passed."""
    return str(max(1, math.ceil(wait - 1e-9)))


def hold_for(earliest: float | None, hold: float) -> float | None:
    """How long a request waits for the earliest reset under `retry.hold`; None: answer now."""
    if earliest is None or hold <= 0 or earliest > hold:
        return None
    return earliest


def all_sleeping_error(provider: Provider, wait: float) -> tuple[int, list[tuple[str, str]], bytes]:
    """The proxy's 429 when no request could be sent because every key of every model of the
    chain sleeps: in the client's API format, `Retry-After` = whole seconds to the earliest
    reset."""
    seconds = retry_after_seconds(wait)
    made = provider.error_body(
        429,
        f"every key of every model is rate-limited; the earliest resets in {seconds}s",
        "rate_limit_error",
    )
    headers = [("Content-Type", made.content_type), *made.headers, ("Retry-After", seconds)]
    return 429, headers, made.body
