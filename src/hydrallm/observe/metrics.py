"""Prometheus metrics: a telemetry `Sink` that counts in plain dicts, exposed through a
prometheus-client collector at scrape time.

Why not prometheus-client's own `Counter`/`Histogram` objects on the hot path: each `.inc()`
takes a lock and each `.labels()` validates its arguments, about 7 µs per proxied request
in all (py-spy under the benchmark).  Here recording is a dict update (and a `bisect` for
histograms) on the event loop's thread, and the exposition format is still produced by
prometheus-client from a custom collector, so the text is exactly what scrapers expect.
prometheus-client itself is imported at the first scrape (`render`, `content_type`), not
at startup: counting needs none of it, and `hydrallm serve` should be ready sooner.

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
    hydrallm_stream_recoveries_total{model,result}  prefill | restart | gave_up (model: broke)
    hydrallm_circuit_state{model}              0 closed, 1 open, 2 half-open (read at scrape)
    hydrallm_key_state{endpoint,key}           0 ready, 1 throttled, 2 exhausted, 3 invalid
    hydrallm_cache_hit_ratio{model,key}        prompt-cache share of input tokens
    hydrallm_config_reloads_total{result}      success | failure
    hydrallm_worker_info{worker,pid}           always 1
    hydrallm_cluster_up{mode}                  1 shared state reachable, 0 degraded
                                               (only with a cluster: redis | workers)
    hydrallm_journal_dropped_total             journal rows dropped: the writer fell behind
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hydrallm.observe.events import AttemptEvent, RequestEvent, Sink

if TYPE_CHECKING:
    from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric

    from hydrallm.observe.snapshot import ProcessView

__all__ = ["MetricsSink", "content_type"]


def content_type() -> str:
    """The Content-Type of `MetricsSink.render`'s text (it follows prometheus-client's
    exposition version, so it is asked of the installed prometheus-client)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return str(CONTENT_TYPE_LATEST)


CIRCUIT_VALUES = {"closed": 0, "open": 1, "half-open": 2}

# Upstream calls of LLMs range from milliseconds (errors) to many minutes (long answers).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)


