"""One configuration generation, ready to serve: engine, breakers, compiled routes.

A reload builds a new `Runtime` and swaps it into `ProxyState.current`; requests that
started on the old one keep their reference and finish on it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import field
from typing import TYPE_CHECKING

from hydrallm.config import ApiType, Config, ListenerConfig, ModelConfig
from hydrallm.dataclass import dataclass
from hydrallm.observe.events import Telemetry
from hydrallm.observe.journal import JournalSink
from hydrallm.providers import Provider, provider_for
from hydrallm.proxy.engine import Engine
from hydrallm.proxy.recovery import RecoveryMemory
from hydrallm.routing.affinity import KIND as AFFINITY_KIND
from hydrallm.routing.affinity import Affinity
from hydrallm.routing.breakers import KIND as BREAKER_KIND
from hydrallm.routing.breakers import Breakers
from hydrallm.routing.holds import Holds
from hydrallm.routing.keys import KIND as KEY_KIND
from hydrallm.routing.keys import KeyPools

if TYPE_CHECKING:
    from hydrallm.app.cluster import ClusterLink
    from hydrallm.observe.snapshot import Generation, KeyPoolView
    from hydrallm.proxy.upstream import Response, Transport
    from hydrallm.routing.shared import Sharer


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A listener's route with its glob compiled and its chain resolved."""

    pattern: str
    match: Callable[[str], object]
    chain: tuple[ModelConfig, ...]


@dataclass(frozen=True, slots=True)
class ListenerRuntime:
    """What a listener needs per request: its config, API type and chains."""

    config: ListenerConfig
    api_type: ApiType
    chain: tuple[ModelConfig, ...]
    routes: tuple[CompiledRoute, ...]
    auth_keys: tuple[bytes, ...]

    def resolve(self, requested: str | None) -> tuple[str, tuple[ModelConfig, ...]]:
        """The route label and chain for a requested model name."""
        if self.routes and requested is not None:
            for route in self.routes:
                if route.match(requested):
                    return route.pattern, route.chain
        return "default", self.chain


@dataclass(slots=True)
class Runtime:
    """One generation of the running config: engine and listeners (a reload swaps it)."""

    config: Config
    engine: Engine
    listeners: dict[str, ListenerRuntime]
    generation: int = 0


def sharers(runtime: Runtime) -> dict[str, Sharer]:
    """What the cluster shares, by kind of record (see `hydrallm.routing.shared`).

    A new kind (key states, session affinity) is one more entry here: an object of this
    runtime implementing `Sharer`.  `build_runtime` hands each kind's link to the next
    generation on reload; `app.cluster.start_cluster` registers every kind.
    """
    engine = runtime.engine
    out: dict[str, Sharer] = {BREAKER_KIND: engine.breakers}
    if engine.keys is not None:
        out[KEY_KIND] = engine.keys.sharer
    if engine.affinity is not None:
        out[AFFINITY_KIND] = engine.affinity
    return out


def compile_listener(config: Config, listener: ListenerConfig) -> ListenerRuntime:
    chain = config.chain(listener.models)
    if listener.routes:
        import fnmatch  # (loaded only for a listener with routes)
    routes = tuple(
        CompiledRoute(
            r.pattern,
            re.compile(fnmatch.translate(r.pattern), re.IGNORECASE).match,
            config.chain(r.models),
        )
        for r in listener.routes
    )
    first = chain[0] if chain else next((r.chain[0] for r in routes if r.chain), None)
    api_type: ApiType = first.type if first is not None else "openai"
    keys = listener.auth_keys or config.server.auth_keys
    return ListenerRuntime(listener, api_type, chain, routes, tuple(k.encode() for k in keys))


def build_runtime(
    config: Config,
    transport: Transport,
    telemetry: Telemetry,
    *,
    previous: Runtime | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> Runtime:
    breakers = Breakers(config.cooldown, clock, telemetry.circuit)
    if previous is not None:
        old_models = previous.config.models
        unchanged = {
            mid
            for mid, m in config.models.items()
            if old_models.get(mid) == m
            and previous.config.endpoints.get(m.endpoint) == config.endpoints.get(m.endpoint)
        }
        breakers.carry_over(previous.engine.breakers, unchanged)
    types = {m.type for m in config.models.values()}
    providers: dict[str, Provider] = {t: provider_for(t) for t in types}
    for t in ("openai", "anthropic"):
        providers.setdefault(t, provider_for(t))
    for provider in providers.values():
        provider.configure(config, telemetry)

    # Key pools and session affinity (issue 15): sleeps carry over a reload, refused
    # ("invalid") keys get another chance; affinity is per process and starts empty.
    def key_refused(message: str) -> None:
        telemetry.log.error("key_invalid", detail=message)

    keys = KeyPools(config, clock, time.time, key_refused)
    if previous is not None and previous.engine.keys is not None:
        keys.carry_over(previous.engine.keys)
    affinity = Affinity(
        config.routing.affinity,
        config.routing.affinity_ttl,
        clock,
        endpoints={mid: m.endpoint for mid, m in config.models.items()},
        keys=keys,
    )
    if previous is not None and previous.engine.affinity is not None:
        affinity.carry_over(previous.engine.affinity)
    engine = Engine(
        config=config,
        transport=transport,
        breakers=breakers,
        telemetry=telemetry,
        providers=providers,
        clock=clock,
        sleep=sleep,
        rand=rand,
        keys=keys,
        affinity=affinity,
        holds=previous.engine.holds if previous is not None else Holds(),
    )
    listeners = {lc.name: compile_listener(config, lc) for lc in config.listeners}
    generation = previous.generation + 1 if previous is not None else 1
    runtime = Runtime(config, engine, listeners, generation)
    if previous is not None:
        old = sharers(previous)
        for kind, sharer in sharers(runtime).items():
            sharer.shared = old[kind].shared if kind in old else None
    return runtime


@dataclass(slots=True)
class ProxyState:
    """Process-wide: the current runtime and what outlives a reload."""

    current: Runtime
    transport: Transport
    telemetry: Telemetry
    started_at: float = field(default_factory=time.time)
    worker: int = 0
    pid: int = field(default_factory=os.getpid)
    ids: itertools.count[int] = field(default_factory=itertools.count)
    in_flight: int = 0
    draining: bool = False
    # Upstream bodies being relayed to clients: shutdown aborts them after the grace period
    # so that each relay ends its stream with a proper error event.
    live: set[Response] = field(default_factory=set)
    # Models that refused an assistant prefill, for the life of the process.
    recovery: RecoveryMemory = field(default_factory=RecoveryMemory)
    # Shared state with other instances / workers (None: this process decides alone).
    cluster: ClusterLink | None = None

    def next_request_id(self) -> str:
        return f"{self.pid:x}-{next(self.ids):x}"

    # --- observe.snapshot.ProcessView: what metrics and status.json read --------------

    def generation(self) -> Generation:
        # The views' types load at the first status read or scrape, not at startup.
        from hydrallm.observe.snapshot import configured

        return configured(self.current.config, self.current.generation)

    def circuit(self, model_id: str) -> tuple[str, float]:
        return self.current.engine.breakers.state(model_id)

    def key_pools(self) -> Mapping[str, KeyPoolView]:
        keys = self.current.engine.keys
        return keys.pools if keys is not None else {}

    def holds(self) -> Holds:
        return self.current.engine.holds

    def journal(self) -> JournalSink | None:
        return next((s for s in self.telemetry.sinks if isinstance(s, JournalSink)), None)

    def redact(self, text: str) -> str:
        return self.telemetry.log.redact(text)
