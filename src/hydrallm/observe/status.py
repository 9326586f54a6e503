"""Recent history for the status page and `hydrallm status`, in bounded memory.

`StatusSink` is a telemetry `Sink`; `snapshot(view)` is the body of
`GET /_hydrallm/status.json`, read from a `ProcessView` (`hydrallm.observe.snapshot`), not
from the process state.  Memory is bounded: per model a 5-minute window of 60 five-second
buckets and the last 100 latencies / TTFTs; the last 50 requests; the last 20
reloads; models no longer configured are dropped at the next snapshot.

Shape of the snapshot (times are Unix seconds, durations milliseconds, lists newest first
except `listeners` and `models`, which are in config order)::

    {
      "status": "ok" | "draining",
      "version": "0.1.0", "pid": 1234, "worker": 0,
      "uptime_s": 12.3, "now": 1700000000.0,
      "config_path": "/path/config.toml" | null, "generation": 1,
      "in_flight": 0, "streams_in_flight": 0,
      "held": {"count": 0, "earliest_reset": 1700000000.0 | null,
               "requests": [{"listener": "default", "since": 1700000000.0,
                             "until": 1700000030.0}]},
      "listeners": [
        {"name": "default", "host": "127.0.0.1", "port": 8080,
         "address": "http://127.0.0.1:8080", "auth": false,
         "chain": ["model-id", ...],
         "routes": [{"pattern": "*haiku*", "chain": ["model-id", ...]}, ...]}
      ],
      "models": [
        {"id": "model-id", "endpoint": "zai", "model": "glm-5", "type": "openai",
         "attempts": 2,
         "state": "closed" | "open" | "half-open", "open_for_s": 0.0,
         "requests_5m": 10, "successes_5m": 9,
         "p50_latency_ms": 812.5 | null, "p50_ttft_ms": 120.0 | null,
         "last_error": {"at": 1700000000.0, "outcome": "503", "message": "..."} | null}
      ],
      "endpoints": {"endpoint-name": {"keys": [
        {"label": "…a1b2", "state": "ready" | "throttled" | "exhausted" | "invalid",
         "until": "2026-01-01T12:00:00Z" | null, "cache_hit_ratio": {"model-id": 0.75}}]}},
      "requests": [
        {"at": 1700000000.0, "id": "4d2-1f", "listener": "default", "route": "default",
         "method": "POST", "path": "/v1/chat/completions",
         "served_by": "model-id" | null, "attempts": 3, "status": 200,
         "latency_ms": 1234.5, "streamed": true,
         "recovered": null | "prefill" | "restart" | "gave_up", "error": null | "..."}
      ],
      "reloads": [{"at": 1700000000.0, "result": "success" | "failure", "detail": "..."}],
      "streams": [
        {"at": 1700000000.0, "listener": "default", "model": "model-id",
         "event": "prefill" | "restart" | "gave_up" | "broken",
         "detail": "..."}
      ],
      "cluster": {"mode": "off"} | {"mode": "redis" | "workers", "state": "ok" | "degraded",
         "store": "redis://…@host:6379/0", "instance": "host-pid-ab12", "problem": null,
         "last_ok": 1700000000.0, "outbox": 0, "dropped": 0,
         "instances": [{"instance", "host", "pid", "worker", "version", "listeners", "seen"}],
         "shared": {"breaker": {"model-id": {"state": "open", "open_ms": 1200, ...}}}}
      "journal": {"enabled": true, "path": "...", "queued": 0, "spooled_bytes": 0, "dropped": 0, "written": 12,
                  "error": null} | null
    }

`streams` lists what happened to streams that broke after the client had received part
of them (`model` is the model that broke): finished on a fallback by prefill or restart
(`prefill`, `restart`; the request's entry says which model `served_by`), ended with an
error event (`gave_up`), or broken with no recovery tried (`broken`, with the reason).

`held` lists the requests waiting now under `retry.hold` for the earliest key reset
(`until`); one whose client leaves is gone at the next snapshot.  `endpoints` shows each
key pool by masked label, never a key.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import field
from typing import TYPE_CHECKING, Any

from hydrallm import __version__
from hydrallm.dataclass import dataclass
from hydrallm.observe.events import AttemptEvent, RequestEvent, Sink

if TYPE_CHECKING:
    from hydrallm.observe.snapshot import ProcessView

WINDOW_S = 300.0
_BUCKETS = 60
RECENT_REQUESTS = 50
RECENT_RELOADS = 20
RECENT_STREAM_EVENTS = 20
_SAMPLES = 100


class _Window:
    """Counts of attempts and successes over the last `WINDOW_S` seconds, bucketed."""

    def __init__(self) -> None:
        self._width = WINDOW_S / _BUCKETS
        # Per slot: [bucket index, attempts, successes].
        self._slots = [[-1, 0, 0] for _ in range(_BUCKETS)]

    def add(self, now: float, ok: bool) -> None:
        index = int(now // self._width)
        slot = self._slots[index % _BUCKETS]
        if slot[0] != index:
            slot[0], slot[1], slot[2] = index, 0, 0
        slot[1] += 1
        slot[2] += int(ok)

    def totals(self, now: float) -> tuple[int, int]:
        current = int(now // self._width)
        total = ok = 0
        for index, count, good in self._slots:
            if 0 <= current - index < _BUCKETS:
                total += count
                ok += good
        return total, ok


@dataclass(slots=True)
class _ModelStats:
    """A model's recent window, latency and first-token samples, and last error."""

    window: _Window = field(default_factory=_Window)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    last_error: tuple[float, str, str] | None = None  # at, outcome, message


