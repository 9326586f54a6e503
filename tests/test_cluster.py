"""Several hydrallm instances sharing breaker state through a real redis-server (issue 18),
and `--workers N` sharing it through their supervisor without Redis."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from clusterhelp import REDIS_SERVER, RedisServer, config_text, health, started, wait_for
from hydrallm.testing import FakeUpstream, faults
from opshelp import ServeProcess, chat, free_port, parse, post_chat, running, url
from test_statuspage import HAVE_CHROMIUM, chromium

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server)"
)
pytest.importorskip("redis", reason="the cluster extra (redis) is not installed")

# The propagation budget is 100 ms; the wait below is wider only because this machine is
# shared and loaded: a miss would still be seen as a failure, not hidden by a sleep.
PROPAGATION_WAIT = 1.0


@contextlib.asynccontextmanager
async def instances(
    tmp_path: Path,
    count: int,
    primary: str,
    backup: str,
    redis: str | None,
    procs: list[ServeProcess] | None = None,
    duration: str = "30s",
) -> AsyncIterator[list[str]]:
    prefix = f"t{free_port()}"  # one prefix for the whole group
    ports = [free_port() for _ in range(count)]
    texts = [
        (p, config_text(primary, backup, p, redis=redis, prefix=prefix, duration=duration))
        for p in ports
    ]
    async with started(tmp_path, texts, procs) as bases:
        yield bases


async def states(session: aiohttp.ClientSession, bases: list[str], model: str) -> list[str]:
    return [(await health(session, b))["models"][model]["state"] for b in bases]


async def clusters(session: aiohttp.ClientSession, bases: list[str]) -> list[str]:
    return [(await health(session, b))["cluster"] for b in bases]


@needs_redis
async def test_a_model_opened_by_one_instance_is_skipped_by_the_others(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    password = "pw-7c1e9a2b"
    url = redis_server.require_password(password)
    procs: list[ServeProcess] = []
    async with FakeUpstream(name="a") as a, FakeUpstream(name="b") as b:
        a.default = faults.status(503)
        async with (
            instances(tmp_path, 3, a.url, b.url, url, procs) as bases,
            aiohttp.ClientSession() as s,
        ):
            await wait_for(lambda: _all(clusters(s, bases), "ok"), 10, "cluster ok everywhere")
            code, headers, _ = await post_chat(s, bases[0], chat())
            assert (code, headers["x-hydrallm-endpoint"]) == (200, "b")
            assert len(a.requests) == 1
            took = await wait_for(
                lambda: _all(states(s, bases, "primary"), "open"),
                PROPAGATION_WAIT,
                "primary open on every instance",
            )
            print(f"propagated in {took * 1000:.0f} ms")
            for base in bases[1:]:
                for _ in range(3):
                    code, headers, _ = await post_chat(s, base, chat())
                    assert (code, headers["x-hydrallm-endpoint"]) == (200, "b")
                    assert headers["x-hydrallm-attempts"] == "1"
            assert len(a.requests) == 1, "another instance asked the open model again"
            # The status page shows the instances seen and the shared record.
            async with s.get(bases[2] + "/_hydrallm/status.json") as resp:
                doc = await resp.json()
            cluster = doc["cluster"]
            assert cluster["mode"] == "redis" and cluster["state"] == "ok"
            assert cluster["shared"]["breaker"]["primary"]["state"] == "open"
            await wait_for(
                lambda: _instances_seen(s, bases[2], 3), 10, "three instances in the status"
            )
            # The Redis password is a secret: nowhere a user or a scraper can read.
            for path in ("/_hydrallm/health", "/_hydrallm/status.json", "/_hydrallm/metrics"):
                async with s.get(bases[0] + path) as resp:
                    assert password not in await resp.text()
        for proc in procs:
            assert "cluster_connected" in proc.log()
            assert password not in proc.log()


async def _instances_seen(s: aiohttp.ClientSession, base: str, n: int) -> bool:
    async with s.get(base + "/_hydrallm/status.json") as resp:
        doc = await resp.json()
    return len(doc["cluster"]["instances"]) == n


async def _all(values: object, want: str) -> bool:
    got = await values  # type: ignore[misc]
    return all(v == want for v in got)


@needs_redis
async def test_exactly_one_instance_probes_a_half_open_model(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with FakeUpstream(name="a") as a, FakeUpstream(name="b") as b:
        a.default = faults.status(503)
        async with (
            instances(tmp_path, 3, a.url, b.url, redis_server.url, duration="2s") as bases,
            aiohttp.ClientSession() as s,
        ):
            await wait_for(lambda: _all(clusters(s, bases), "ok"), 10, "cluster ok everywhere")
            await post_chat(s, bases[0], chat())
            await wait_for(lambda: _all(states(s, bases, "primary"), "open"), 2, "open everywhere")
            await wait_for(
                lambda: _all(states(s, bases, "primary"), "half-open"), 5, "half-open everywhere"
            )
            before = len(a.requests)

            async def wave() -> None:
                results = await asyncio.gather(
                    *(post_chat(s, base, chat()) for base in bases for _ in range(4))
                )
                assert all(code == 200 for code, _, _ in results)

            # Requests everywhere until the probe has happened, then a while longer: the
            # failed probe re-opens the model (for 2 s) on every instance.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while len(a.requests) == before and loop.time() < deadline:
                await wave()
            # Well within the 4 s the failed probe re-opened it for.
            until = loop.time() + 1.0
            while loop.time() < until:
                await wave()
            assert len(a.requests) - before == 1, "more than one instance probed"
            await wait_for(lambda: _all(states(s, bases, "primary"), "open"), 2, "re-opened")

            # The next probe succeeds: the model closes on every instance.
            a.default = faults.ok()
            await wait_for(lambda: _all(states(s, bases, "primary"), "half-open"), 8, "half-open")

            async def closed_everywhere() -> bool:
                await wave()
                return await _all(states(s, bases, "primary"), "closed")

            await wait_for(closed_everywhere, 5, "closed everywhere after a good probe")


@needs_redis
async def test_redis_down_degrades_then_reconciles(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with FakeUpstream(name="a") as a, FakeUpstream(name="b") as b:
        async with (
            instances(tmp_path, 3, a.url, b.url, redis_server.url) as bases,
            aiohttp.ClientSession() as s,
        ):
            await wait_for(lambda: _all(clusters(s, bases), "ok"), 10, "cluster ok everywhere")
            redis_server.kill()
            for base in bases:
                code, headers, _ = await post_chat(s, base, chat())
                assert (code, headers["x-hydrallm-endpoint"]) == (200, "a")
            await wait_for(lambda: _all(clusters(s, bases), "degraded"), 10, "degraded")
            async with s.get(bases[0] + "/_hydrallm/metrics") as resp:
                assert 'hydrallm_cluster_up{mode="redis"} 0.0' in await resp.text()
            # Learned while Redis is away: only the instance that saw it knows.
            a.default = faults.status(503)
            code, headers, _ = await post_chat(s, bases[0], chat())
            assert (code, headers["x-hydrallm-endpoint"]) == (200, "b")
            assert await states(s, bases, "primary") == ["open", "closed", "closed"]
            for base in bases:  # still served, never waiting for Redis
                code, _, _ = await post_chat(s, base, chat())
                assert code == 200

            redis_server.start()
            await wait_for(lambda: _all(clusters(s, bases), "ok"), 10, "ok again")
            await wait_for(
                lambda: _all(states(s, bases, "primary"), "open"), 10, "reconciled after restart"
            )
            async with s.get(bases[1] + "/_hydrallm/metrics") as resp:
                assert 'hydrallm_cluster_up{mode="redis"} 1.0' in await resp.text()


async def test_workers_share_breakers_without_redis(tmp_path: Path) -> None:
    async with FakeUpstream(name="a") as a, FakeUpstream(name="b") as b:
        a.default = faults.status(503)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        path = tmp_path / "config.toml"
        path.write_text(config_text(a.url, b.url, port, redis=None))
        proc = ServeProcess(path, "--workers", "4")
        try:
            await proc.wait_ready(base, timeout=20)
            async with aiohttp.ClientSession() as s:
                code, headers, _ = await post_chat(s, base, chat())
                assert (code, headers["x-hydrallm-endpoint"]) == (200, "b")
            assert len(a.requests) == 1

            async def every_worker_open() -> bool:
                seen = await _by_pid(base)
                states = {pid: h["models"]["primary"]["state"] for pid, h in seen.items()}
                return len(states) == 4 and set(states.values()) == {"open"}

            await wait_for(every_worker_open, 5, "open in all four workers", interval=0.05)
            seen = await _by_pid(base)
            assert {h["cluster"] for h in seen.values()} == {"off"}  # no Redis
            # New connections land on every worker; none asks the open model again.
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as s:
                for _ in range(20):
                    code, headers, _ = await post_chat(s, base, chat())
                    assert (code, headers["x-hydrallm-endpoint"]) == (200, "b")
            assert len(a.requests) == 1
            assert await proc.stop() == 0
        finally:
            proc.kill()


async def _by_pid(base: str, want: int = 4, tries: int = 400) -> dict[int, dict]:
    seen: dict[int, dict] = {}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(tries):
            doc = await health(session, base)
            seen[doc["pid"]] = doc
            if len(seen) >= want:
                break
    return seen


@pytest.mark.browser
@pytest.mark.skipif(not HAVE_CHROMIUM, reason="chromium is not installed")
async def test_the_status_page_shows_a_degraded_cluster(tmp_path: Path) -> None:
    # Redis configured but nothing listens there: the proxy serves, and says so.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    port = free_port()
    config = parse(config_text("http://127.0.0.1:9", "http://127.0.0.1:9", port, redis=dead))
    async with running(config) as (proxy, log):
        page = url(proxy, "main")
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: _all(clusters(s, [page]), "degraded"), 10, "degraded")
        dom = (
            await chromium(f"--user-data-dir={tmp_path / 'p'}", "--dump-dom", page + "/_hydrallm/")
        ).decode()
    assert 'data-loaded="true"' in dom
    assert re.search(r'id="hl-cluster" data-state="degraded">redis degraded<', dom), dom[:2000]
    assert "cluster_degraded" in log.getvalue()