class _Histogram:
    """Bucket counts for one label set (the last slot is +Inf)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((_float(bound), running))
        running += self.counts[-1]
        out.append(("+Inf", running))
        return out


def _float(value: float) -> str:
    return repr(float(value))


class MetricsSink(Sink):
    """Counts what the telemetry reports; `render(state)` produces the scrape."""

    def __init__(self, *, worker: int = 0, pid: int = 0) -> None:
        self.worker = worker
        self.pid = pid
        self.requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.attempts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.retries: defaultdict[str, int] = defaultdict(int)
        self.fallbacks: defaultdict[str, int] = defaultdict(int)
        self.upstream_seconds: dict[str, _Histogram] = {}
        self.first_token_seconds: dict[str, _Histogram] = {}
        self.streams: defaultdict[str, int] = defaultdict(int)
        self.stream_breaks: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.recoveries: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.reloads: dict[str, int] = {"success": 0, "failure": 0}
        self._view: ProcessView | None = None
        self._registry: Any = None  # prometheus-client's, built at the first scrape

    # --- Sink: plain counting on the event loop's thread --------------------------------

    def attempt(self, event: AttemptEvent) -> None:
        model = event.model_id
        outcome = event.outcome
        if outcome == "status" and event.status is not None:
            outcome = str(event.status)
        self.attempts[(model, outcome)] += 1
        if event.retry:
            self.retries[model] += 1
        if event.fallback:
            self.fallbacks[event.listener] += 1
        hist = self.upstream_seconds.get(model)
        if hist is None:
            hist = self.upstream_seconds[model] = _Histogram(_LATENCY_BUCKETS)
        hist.observe(event.latency)
        if event.ttft is not None:
            hist = self.first_token_seconds.get(model)
            if hist is None:
                hist = self.first_token_seconds[model] = _Histogram(_TTFT_BUCKETS)
            hist.observe(event.ttft)

    def request(self, event: RequestEvent) -> None:
        self.requests[(event.listener, event.route, event.status)] += 1

    def stream_open(self, listener: str, delta: int) -> None:
        self.streams[listener] += delta

    def stream_broken(self, listener: str, model_id: str, reason: str) -> None:
        self.stream_breaks[(listener, model_id)] += 1

    def recovery(self, listener: str, model_id: str, action: str) -> None:
        self.recoveries[(model_id, action)] += 1

    def reload(self, result: str, detail: str) -> None:
        self.reloads["success" if result == "success" else "failure"] += 1

    # --- scrape -------------------------------------------------------------------------

    def render(self, view: ProcessView) -> bytes:
        """The Prometheus text exposition, with circuit and key states read from `view`."""
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(self))
        self._view = view
        try:
            data: bytes = generate_latest(self._registry)
        finally:
            self._view = None
        return data

    def families(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        view = self._view
        req = CounterMetricFamily(
            "hydrallm_requests",
            "Client requests by listener, route and final status",
            labels=["listener", "route", "status"],
        )
        for (listener, route, status), n in sorted(self.requests.items()):
            req.add_metric([listener, route, str(status)], n)
        yield req
        att = CounterMetricFamily(
            "hydrallm_attempts",
            "Upstream attempts by model and outcome",
            labels=["model", "outcome"],
        )
        for (model, outcome), n in sorted(self.attempts.items()):
            att.add_metric([model, outcome], n)
        yield att
        yield _counter("hydrallm_retries", "Retries of the same model", "model", self.retries)
        yield _counter(
            "hydrallm_fallbacks", "Moves to a later model of the chain", "listener", self.fallbacks
        )
        yield _histogram(
            "hydrallm_upstream_seconds",
            "Time from sending an attempt to its verdict",
            self.upstream_seconds,
        )
        yield _histogram(
            "hydrallm_first_token_seconds",
            "Time from sending a streaming attempt to its first meaningful event",
            self.first_token_seconds,
        )
        streams = GaugeMetricFamily(
            "hydrallm_streams_in_flight", "Streams being relayed to clients", labels=["listener"]
        )
        names = set(self.streams)
        if view is not None:  # present at 0 before the first stream
            names |= {lc.name for lc in view.generation().listeners}
        for name in sorted(names):
            streams.add_metric([name], self.streams.get(name, 0))
        yield streams
        breaks = CounterMetricFamily(
            "hydrallm_stream_breaks",
            "Streams that broke after the commit point",
            labels=["listener", "model"],
        )
        for (listener, model), n in sorted(self.stream_breaks.items()):
            breaks.add_metric([listener, model], n)
        yield breaks
        rec = CounterMetricFamily(
            "hydrallm_stream_recoveries",
            "Broken streams finished on a fallback (or given up) after the commit point",
            labels=["model", "result"],
        )
        for (model, result), n in sorted(self.recoveries.items()):
            rec.add_metric([model, result], n)
        yield rec
        circuit = GaugeMetricFamily(
            "hydrallm_circuit_state",
            "Cooldown circuit per model: 0 closed, 1 open, 2 half-open",
            labels=["model"],
        )
        if view is not None:
            # Open -> half-open happens by the clock, without an event: read it now.
            for described in view.generation().models:
                st, _ = view.circuit(described.id)
                circuit.add_metric([described.id], CIRCUIT_VALUES[st])
        yield circuit
        yield from _key_families(view)
        reloads = CounterMetricFamily(
            "hydrallm_config_reloads", "Configuration reloads by result", labels=["result"]
        )
        for result, n in sorted(self.reloads.items()):
            reloads.add_metric([result], n)
        yield reloads
        info = GaugeMetricFamily(
            "hydrallm_worker_info",
            "The worker process that served this scrape",
            labels=["worker", "pid"],
        )
        info.add_metric([str(self.worker), str(self.pid)], 1)
        yield info
        cluster = view.cluster if view is not None else None
        if cluster is not None:
            up = GaugeMetricFamily(
                "hydrallm_cluster_up",
                "Shared state (Redis, or the workers' supervisor) reachable: 1, degraded: 0",
                labels=["mode"],
            )
            up.add_metric([cluster.mode], 1 if cluster.status == "ok" else 0)
            yield up

        journal = view.journal() if view is not None else None
        if journal is not None:
            yield CounterMetricFamily(
                "hydrallm_journal_dropped",
                "Journal rows dropped because the writer's queue was full",
                value=journal.dropped,
            )


KEY_STATE_VALUES = {"ready": 0, "throttled": 1, "exhausted": 2, "invalid": 3}


def _key_families(view: ProcessView | None) -> Iterator[Metric]:
    """Key pools (issue 15), read at scrape: state per key, prompt-cache hit ratio per
    model and key.  Keys appear only by their masked label."""
    from prometheus_client.metrics_core import GaugeMetricFamily

    keys = GaugeMetricFamily(
        "hydrallm_key_state",
        "Key pool state per key: 0 ready, 1 throttled, 2 exhausted, 3 invalid",
        labels=["endpoint", "key"],
    )
    ratio = GaugeMetricFamily(
        "hydrallm_cache_hit_ratio",
        "Share of input tokens read from the provider's prompt cache, per model and key",
        labels=["model", "key"],
    )
    pools = view.key_pools() if view is not None else {}
    for name, pool in sorted(pools.items()):
        for key in pool.snapshot():
            keys.add_metric([name, str(key["label"])], KEY_STATE_VALUES[str(key["state"])])
        for model, label, share in pool.cache_ratios():
            ratio.add_metric([model, label], share)
    yield keys
    yield ratio


def _counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    from prometheus_client.metrics_core import CounterMetricFamily

    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([key], n)
    return family


def _histogram(name: str, doc: str, values: dict[str, _Histogram]) -> HistogramMetricFamily:
    from prometheus_client.metrics_core import HistogramMetricFamily

    family = HistogramMetricFamily(name, doc, labels=["model"])
    for model, hist in sorted(values.items()):
        family.add_metric([model], hist.buckets(), sum_value=hist.total)
    return family


class _Collector:
    """The prometheus-client side: turns the sink's counts into metric families."""

    def __init__(self, sink: MetricsSink) -> None:
        self._sink = sink

    def collect(self) -> Iterator[Any]:
        return self._sink.families()
