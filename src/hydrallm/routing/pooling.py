"""The engine's per-request view of key pools and session affinity (issue 15).

Per attempt the engine calls, in this order:

    keys = RequestKeys(pools, affinity, session_of(...), wall)   # once per request
    chosen = keys.choose(endpoint)         # before prepare(): endpoint with the key applied
        -> None: every key of this endpoint sleeps; skip the model (no attempt used)
    decision = keys.answered(chosen, status, get_header, body)   # any upstream answer
        -> Step.NOT_A_LIMIT | RETRY_SAME (after decision.wait) | NEXT_KEY (at once, free)
    keys.served(model_id, chosen)          # the answer the client gets: affinity

and at the end, when the chain ran out: `keys.earliest_reset(chain)` for the Retry-After of
the answer and for `retry.hold`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from hydrallm.config import AwsCredential, EndpointConfig, ModelConfig
from hydrallm.dataclass import dataclass
from hydrallm.formats.base import Usage, usage_of
from hydrallm.providers.base import ClientRequest
from hydrallm.routing.affinity import Affinity, Session, preferred_order, session_of_request
from hydrallm.routing.keys import (
    Decision,
    Key,
    KeyPool,
    KeyPools,
    Step,
    hold_for,
    retry_after_seconds,
)
from hydrallm.routing.limits import budget, classify


@dataclass(frozen=True, slots=True)
class End:
    """How a request that met key limits ends: `hold` it this long, else answer with
    Retry-After = whole seconds to `earliest`."""

    earliest: float
    hold: float | None


@dataclass(slots=True)
class Chosen:
    endpoint: EndpointConfig  # what the provider signs with (this key only)
    pool: KeyPool | None
    key: Key | None


class RequestKeys:
    def __init__(
        self,
        pools: KeyPools,
        affinity: Affinity | None,
        session: Callable[[], Session | None],
        wall: Callable[[], float],
    ) -> None:
        self.pools = pools
        self.affinity = affinity
        self._session_of = session
        self._session: Session | None = None
        self._named = False
        self._wall = wall
        self.limited = False  # some attempt of this request met a key limit
        self.skipped_sleeping = 0  # models left out because every key slept

    @property
    def session(self) -> Session | None:
        """Named on first need: only pools of several keys and "session" mode ask, so a
        one-key endpoint never pays for hashing the prompt."""
        if not self._named:
            self._named = True
            self._session = self._session_of()
        return self._session

    def choose(self, endpoint: EndpointConfig, retry_key: int | None = None) -> Chosen | None:
        """The endpoint with a key applied; `retry_key`: the key a short throttle asked to
        retry (preferred once it is ready again)."""
        pool = self.pools.get(endpoint.name)
        if pool is None:
            return Chosen(endpoint, None, None)
        prefer = retry_key
        if prefer is None and self.affinity is not None and len(pool.keys) > 1:
            prefer = self.affinity.key_for(self.session, endpoint.name)
        key = pool.pick(prefer=prefer)
        if key is None:
            self.limited = True
            self.skipped_sleeping += 1
            return None
        applied = key.applied
        if applied is None or applied[0] is not endpoint:
            secret = key.secret
            if isinstance(secret, AwsCredential):
                one = replace(endpoint, aws_pool=(secret,))
            else:
                one = replace(endpoint, api_key=secret)
            # dataclasses.replace costs ~10 µs: made once per key and config generation.
            applied = key.applied = (endpoint, one)
        return Chosen(applied[1], pool, key)

    def answered(
        self, chosen: Chosen, status: int, get: Callable[[str], str | None], body: bytes
    ) -> Decision:
        pool, key = chosen.pool, chosen.key
        if pool is None or key is None:
            return Decision(Step.NOT_A_LIMIT)
        now = self._wall()
        pool.observe(key, budget(get, now))
        if 200 <= status < 400:
            return Decision(Step.NOT_A_LIMIT)
        decision = pool.outcome(key, classify(status, get, body, now, pool.policy))
        if decision.step is not Step.NOT_A_LIMIT:
            self.limited = True
        return decision

    def served(self, model: ModelConfig, chosen: Chosen | None) -> None:
        if self.affinity is None or chosen is None or not self.affinity.enabled:
            return
        if self.affinity.mode != "session" and (chosen.pool is None or len(chosen.pool.keys) < 2):
            return
        index = chosen.key.index if chosen.key is not None else None
        self.affinity.remember(self.session, model.id, model.endpoint, index)

    def usage(self, chosen: Chosen, model: ModelConfig, chunks: Sequence[bytes]) -> None:
        """Count prompt-cache reads from the usage in the chunks read before commit: a JSON
        body has it near its end (last chunk), an Anthropic stream in its `message_start`
        (first chunk).  Streams that report usage only at their end are not counted; the
        body is never joined or copied."""
        pool, key = chosen.pool, chosen.key
        if pool is None or key is None:
            return
        found = _usage_in(chunks[-1])
        if found is None and len(chunks) > 1:
            found = _usage_in(chunks[0])
        if found is not None:
            pool.record_usage(key, model.id, found.total_input or 0, found.cache_read_tokens or 0)

    def earliest_reset(self, chain: Iterable[ModelConfig]) -> float | None:
        return self.pools.earliest_reset(dict.fromkeys(m.endpoint for m in chain))

    def session_chain(self, chain: Sequence[ModelConfig]) -> Sequence[ModelConfig]:
        """With affinity "session": the chain starting on the model that last served it."""
        if self.affinity is None or self.affinity.mode != "session":
            return chain
        first = self.affinity.model_for(self.session)
        if first is None:
            return chain
        order = preferred_order([m.id for m in chain], first)
        by_id = {m.id: m for m in chain}
        return [by_id[i] for i in order]

    def at_end(self, chain: Sequence[ModelConfig], hold_left: float) -> End | None:
        """After the plan ran out: None unless a key limit was met and every key of the
        chain still sleeps (then: how long to hold, or the earliest reset to announce)."""
        if not self.limited:
            return None
        earliest = self.earliest_reset(chain)
        if earliest is None or earliest <= 0:
            return None
        return End(earliest, hold_for(earliest, hold_left))


def for_request(
    pools: KeyPools | None,
    affinity: Affinity | None,
    request: ClientRequest,
    wall: Callable[[], float],
) -> RequestKeys | None:
    """The request's key chooser, or None when no endpoint has a key pool.  The session is
    named lazily (see `RequestKeys.session`)."""
    if pools is None or not pools.pools:
        return None

    def session() -> Session | None:
        if affinity is None or not affinity.enabled:
            return None
        text = request.json.text if request.json is not None else None
        return session_of_request(request.headers, text, request.body)

    return RequestKeys(pools, affinity, session, wall)


def ready_endpoint(pools: KeyPools | None, endpoint: EndpointConfig) -> EndpointConfig:
    """`endpoint` with a ready key of its pool applied, for requests made outside the
    engine's attempts (mid-stream recovery); the endpoint as configured when it has no
    pool or every key sleeps."""
    pool = pools.get(endpoint.name) if pools is not None else None
    key = pool.pick() if pool is not None else None
    if key is None:
        return endpoint
    secret = key.secret
    if isinstance(secret, AwsCredential):
        return replace(endpoint, aws_pool=(secret,))
    return replace(endpoint, api_key=secret)


def with_retry_after(headers: list[tuple[str, str]], wait: float) -> list[tuple[str, str]]:
    """`headers` with Retry-After set to the whole seconds of `wait` (any other removed)."""
    kept = [(k, v) for k, v in headers if k.lower() != "retry-after"]
    kept.append(("Retry-After", retry_after_seconds(wait)))
    return kept


_DECODER = json.JSONDecoder()


def _usage_in(head: bytes) -> Usage | None:
    """The first `"usage": {...}` object in the bytes that states an input count, decoded
    alone (not the whole body: an answer can be large, and this runs on every answer of a
    pooled endpoint) and read by the one usage reader."""
    at = head.find(b'"usage"')
    if at < 0:
        return None
    # Decode only from the first "usage" on: a whole answer can be large.
    text = head[at : at + 65536].decode("utf-8", "replace")
    at = 0
    while at >= 0:
        start = text.find("{", at + 7, at + 64)
        if start >= 0 and not text[at + 7 : start].strip(" \t\r\n:"):
            try:
                usage, _ = _DECODER.raw_decode(text, start)
            except ValueError:
                usage = None
            found = usage_of(usage)
            if found is not None and found.input_tokens is not None:
                return found
        at = text.find('"usage"', at + 7)
    return None
