"""Reserved paths under /_hydrallm/ on every listener: health (and, later, metrics, status)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from hydrallm import __version__

if TYPE_CHECKING:
    from hydrallm.runtime import ProxyState

PREFIX = "/_hydrallm"


def health_payload(state: ProxyState) -> dict[str, object]:
    runtime = state.current
    breakers = runtime.engine.breakers
    models: dict[str, object] = {}
    for mid in runtime.config.models:
        st, left = breakers.state(mid)
        models[mid] = {"state": st, "open_for_s": round(left, 1)}
    return {
        "status": "draining" if state.draining else "ok",
        "version": __version__,
        "uptime_s": round(time.time() - state.started_at, 1),
        "pid": state.pid,
        "worker": state.worker,
        "listeners": [
            {"name": lc.name, "host": lc.host, "port": lc.port} for lc in runtime.config.listeners
        ],
        "models": models,
    }


async def handle(
    request: web.BaseRequest, state: ProxyState, listener: str, path: str
) -> web.StreamResponse:
    if path in (PREFIX + "/health", PREFIX + "/health/"):
        return web.json_response(health_payload(state))
    return web.json_response(
        {"error": {"message": f"unknown hydrallm path {path}", "type": "not_found"}}, status=404
    )
