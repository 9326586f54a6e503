"""Prometheus metrics: a telemetry `Sink` writing into a per-process `CollectorRegistry`.

The names and labels are fixed by DECISIONS.md; every label value is bounded (listener
names, route globs or "default", model ids, status codes, outcome kinds), never a raw path
or a client's model string.  With several workers each process keeps its own registry and
`hydrallm_worker_info{worker,pid}` says which one answered the scrape.

    hydrallm_requests_total{listener,route,status}
    hydrallm_attempts_total{model,outcome}     outcome: success | <status code> | timeout |
                                               connect_error | protocol_error |
                                               stream_error | not_possible | error
    hydrallm_retries_total{model}              another try of the same model
    hydrallm_fallbacks_total{listener}         moving on to a later model of the chain
    hydrallm_upstream_seconds{model}           histogram, send to verdict
    hydrallm_first_token_seconds{model}        histogram, streams only
    hydrallm_streams_in_flight{listener}
    hydrallm_stream_breaks_total{listener,model}
    hydrallm_circuit_state{model}              0 closed, 1 open, 2 half-open (read at scrape)
    hydrallm_config_reloads_total{result}      success | failure
    hydrallm_worker_info{worker,pid}           always 1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from hydrallm.observe import AttemptEvent, RequestEvent, Sink

if TYPE_CHECKING:
    from hydrallm.runtime import ProxyState

__all__ = ["CONTENT_TYPE", "MetricsSink"]

CIRCUIT_VALUES = {"closed": 0, "open": 1, "half-open": 2}

# Upstream calls of LLMs range from milliseconds (errors) to many minutes (long answers).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)


class MetricsSink(Sink):
    """Counts what the telemetry reports; `render(state)` produces the scrape."""

    def __init__(self, *, worker: int = 0, pid: int = 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._children: dict[tuple[object, ...], Any] = {}
        self.requests = Counter(
            "hydrallm_requests",
            "Client requests by listener, route and final status",
            ["listener", "route", "status"],
            registry=reg,
        )
        self.attempts = Counter(
            "hydrallm_attempts",
            "Upstream attempts by model and outcome",
            ["model", "outcome"],
            registry=reg,
        )
        self.retries = Counter(
            "hydrallm_retries", "Retries of the same model", ["model"], registry=reg
        )
        self.fallbacks = Counter(
            "hydrallm_fallbacks",
            "Moves to a later model of the chain",
            ["listener"],
            registry=reg,
        )
        self.upstream_seconds = Histogram(
            "hydrallm_upstream_seconds",
            "Time from sending an attempt to its verdict",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.first_token_seconds = Histogram(
            "hydrallm_first_token_seconds",
            "Time from sending a streaming attempt to its first meaningful event",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=reg,
        )
        self.streams = Gauge(
            "hydrallm_streams_in_flight",
            "Streams being relayed to clients",
            ["listener"],
            registry=reg,
        )
        self.stream_breaks = Counter(
            "hydrallm_stream_breaks",
            "Streams that broke after the commit point",
            ["listener", "model"],
            registry=reg,
        )
        self.circuit_state = Gauge(
            "hydrallm_circuit_state",
            "Cooldown circuit per model: 0 closed, 1 open, 2 half-open",
            ["model"],
            registry=reg,
        )
        self.reloads = Counter(
            "hydrallm_config_reloads",
            "Configuration reloads by result",
            ["result"],
            registry=reg,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result)
        Gauge(
            "hydrallm_worker_info",
            "The worker process that served this scrape",
            ["worker", "pid"],
            registry=reg,
        ).labels(str(worker), str(pid)).set(1)

    # --- Sink ---------------------------------------------------------------------------

    def attempt(self, event: AttemptEvent) -> None:
        # Children are cached per label tuple: prometheus-client's `.labels()` costs ~2 µs
        # a call (argument checks, a lock, a dict lookup); the cache makes it one lookup.
        model = event.model_id
        if event.outcome == "success":
            outcome = "success"
        elif event.outcome == "status" and event.status is not None:
            outcome = str(event.status)
        else:
            outcome = event.outcome
        cache = self._children
        key = ("a", model, outcome)
        child = cache.get(key)
        if child is None:
            child = cache[key] = self.attempts.labels(model, outcome)
        child.inc()
        if event.retry:
            self._child(self.retries, "r", model).inc()
        if event.fallback:
            self._child(self.fallbacks, "f", event.listener).inc()
        self._child(self.upstream_seconds, "u", model).observe(event.latency)
        if event.ttft is not None:
            self._child(self.first_token_seconds, "t", model).observe(event.ttft)

    def _child(self, metric: Any, tag: str, *labels: str) -> Any:
        key = (tag, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, event: RequestEvent) -> None:
        key = ("q", event.listener, event.route, event.status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(
                event.listener, event.route, str(event.status)
            )
        child.inc()

    def circuit(self, model_id: str, state: str, open_for: float) -> None:
        self.circuit_state.labels(model_id).set(CIRCUIT_VALUES.get(state, 0))

    def stream_open(self, listener: str, delta: int) -> None:
        self.streams.labels(listener).inc(delta)

    def stream_broken(self, listener: str, model_id: str, reason: str) -> None:
        self.stream_breaks.labels(listener, model_id).inc()

    def reload(self, result: str, detail: str) -> None:
        self.reloads.labels("success" if result == "success" else "failure").inc()

    # --- scrape -------------------------------------------------------------------------

    def render(self, state: ProxyState) -> bytes:
        """The Prometheus text exposition, with circuit states read from the live breakers.

        Open → half-open happens by the clock, without an event, so the gauge is refreshed
        here; models no longer configured (after a reload) are dropped from it.
        """
        runtime = state.current
        self.circuit_state.clear()
        for model_id in runtime.config.models:
            st, _ = runtime.engine.breakers.state(model_id)
            self.circuit_state.labels(model_id).set(CIRCUIT_VALUES[st])
        for name in runtime.listeners:
            self.streams.labels(name)  # present at 0 before the first stream
        data: bytes = generate_latest(self.registry)
        return data
