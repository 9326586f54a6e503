"""`hydrallm status`: the status page's information as rich tables in a terminal.

`fetch_status(url)` reads `/_hydrallm/status.json` from a running proxy (shape in
`hydrallm.observe.status`); `render_status(doc)` turns it into a renderable; `default_url(config)`
picks the address of the configured listener.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from hydrallm.config import Config
from hydrallm.errors import HydraError

__all__ = ["FALLBACK_URL", "StatusUnavailable", "default_url", "fetch_status", "render_status"]

FALLBACK_URL = "http://127.0.0.1:8080"
_STATE_STYLE = {"closed": "green", "open": "bold red", "half-open": "yellow"}
_KEY_STYLE = {"ready": "green", "throttled": "yellow", "exhausted": "bold red", "invalid": "red"}
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}


class StatusUnavailable(HydraError):
    """The proxy could not be reached or did not answer with its status."""

    exit_code = 1


def default_url(config: Config | None) -> str:
    """The first listener's address (a wildcard host is reached via loopback)."""
    if config is None or not config.listeners:
        return FALLBACK_URL
    lc = config.listeners[0]
    host = "127.0.0.1" if lc.host in _WILDCARD_HOSTS else lc.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{lc.port}"


def fetch_status(url: str, *, timeout: float = 3.0) -> dict[str, Any]:
    """GET `<url>/_hydrallm/status.json` and decode it, all within `timeout` seconds.

    The socket timeout alone bounds each read, not the answer: a proxy that trickles its
    bytes would hold `--watch` on one frame for as long as it keeps trickling.
    """
    target = url.rstrip("/") + "/_hydrallm/status.json"
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            chunks: list[bytes] = []
            while chunk := response.read1(65536):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise StatusUnavailable(f"{target} did not answer within {timeout:g} s")
            raw = b"".join(chunks)
    except urllib.error.HTTPError as exc:
        raise StatusUnavailable(
            f"{target} answered HTTP {exc.code}; is this a hydrallm proxy?"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusUnavailable(
            f"cannot reach hydrallm at {url}: {reason}"
            " (is it running? pass --url to name another address)"
        ) from exc
    except http.client.HTTPException as exc:  # not HTTP at all, or cut short
        raise StatusUnavailable(
            f"{target} did not answer HTTP ({type(exc).__name__}); is this a hydrallm proxy?"
        ) from exc
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise StatusUnavailable(f"{target} did not answer JSON; is this a hydrallm proxy?") from exc
    if not isinstance(doc, dict) or "models" not in doc:
        raise StatusUnavailable(f"{target} did not answer a hydrallm status document")
    return doc


def _ms(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    return f"{s // 3600}h {s % 3600 // 60}m"


def _state(model: dict[str, Any]) -> Text:
    state = str(model.get("state", "?"))
    label = state
    if state == "open":
        label = f"open, {_duration(float(model.get('open_for_s', 0)))} left"
    return Text(label, style=_STATE_STYLE.get(state, ""))


def _models(doc: dict[str, Any]) -> Table:
    table = Table(title="Models (last 5 minutes)", title_justify="left")
    table.add_column("model", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("success", justify="right", no_wrap=True)
    table.add_column("ok / attempts", justify="right", no_wrap=True)
    table.add_column("p50", justify="right", no_wrap=True)
    table.add_column("TTFT", justify="right", no_wrap=True)
    table.add_column("last error", overflow="fold", ratio=1)
    now = float(doc.get("now", time.time()))
    for m in doc.get("models", []):
        total, ok = int(m.get("requests_5m", 0)), int(m.get("successes_5m", 0))
        rate = "-" if not total else f"{ok / total:.0%}" if ok == total else f"{ok / total:.1%}"
        err = m.get("last_error")
        if err:
            message = str(err.get("message", ""))
            if len(message) > 90:
                message = message[:89] + "…"
            ago = _duration(now - float(err.get("at", now)))
            err_text = Text(f"{err.get('outcome')}: {message} ({ago} ago)", style="red")
        else:
            err_text = Text("none", style="dim")
        name = Text(str(m.get("id")), style="bold")
        name.append(f"\n{m.get('endpoint')} · {m.get('model')} ×{m.get('attempts')}", style="dim")
        table.add_row(
            name,
            _state(m),
            rate,
            f"{ok} / {total}",
            _ms(m.get("p50_latency_ms")),
            _ms(m.get("p50_ttft_ms")),
            err_text,
        )
    return table


def _epoch(iso: object) -> float | None:
    """Unix seconds of an ISO-8601 time as status.json writes them ("…Z"); None if unreadable."""
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _key_state(key: dict[str, Any], now: float) -> Text:
    state = str(key.get("state", "?"))
    label = state
    if state == "invalid":
        label = "invalid (refused): out until the config is reloaded"
    until = _epoch(key.get("until"))
    if until is not None:
        clock = time.strftime("%H:%M:%S", time.localtime(until))
        label += f" until {clock} (in {_duration(until - now)})"
    return Text(label, style=_KEY_STYLE.get(state, ""))


def _keys(doc: dict[str, Any]) -> Table:
    """Each endpoint's keys (masked labels only), state, and prompt-cache hit ratio."""
    table = Table(title="Key pools", title_justify="left")
    table.add_column("endpoint", no_wrap=True)
    table.add_column("key", no_wrap=True)
    table.add_column("state")
    table.add_column("prompt-cache hits", overflow="fold")
    now = float(doc.get("now", time.time()))
    for name, pool in (doc.get("endpoints") or {}).items():
        shown = str(name)
        for key in pool.get("keys", []):
            ratios = key.get("cache_hit_ratio") or {}
            cache = ", ".join(f"{model} {float(share):.1%}" for model, share in ratios.items())
            table.add_row(
                Text(shown, style="bold"),
                str(key.get("label")),
                _key_state(key, now),
                cache or Text("-", style="dim"),
            )
            shown = ""
    return table


def _held(doc: dict[str, Any]) -> str:
    """The header's note of requests held by retry.hold (empty when none)."""
    held = doc.get("held") or {}
    count = int(held.get("count") or 0)
    if not count:
        return ""
    reset = held.get("earliest_reset")
    when = ""
    if isinstance(reset, int | float):
        when = f" (next reset in {_duration(reset - float(doc.get('now', time.time())))})"
    return f"  held {count}{when}"


def _listeners(doc: dict[str, Any]) -> Table:
    table = Table(title="Listeners", title_justify="left")
    table.add_column("listener")
    table.add_column("address")
    table.add_column("route")
    table.add_column("chain")
    for lc in doc.get("listeners", []):
        name, address = str(lc.get("name")), str(lc.get("address"))
        if lc.get("auth"):
            address += " (auth)"
        for route in lc.get("routes", []):
            table.add_row(name, address, str(route.get("pattern")), " → ".join(route["chain"]))
            name = address = ""
        label = "otherwise" if lc.get("routes") else "all requests"
        table.add_row(name, address, Text(label, style="dim"), " → ".join(lc.get("chain", [])))
    return table


def _requests(doc: dict[str, Any], limit: int) -> Table:
    table = Table(title=f"Recent requests (newest first, up to {limit})", title_justify="left")
    table.add_column("time", no_wrap=True)
    table.add_column("listener")
    table.add_column("request", overflow="fold")
    table.add_column("served by")
    table.add_column("tries", justify="right")
    table.add_column("status", justify="right")
    table.add_column("latency", justify="right", no_wrap=True)
    for r in doc.get("requests", [])[:limit]:
        status = int(r.get("status", 0))
        listener = str(r.get("listener"))
        if r.get("route") not in (None, "default"):
            listener += f" / {r.get('route')}"
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(float(r.get("at", 0)))),
            listener,
            f"{r.get('method')} {r.get('path')}" + (" stream" if r.get("streamed") else ""),
            str(r.get("served_by") or "-"),
            str(r.get("attempts")),
            Text(str(status), style="green" if status < 400 else "red"),
            _ms(r.get("latency_ms")),
        )
    return table


def _cluster(cluster: dict[str, Any]) -> RenderableType:
    """Instances seen (their heartbeats) and the shared state this process holds."""
    state = str(cluster.get("state"))
    title = (
        f"Cluster: {cluster.get('mode')} {state} via {cluster.get('store')}"
        f" (this instance {cluster.get('instance')})"
    )
    if cluster.get("problem"):
        title += f"; problem: {cluster.get('problem')}"
    table = Table(title=title, title_justify="left")
    table.add_column("instance")
    table.add_column("host / pid / worker")
    table.add_column("listeners")
    table.add_column("last seen", justify="right")
    now = time.time()
    for inst in cluster.get("instances", []):
        listeners = ", ".join(
            f"{lc.get('name')} :{lc.get('port')}" for lc in inst.get("listeners", [])
        )
        table.add_row(
            str(inst.get("instance")),
            f"{inst.get('host')} / {inst.get('pid')} / {inst.get('worker')}",
            listeners,
            f"{_duration(now - float(inst.get('seen', now)))} ago",
        )
    shared = Table(title="Shared state held here", title_justify="left")
    shared.add_column("kind")
    shared.add_column("name")
    shared.add_column("record", overflow="fold")
    for kind, records in (cluster.get("shared") or {}).items():
        for name, record in records.items():
            shared.add_row(str(kind), str(name), json.dumps(record, separators=(",", ":")))
    if not shared.row_count:
        shared.add_row("-", "-", Text("nothing open, throttled or pinned", style="dim"))
    return Group(table, shared)


def render_status(doc: dict[str, Any], url: str, *, requests: int = 10) -> RenderableType:
    """Everything `hydrallm status` shows, for one status document."""
    status = str(doc.get("status"))
    header = Text.assemble(
        ("hydrallm ", "bold"),
        (status, "green" if status == "ok" else "yellow"),
        f"  {url}  version {doc.get('version')}  pid {doc.get('pid')}"
        f"  worker {doc.get('worker')}  up {_duration(float(doc.get('uptime_s', 0)))}"
        f"  in flight {doc.get('in_flight')} (streams {doc.get('streams_in_flight')})" + _held(doc),
    )
    parts: list[RenderableType] = [header, _models(doc)]
    if doc.get("endpoints"):
        parts.append(_keys(doc))
    parts += [_listeners(doc), _requests(doc, requests)]
    cluster = doc.get("cluster")
    if isinstance(cluster, dict) and cluster.get("mode", "off") != "off":
        parts.append(_cluster(cluster))
    reloads = doc.get("reloads", [])
    if reloads:
        table = Table(title="Config reloads", title_justify="left")
        table.add_column("time")
        table.add_column("result")
        table.add_column("detail")
        for r in reloads[:5]:
            ok = r.get("result") == "success"
            table.add_row(
                time.strftime("%H:%M:%S", time.localtime(float(r.get("at", 0)))),
                Text(str(r.get("result")), style="green" if ok else "red"),
                str(r.get("detail")),
            )
        parts.append(table)
    return Group(*parts)
