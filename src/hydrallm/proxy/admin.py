"""Reserved paths under /_hydrallm/ on every listener; answered here, never forwarded.

    GET /_hydrallm/health       small JSON (DECISIONS.md): status, version, uptime, pid,
                                worker, listeners, per-model circuit state, cluster
    GET /_hydrallm/metrics      Prometheus text (this process's registry)
    GET /_hydrallm/status.json  recent history (see `hydrallm.observe.status`)
    GET /_hydrallm/journal.json the journal's chart data, `?window=hour|day|week` (see
                                `hydrallm.observe.journal_query.charts`), and its state
    GET /_hydrallm/             the status page (package resource statuspage.html)

Anything else under the prefix is a 404; a method other than GET/HEAD is a 405.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qs

from hydrallm import __version__
from hydrallm.observe.events import Sink
from hydrallm.observe.journal import JournalSink
from hydrallm.observe.metrics import MetricsSink, content_type
from hydrallm.observe.status import StatusSink
from hydrallm.proxy.wire import Request, Response, json_response

if TYPE_CHECKING:
    from hydrallm.app.runtime import ProxyState
    from hydrallm.observe.snapshot import ProcessView

PREFIX = "/_hydrallm"

_S = TypeVar("_S", bound=Sink)

_FALLBACK_PAGE = (
    "hydrallm status page is not installed.\n"
    "JSON: /_hydrallm/status.json  health: /_hydrallm/health  metrics: /_hydrallm/metrics\n"
)


def health_payload(view: ProcessView) -> dict[str, object]:
    gen = view.generation()
    models: dict[str, object] = {}
    for m in gen.models:
        st, left = view.circuit(m.id)
        models[m.id] = {"state": st, "open_for_s": round(left, 1)}
    return {
        "status": "draining" if view.draining else "ok",
        "version": __version__,
        "uptime_s": round(time.time() - view.started_at, 1),
        "pid": view.pid,
        "worker": view.worker,
        "listeners": [{"name": lc.name, "host": lc.host, "port": lc.port} for lc in gen.listeners],
        "models": models,
        "cluster": cluster_state(view),
        # Key pools (issue 15): masked labels only, never a key.
        "endpoints": {name: {"keys": pool.snapshot()} for name, pool in view.key_pools().items()},
    }


def cluster_state(view: ProcessView) -> str:
    """ "off" without Redis (workers sharing through their supervisor included), else the
    link's "ok" | "degraded"."""
    link = view.cluster
    if link is None or link.mode != "redis":
        return "off"
    return link.status


def _sink(state: ProxyState, kind: type[_S]) -> _S | None:
    for sink in state.telemetry.sinks:
        if isinstance(sink, kind):
            return sink
    return None


def _not_found(message: str) -> Response:
    return json_response({"error": {"message": message, "type": "not_found"}}, 404)


def _status_page() -> Response:
    try:
        from importlib import resources  # the page is read once, on first view

        page = resources.files("hydrallm.observe").joinpath("statuspage.html").read_bytes()
    except (FileNotFoundError, OSError):
        return Response(body=_FALLBACK_PAGE.encode(), content_type="text/plain; charset=utf-8")
    return Response(body=page, content_type="text/html; charset=utf-8")


async def handle(request: Request, state: ProxyState, listener: str, path: str) -> Response:
    sub = path[len(PREFIX) :].rstrip("/")
    known = ("", "/health", "/metrics", "/status.json", "/journal.json")
    if sub not in known:
        return _not_found(f"unknown hydrallm path {path}")
    if request.method not in ("GET", "HEAD"):
        resp = json_response(
            {"error": {"message": f"{request.method} is not allowed here", "type": "not_allowed"}},
            405,
        )
        resp.headers = [*resp.headers, ("Allow", "GET, HEAD")]
        return resp
    if sub == "/health":
        return json_response(health_payload(state))
    if sub == "/metrics":
        metrics = _sink(state, MetricsSink)
        if metrics is None:
            return _not_found("metrics are not enabled in this process")
        return Response(body=metrics.render(state), content_type=content_type())
    if sub == "/status.json":
        status = _sink(state, StatusSink)
        if status is None:
            return _not_found("status is not enabled in this process")
        return json_response(status.snapshot(state))
    if sub == "/journal.json":
        window = parse_qs(request.query_string).get("window", ["hour"])[0]
        return json_response(await _journal(state, window))
    return _status_page()


async def _journal(state: ProxyState, window: str) -> dict[str, object]:
    journal = _sink(state, JournalSink)
    if journal is None:
        return {"journal": {"enabled": False, "error": None}, "charts": None}

    def read() -> dict[str, object] | None:
        # Off the event loop: a query over a week of rows takes milliseconds, not microseconds.
        # The reader is loaded by the first chart, not by every `serve`.
        from hydrallm.observe import journal_query

        try:
            db = journal_query.open_readonly(journal.path)
        except journal_query.JournalMissing:
            return None
        try:
            return journal_query.charts(db, now=time.time(), window=window)
        finally:
            db.close()

    await journal.settle()  # the writer loads what is spooled, so the charts are current
    charts = await asyncio.to_thread(read) if journal.enabled or journal.path.exists() else None
    return {"journal": journal.status(), "charts": charts}
