"""What observe/ reads of the running process: a small read-only protocol.

The metrics scrape and the status document render from a `ProcessView`, never from the
process state itself, so that observe/ sits below app/ in the one-way data path (see
docs/architecture.md): `app.runtime.ProxyState` satisfies the protocol structurally, and a
test can hand in any object with these few members.  Nothing here is read on the request
path; every member is called at scrape (or status.json) time only.

`configured(config, number)` turns one config generation into the plain `Generation`
record the renderers read (listeners and models in config order), so that the renderers
need neither the process state nor the compiled runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from hydrallm.config import Config
from hydrallm.dataclass import dataclass

__all__ = [
    "ClusterView",
    "Generation",
    "HoldsView",
    "JournalView",
    "KeyPoolView",
    "ListenerInfo",
    "ModelInfo",
    "ProcessView",
    "RouteInfo",
    "configured",
]


@dataclass(frozen=True, slots=True)
class RouteInfo:
    pattern: str
    chain: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    name: str
    host: str
    port: int
    auth: bool  # proxy auth is on (the listener's keys or the server's)
    chain: tuple[str, ...]
    routes: tuple[RouteInfo, ...]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    endpoint: str
    model: str
    type: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Generation:
    """The configuration being served: what the renderers show of it."""

    number: int
    config_path: str | None
    listeners: tuple[ListenerInfo, ...]
    models: tuple[ModelInfo, ...]


def configured(config: Config, number: int) -> Generation:
    server_auth = bool(config.server.auth_keys)
    listeners = tuple(
        ListenerInfo(
            name=lc.name,
            host=lc.host,
            port=lc.port,
            auth=bool(lc.auth_keys) or server_auth,
            chain=tuple(lc.models),
            routes=tuple(RouteInfo(r.pattern, tuple(r.models)) for r in lc.routes),
        )
        for lc in config.listeners
    )
    models = tuple(
        ModelInfo(mid, m.endpoint, m.model, m.type, m.attempts) for mid, m in config.models.items()
    )
    return Generation(number, config.path, listeners, models)


class KeyPoolView(Protocol):
    """One endpoint's key pool (`routing.keys.KeyPool`); keys appear by masked label only."""

    def snapshot(self) -> list[dict[str, object]]:
        """Per key: label, state, until (ISO-8601 UTC or None), cache_hit_ratio per model."""
        ...

    def cache_ratios(self) -> list[tuple[str, str, float]]:
        """(model id, key label, share of input tokens read from the prompt cache)."""
        ...


class HoldsView(Protocol):
    """Requests waiting under `retry.hold` for a key's reset (`proxy.holds.Holds`)."""

    def snapshot(self) -> dict[str, Any]:
        """{"count", "earliest_reset" (Unix seconds or None), "requests": [...]}."""
        ...


class ClusterView(Protocol):
    """The link to shared state (`app.cluster.ClusterLink`)."""

    @property
    def mode(self) -> str: ...

    @property
    def status(self) -> str: ...

    def report(self) -> dict[str, Any]: ...


class JournalView(Protocol):
    """The request journal (`observe.journal.JournalSink`)."""

    @property
    def dropped(self) -> int: ...

    def status(self) -> dict[str, Any]: ...


class ProcessView(Protocol):
    """Everything the metrics scrape and status.json read of the process."""

    @property
    def pid(self) -> int: ...

    @property
    def worker(self) -> int: ...

    @property
    def started_at(self) -> float:
        """Unix seconds."""
        ...

    @property
    def in_flight(self) -> int: ...

    @property
    def draining(self) -> bool: ...

    @property
    def cluster(self) -> ClusterView | None:
        """None: this process decides alone."""
        ...

    def generation(self) -> Generation:
        """The configuration now served (a reload replaces it)."""
        ...

    def circuit(self, model_id: str) -> tuple[str, float]:
        """The model's circuit: "closed" | "open" | "half-open", and seconds left open."""
        ...

    def key_pools(self) -> Mapping[str, KeyPoolView]:
        """Endpoint name -> its key pool, in config order (empty: no endpoint has a key)."""
        ...

    def holds(self) -> HoldsView: ...

    def journal(self) -> JournalView | None:
        """None: no journal sink in this process."""
        ...

    def redact(self, text: str) -> str:
        """`text` with every configured secret masked."""
        ...
