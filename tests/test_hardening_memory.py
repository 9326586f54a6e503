"""Memory an upstream controls (issue 14, class 3b): a slow-reading client costs a bounded
amount of proxy memory (back-pressure reaches the upstream read), returned when it leaves.

    pytest -m soak tests/test_hardening_memory.py

Measured on a real `hydrallm serve` subprocess (its own RSS, from /proc), with a fake
upstream that streams as fast as the proxy will read and 100 clients that read nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from tests.opshelp import ServeProcess, free_port

READERS = 100
MiB = 1024 * 1024
# One SSE event of ~16 KiB; an upstream answer is up to 64 MiB of them, far more than
# any buffer between the upstream and a client that does not read.
_EVENT = (
    "data: "
    + json.dumps(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "x" * 16000}}],
        }
    )
    + "\n\n"
).encode()
_EVENTS = 64 * MiB // len(_EVENT)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _firehose(request: web.Request) -> web.StreamResponse:
    await request.read()
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await out.prepare(request)
    try:
        for _ in range(_EVENTS):
            await out.write(_EVENT)  # waits while the proxy does not read
        await out.write(b"data: [DONE]\n\n")
    except (ConnectionError, RuntimeError):
        pass
    return out


@asynccontextmanager
async def firehose() -> AsyncIterator[str]:
    server = web.Server(_firehose)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def slow_reader(port: int) -> socket.socket:
    """A client that asks for a stream and then reads nothing (tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    sock.setblocking(False)
    return sock


async def settle(pid: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return rss(pid)


@asynccontextmanager
async def serving(up: str) -> AsyncIterator[tuple[ServeProcess, int]]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(
            f"""
[server]
port = {port}
write_timeout = "600s"
[retry]
stream_idle_timeout = "60s"
[endpoints.up]
url = "{up}"
[[models]]
endpoint = "up"
type = "openai"
model = "m"
"""
        )
        proc = ServeProcess(path)
        try:
            await proc.wait_ready(f"http://127.0.0.1:{port}")
            # Warm-up: a few readers come and go, so lazy imports and pools exist.
            warm = [slow_reader(port) for _ in range(5)]
            await asyncio.sleep(1.0)
            for s in warm:
                s.close()
            await asyncio.sleep(2.0)
            yield proc, port
        finally:
            await proc.stop()


async def rss_after_readers(proc: ServeProcess, port: int) -> tuple[int, int, int]:
    """(baseline, peak with READERS slow readers, RSS once they left) of the proxy."""
    pid = proc.proc.pid
    baseline = rss(pid)
    readers = [slow_reader(port) for _ in range(READERS)]
    peak = 0
    for _ in range(8):
        await asyncio.sleep(0.5)
        peak = max(peak, rss(pid))
    for s in readers:
        s.close()
    # Wait (bounded) for the memory to come back; what is measured is the level reached.
    after = rss(pid)
    for _ in range(20):
        await asyncio.sleep(0.5)
        after = rss(pid)
        if after - baseline < 16 * MiB:
            break
    return baseline, peak, after


@pytest.mark.soak
async def test_rss_returns_near_baseline_after_slow_readers_leave() -> None:
    async with firehose() as up, serving(up) as (proc, port):
        baseline, peak, after = await rss_after_readers(proc, port)
    assert peak - baseline > 16 * MiB  # the readers really cost something while there
    assert after - baseline < 16 * MiB, (
        f"RSS did not return near baseline: {baseline / MiB:.1f} MiB before,"
        f" {peak / MiB:.1f} MiB with {READERS} slow readers, {after / MiB:.1f} MiB after"
    )


@pytest.mark.soak
async def test_each_slow_reader_costs_less_than_one_mib() -> None:
    async with firehose() as up, serving(up) as (proc, port):
        baseline, peak, _ = await rss_after_readers(proc, port)
    per_reader = (peak - baseline) / READERS
    assert per_reader < MiB, (
        f"each slow reader held {per_reader / MiB:.2f} MiB"
        f" (baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB)"
    )
