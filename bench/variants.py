"""hydrallm against itself with one feature changed, same load, interleaved.

Each variant starts a second hydrallm whose config differs from a baseline's in one way
and measures both in alternating rounds, so the figure is a ratio measured in the same
minute on the same machine.  In the table the "direct" column of these rows holds the
baseline's figure and the "hydrallm" column the variant's:

- pool:       a 3-key pool with `[routing] affinity = "session"` vs the usual one key;
- redis:      `[cluster] redis` (a redis-server started here) vs no cluster;
- translated: an Anthropic Messages client on an OpenAI-type model (translated both
              ways) vs the same client on an Anthropic-type model (passed through).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import cpu_seconds, free_port, wait_port

if TYPE_CHECKING:
    from bench.main import Bench

ANTHROPIC_PATH = "/v1/messages"

_CONFIG = """\
[server]
host = "127.0.0.1"
port = {port}

[log]
level = "warn"

[retry]
max_cycles = 1
default_interval = "0s"  # retry at once: the retry row measures the proxy, not a wait

[journal]
enabled = {journal_on}
path = "{journal}"
{extra}
[endpoints.bench]
url = "http://127.0.0.1:{upstream}"
{keys}
[[models]]
endpoint = "bench"
type = "{type}"
model = "bench-upstream-model"  # differs from the client's: every body is rewritten
attempts = 2
"""


def hydrallm_config(
    port: int | str,
    upstream: int,
    journal: Path | None,
    *,
    type: str = "openai",
    keys: str = "",
    extra: str = "",
) -> str:
    """The config of every hydrallm the bench starts (journal None: journal off); a
    variant differs from it in one way: the model's `type`, the endpoint's `keys`, or
    `extra` sections."""
    return _CONFIG.format(
        port=port,
        journal_on="false" if journal is None else "true",
        journal="unused.db" if journal is None else journal,
        extra=extra,
        upstream=upstream,
        keys=keys,
        type=type,
    )


def _config(
    bench: Bench, name: str, *, type: str = "openai", keys: str = "", extra: str = ""
) -> str:
    return hydrallm_config(
        "{port}",
        bench.upstream_port,
        bench.work / f"{name}.db",
        type=type,
        keys=keys,
        extra=extra,
    )


def _start(bench: Bench, name: str, text: str) -> int:
    port = free_port()
    path = bench.work / f"{name}.toml"
    path.write_text(text.replace("{port}", str(port)))
    proc = bench.procs.spawn(
        name, [*bench.hydrallm_cmd, "serve", "-c", str(path), "--log-level", "warn"]
    )
    wait_port(port, proc)
    bench.urls[name] = f"http://127.0.0.1:{port}"
    bench.pids[name] = proc.pid
    return proc.pid


def _measure(
    bench: Bench,
    key: str,
    label: str,
    pair: tuple[str, str],
    path: str,
    body: str,
    stream_body: str | None = None,
) -> None:
    """Interleaved rounds of (baseline, variant): c16 throughput and CPU, c1 p99, and with
    `stream_body` the c1 stream TTFB and CPU per stream."""
    p = bench.profile
    for _ in range(p.rounds):
        for column, target in zip(("direct", "hydrallm"), pair, strict=True):
            url = bench.urls[target] + path
            pid = bench.pids[target]
            cpu0 = cpu_seconds(pid)
            r = bench.loadgen(url, body, 16, "--duration", str(p.duration))
            cpu = cpu_seconds(pid) - cpu0
            bench.fig(f"{key}_rps_c16", f"{label}: throughput c16", "req/s").add(column, r["rps"])
            if r["requests"]:
                bench.fig(f"{key}_cpu_c16", f"{label}: CPU per request c16", "ms").add(
                    column, cpu * 1000 / r["requests"]
                )
            r = bench.loadgen(url, body, 1, "--duration", str(p.duration))
            bench.fig(f"{key}_p99_c1", f"{label}: p99 c1", "ms").add(column, r["p99_ms"])
            if stream_body is None:
                continue
            cpu0 = cpu_seconds(pid)
            r = bench.loadgen(url, stream_body, 1, "--stream", "--duration", str(p.stream_duration))
            cpu = cpu_seconds(pid) - cpu0
            bench.fig(f"{key}_ttfb_c1", f"{label}: stream TTFB p50 c1", "ms").add(
                column, r["ttfb_p50_ms"]
            )
            if r["requests"]:
                bench.fig(f"{key}_scpu_c1", f"{label}: CPU per stream c1", "ms").add(
                    column, cpu * 1000 / r["requests"]
                )


def _pool(bench: Bench) -> None:
    keys = 'api_keys = ["sk-bench-key-one-0001", "sk-bench-key-two-0002", "sk-bench-key-3-0003"]'
    extra = '[routing]\naffinity = "session"\n'
    _start(bench, "hy-onekey", _config(bench, "hy-onekey", keys='api_key = "sk-bench-only-0001"'))
    _start(bench, "hy-pool", _config(bench, "hy-pool", keys=keys, extra=extra))
    _measure(
        bench,
        "pool",
        "3-key pool + session affinity (baseline: 1 key)",
        ("hy-onekey", "hy-pool"),
        "/v1/chat/completions",
        "small",
    )


def _redis(bench: Bench) -> None:
    server = shutil.which("redis-server")
    if server is None:
        print("bench: redis-server not found: no cluster row", flush=True)
        return
    port = free_port()
    proc = bench.procs.spawn(
        "redis",
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    )
    wait_port(port, proc)
    extra = f'[cluster]\nredis = "redis://127.0.0.1:{port}/0"\n'
    _start(bench, "hy-local", _config(bench, "hy-local"))
    _start(bench, "hy-redis", _config(bench, "hy-redis", extra=extra))
    _measure(
        bench,
        "redis",
        "[cluster] redis (baseline: none)",
        ("hy-local", "hy-redis"),
        "/v1/chat/completions",
        "small",
    )


def _translated(bench: Bench) -> None:
    msg = {"role": "user", "content": "Say hello."}
    small = {"model": "bench-model", "max_tokens": 32, "messages": [msg]}
    for name, body in (("anthropic", small), ("anthropic-stream", small | {"stream": True})):
        path = bench.work / f"{name}.json"
        path.write_bytes(json.dumps(body, separators=(",", ":")).encode())
        bench.bodies[name] = path
    _start(bench, "hy-native", _config(bench, "hy-native", type="anthropic"))
    _start(bench, "hy-translated", _config(bench, "hy-translated", type="openai"))
    _measure(
        bench,
        "translated",
        "Anthropic client, translated to chat (baseline: passed through)",
        ("hy-native", "hy-translated"),
        ANTHROPIC_PATH,
        "anthropic",
        "anthropic-stream",
    )


VARIANTS: dict[str, Callable[[Bench], None]] = {
    "pool": _pool,
    "redis": _redis,
    "translated": _translated,
}


def run_variants(bench: Bench, progress: Callable[[str], Any]) -> None:
    for name, step in VARIANTS.items():
        started = time.perf_counter()
        step(bench)
        progress(f"variant {name}: {time.perf_counter() - started:.1f}s")
