"""No leaks under load (issue 8): fds, tasks and upstream connections return to their
baseline after a mixed run; 1,000 concurrent streams are served without an error.

    pytest tests/test_leaks.py               # the default, bounded variants
    pytest -m soak tests/test_leaks.py       # >= 5,000 mixed requests, twice, RSS growth < 5 MB
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest

from hydrallm.proxy.h1client import LeanTransport
from hydrallm.testing import CANONICAL_TEXT, FailureMix, FakeUpstream, faults
from hydrallm.testing.harness import ProxyHarness

CHAT = "/v1/chat/completions"


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < wanted:
        pytest.skip(f"needs {wanted} file descriptors")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pooled(px: ProxyHarness) -> tuple[int, int]:
    """(upstream connections in use, idle connections kept for reuse)."""
    transport = px.proxy.state.transport
    assert isinstance(transport, LeanTransport)
    return transport.pool_counts()


def config(flaky: str, good: str, timeout: str = "2s") -> str:
    return f"""
[retry]
max_cycles = 1
default_interval = "1ms"
max_retry_after = "10ms"
first_token_timeout = "{timeout}"
[cooldown]
enabled = false
[endpoints.flaky]
url = "{flaky}"
api_key = "sk-leak-0001"
[endpoints.good]
url = "{good}"
api_key = "sk-leak-0002"
[[models]]
endpoint = "flaky"
type = "openai"
model = "flaky"
attempts = 2
timeout = "{timeout}"
[[models]]
endpoint = "good"
type = "openai"
model = "good"
"""


@dataclass
class Tally:
    ok: int = 0
    aborted: int = 0
    errors: list[str] = field(default_factory=list)


async def one(s: aiohttp.ClientSession, url: str, rng: random.Random, tally: Tally) -> None:
    stream = rng.random() < 0.5
    abort = rng.random() < 0.1
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    try:
        async with s.post(url + CHAT, json=body) as r:
            if abort:
                await r.content.readany()
                r.close()  # the client goes away mid-answer
                tally.aborted += 1
                return
            data = await r.read()
            if r.status != 200 or (stream and b"[DONE]" not in data):
                tally.errors.append(f"{r.status} {data[:200]!r}")
            else:
                tally.ok += 1
    except aiohttp.ClientError as exc:
        tally.errors.append(repr(exc))


async def mixed_run(url: str, total: int, seed: int, concurrency: int = 40) -> Tally:
    """`total` requests: successes, retries, fallbacks, resets, streams, client aborts."""
    rng = random.Random(seed)
    tally = Tally()
    queue = list(range(total))
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def worker() -> None:
            while queue:
                queue.pop()
                await one(s, url, rng, tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


MIX = FailureMix(
    rate=0.4,
    weights={"rate_limit": 1, "overloaded": 1, "reset": 1, "error_event": 1},
    retry_after=0,
)


@asynccontextmanager
async def running() -> AsyncIterator[tuple[ProxyHarness, FakeUpstream, FakeUpstream]]:
    async with (
        FakeUpstream(failure_mix=MIX, rng_seed=7, chunk_words=8) as flaky,
        FakeUpstream(chunk_words=8) as good,
        ProxyHarness(config(flaky.url, good.url), level="warn") as px,
    ):
        yield px, flaky, good


async def settle(px: ProxyHarness) -> None:
    """Let closing connections finish closing."""
    for _ in range(100):
        if px.proxy.state.in_flight == 0 and pooled(px)[0] == 0:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    gc.collect()


@dataclass
class Snapshot:
    fds: int
    tasks: int
    in_use: int
    idle: int
    server_conns: int

    @classmethod
    async def take(cls, px: ProxyHarness) -> Snapshot:
        await settle(px)
        in_use, idle = pooled(px)
        server = px.proxy.listeners["default"].server
        assert server is not None
        return cls(open_fds(), len(asyncio.all_tasks()), in_use, idle, len(server.connections))


def assert_back_to_baseline(before: Snapshot, after: Snapshot) -> None:
    # Idle keep-alive connections to the fakes are reuse, not a leak: each costs two fds
    # in this process (the proxy's end and the fake's end).
    allowed_fds = before.fds + 2 * max(0, after.idle - before.idle) + 8
    assert after.in_use == 0, after
    assert after.server_conns == 0, after
    # ... and one task in the fake upstream (its connection handler, waiting).
    more_idle = max(0, after.idle - before.idle)
    assert after.tasks <= before.tasks + more_idle + 2, (before, after)
    assert after.fds <= allowed_fds, (before, after)
    assert after.idle <= 64, after


async def test_mixed_run_returns_fds_tasks_and_connections_to_baseline() -> None:
    raise_fd_limit(4096)
    async with running() as (px, flaky, good):
        await mixed_run(px.url(), 40, seed=0)  # warm-up: pools, caches, lazy imports
        before = await Snapshot.take(px)
        tally = await mixed_run(px.url(), 600, seed=1)
        after = await Snapshot.take(px)
        assert tally.errors == [], tally.errors[:5]
        assert tally.ok + tally.aborted == 600 and tally.aborted > 20
        assert len(flaky.requests) > 600 and len(good.requests) > 30  # retries and fallbacks
        assert_back_to_baseline(before, after)
        assert px.proxy.state.in_flight == 0


async def test_a_thousand_concurrent_streams_are_served() -> None:
    raise_fd_limit(8192)
    async with (
        FakeUpstream(default=faults.slow_chunks(0.2), chunk_words=6) as up,
        ProxyHarness(config(up.url, up.url, timeout="30s"), level="warn") as px,
    ):
        peak = 0
        done = False

        async def watch() -> None:
            nonlocal peak
            while not done:
                peak = max(peak, px.proxy.state.in_flight)
                await asyncio.sleep(0.01)

        async def client(s: aiohttp.ClientSession) -> str:
            body = {"model": "x", "messages": [], "stream": True}
            async with s.post(px.url() + CHAT, json=body) as r:
                assert r.status == 200
                return (await r.read()).decode()

        watcher = asyncio.create_task(watch())
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=60)
        ) as s:
            texts = await asyncio.gather(*(client(s) for _ in range(1000)))
        done = True
        await watcher
        assert all("[DONE]" in t for t in texts)
        assert peak >= 900, peak  # they really were in flight together
        words = CANONICAL_TEXT.split()[:3]
        assert all(all(w in t for w in words) for t in texts[:10])
        assert len(up.requests) == 1000
        assert "ERROR" not in px.logs()


@pytest.mark.soak
async def test_soak_five_thousand_mixed_requests_twice_rss_flat() -> None:
    raise_fd_limit(4096)
    async with running() as (px, flaky, good):

        def forget() -> None:
            # The fakes record every request: test-side memory, not the proxy's.
            flaky.requests.clear()
            good.requests.clear()
            gc.collect()

        await mixed_run(px.url(), 200, seed=0)
        forget()
        before = await Snapshot.take(px)
        first = await mixed_run(px.url(), 5000, seed=1)
        forget()
        mid = await Snapshot.take(px)
        rss_first = rss_bytes()
        second = await mixed_run(px.url(), 5000, seed=1)
        forget()
        after = await Snapshot.take(px)
        rss_second = rss_bytes()
        assert first.errors == [] and second.errors == [], (first.errors[:3], second.errors[:3])
        assert_back_to_baseline(before, mid)
        assert_back_to_baseline(before, after)
        growth = rss_second - rss_first
        assert growth < 5 * 1024 * 1024, f"RSS grew {growth / 1e6:.1f} MB over the second run"