def _p50_ms(samples: deque[float]) -> float | None:
    import statistics  # at the first status read, not at startup (it pulls in fractions)

    return round(statistics.median(samples) * 1000, 1) if samples else None


class StatusSink(Sink):
    """Keeps the recent history that `snapshot()` reports."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._models: dict[str, _ModelStats] = {}
        self._requests: deque[RequestEvent] = deque(maxlen=RECENT_REQUESTS)
        self._reloads: deque[dict[str, Any]] = deque(maxlen=RECENT_RELOADS)
        self._stream_events: deque[dict[str, Any]] = deque(maxlen=RECENT_STREAM_EVENTS)
        self._streams = 0

    def _stats(self, model_id: str) -> _ModelStats:
        stats = self._models.get(model_id)
        if stats is None:
            stats = self._models[model_id] = _ModelStats()
        return stats

    # --- Sink ---------------------------------------------------------------------------

    def attempt(self, event: AttemptEvent) -> None:
        now = self._clock()
        stats = self._stats(event.model_id)
        ok = event.outcome == "success"
        stats.window.add(now, ok)
        stats.latencies.append(event.latency)
        if event.ttft is not None:
            stats.ttfts.append(event.ttft)
        if not ok:
            outcome = str(event.status) if event.outcome == "status" else event.outcome
            message = event.error or (f"HTTP {event.status}" if event.status else outcome)
            stats.last_error = (now, outcome, message)

    def request(self, event: RequestEvent) -> None:
        # Kept as the event itself; formatted only when the status page asks (saves
        # building a dict on every request).
        self._requests.append(event)

    def stream_open(self, listener: str, delta: int) -> None:
        self._streams += delta

    def stream_broken(self, listener: str, model_id: str, reason: str) -> None:
        self._stream_event(listener, model_id, "broken", reason)

    def recovery(self, listener: str, model_id: str, action: str) -> None:
        self._stream_event(listener, model_id, action, "")

    def _stream_event(self, listener: str, model_id: str, event: str, detail: str) -> None:
        self._stream_events.append(
            {
                "at": round(self._clock(), 3),
                "listener": listener,
                "model": model_id,
                "event": event,
                "detail": detail,
            }
        )

    def reload(self, result: str, detail: str) -> None:
        self._reloads.append({"at": round(self._clock(), 3), "result": result, "detail": detail})

    # --- snapshot -----------------------------------------------------------------------

    def snapshot(self, view: ProcessView) -> dict[str, Any]:
        """The status.json document (shape in the module docstring)."""
        gen = view.generation()
        redact = view.redact
        now = self._clock()
        for gone in set(self._models) - {m.id for m in gen.models}:
            del self._models[gone]

        listeners = [
            {
                "name": lc.name,
                "host": lc.host,
                "port": lc.port,
                "address": f"http://{lc.host}:{lc.port}",
                "auth": lc.auth,
                "chain": list(lc.chain),
                "routes": [{"pattern": r.pattern, "chain": list(r.chain)} for r in lc.routes],
            }
            for lc in gen.listeners
        ]

        models = []
        for m in gen.models:
            st, left = view.circuit(m.id)
            stats = self._models.get(m.id)
            total, ok = stats.window.totals(now) if stats else (0, 0)
            last = stats.last_error if stats else None
            models.append(
                {
                    "id": m.id,
                    "endpoint": m.endpoint,
                    "model": m.model,
                    "type": m.type,
                    "attempts": m.attempts,
                    "state": st,
                    "open_for_s": round(left, 1),
                    "requests_5m": total,
                    "successes_5m": ok,
                    "p50_latency_ms": _p50_ms(stats.latencies) if stats else None,
                    "p50_ttft_ms": _p50_ms(stats.ttfts) if stats else None,
                    "last_error": None
                    if last is None
                    else {"at": round(last[0], 3), "outcome": last[1], "message": redact(last[2])},
                }
            )

        requests = [
            {
                "at": round(r.started_at, 3),
                "id": r.request_id,
                "listener": r.listener,
                "route": r.route,
                "method": r.method,
                "path": r.path,
                "served_by": r.served_by,
                "attempts": r.attempts,
                "status": r.status,
                "latency_ms": round(r.latency * 1000, 1),
                "streamed": r.streamed,
                "recovered": r.recovered,
                "error": None if r.error is None else redact(r.error),
            }
            for r in reversed(self._requests)
        ]
        reloads = [{**r, "detail": redact(r["detail"])} for r in reversed(self._reloads)]
        streams = [{**e, "detail": redact(e["detail"])} for e in reversed(self._stream_events)]
        journal = view.journal()
        return {
            "status": "draining" if view.draining else "ok",
            "version": __version__,
            "pid": view.pid,
            "worker": view.worker,
            "uptime_s": round(time.time() - view.started_at, 1),
            "now": round(now, 3),
            "config_path": gen.config_path,
            "generation": gen.number,
            "in_flight": view.in_flight,
            "streams_in_flight": self._streams,
            "held": view.holds().snapshot(),
            "listeners": listeners,
            "models": models,
            # Key pools (issue 15): masked labels, state, until, cache-hit ratio per model.
            "endpoints": {
                name: {"keys": pool.snapshot()} for name, pool in view.key_pools().items()
            },
            "requests": requests,
            "reloads": reloads,
            "streams": streams,
            "cluster": {"mode": "off"} if view.cluster is None else view.cluster.report(),
            "journal": None if journal is None else journal.status(),
        }
