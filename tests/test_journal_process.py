"""The journal's writer process: it dies and the proxy goes on (one log line, journal
off); it never outlives the proxy; a reload reaches it; it keeps writing a busy proxy's
rows while the proxy runs."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from hydrallm.observe.journal import JournalSink
from hydrallm.testing import FakeUpstream
from hydrallm.testing.harness import ProxyHarness
from opshelp import two_workers
from test_journal import chat, config, rows


def writers(pid: int) -> list[int]:
    """The journal writer processes among the descendants of `pid`."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            todo += children
            for child in children:
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"journal_writer" in cmdline:
                    found.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def sink_of(px: ProxyHarness) -> JournalSink:
    return next(s for s in px.proxy.state.telemetry.sinks if isinstance(s, JournalSink))


async def test_a_killed_writer_is_reported_once_and_requests_go_on(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with FakeUpstream() as up, ProxyHarness(config(db, up.url), level="info") as px:
        await chat(px.url())
        sink = sink_of(px)
        await until(lambda: sink.written == 1)  # the writer process runs and wrote it
        [pid] = writers(os.getpid())
        os.kill(pid, signal.SIGKILL)
        for _ in range(3):
            text, _ = await chat(px.url())
            assert text
        async with (
            aiohttp.ClientSession() as s,
            s.get(px.url() + "/_hydrallm/status.json") as r,
        ):
            status = (await r.json())["journal"]
        await until(lambda: not sink.enabled)
        logs = px.logs()
    lines = [ln for ln in logs.splitlines() if " journal " in ln]
    assert len(lines) == 1 and "disabled" in lines[0] and "writer process ended" in lines[0]
    assert status["written"] == 1
    assert sink.error is not None and not alive(pid)
    assert [r["id"] for r in rows(db)].__len__() == 1  # what it wrote before stays
    assert writers(os.getpid()) == []


async def test_no_writer_is_left_behind_by_a_proxy_in_process(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with FakeUpstream() as up, ProxyHarness(config(db, up.url), level="info") as px:
        await chat(px.url())
        await until(lambda: sink_of(px).written == 1)
        [pid] = writers(os.getpid())
        await chat(px.url())  # still queued when the proxy closes: written at close
    assert not alive(pid) and writers(os.getpid()) == []
    assert len(rows(db)) == 2


async def test_a_short_run_writes_its_rows_without_starting_a_writer(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with FakeUpstream() as up, ProxyHarness(config(db, up.url), level="info") as px:
        _, rid = await chat(px.url())
        assert writers(os.getpid()) == []  # started at the first flush, a second in
    assert [r["id"] for r in rows(db)] == [rid]
    assert writers(os.getpid()) == []


async def test_a_reload_gives_the_running_writer_new_prices(tmp_path: Path) -> None:
    from hydrallm.app.reload import Reloader
    from hydrallm.config import Price

    db = tmp_path / "j.db"
    async with FakeUpstream() as up, ProxyHarness(config(db, up.url), level="info") as px:
        sink = sink_of(px)
        await chat(px.url())
        await until(lambda: sink.written == 1)  # the writer process has the old prices
        priced = dataclasses.replace(px.config, prices=(("model-*", Price(1e6, 0, 0, 0)),))
        assert await Reloader(px.proxy, lambda: priced, path=None).reload("test")
        await chat(px.url())
        await until(lambda: sink.written == 2)  # written by the process, not at close
    before, after = rows(db)
    assert before["cost_usd"] is None  # "model-0" had no price
    assert after["input_tokens"] and after["cost_usd"] == after["input_tokens"]  # $1 a token


async def test_workers_writers_stop_with_the_server(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with FakeUpstream() as up, two_workers(tmp_path, config(db, up.url)) as (proc, base):
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as s:
            for _ in range(40):
                body = {"model": "m0", "messages": [{"role": "user", "content": "hi"}]}
                async with s.post(base + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
        # One writer per worker, each started by its first flush.
        await until(lambda: len(writers(proc.proc.pid)) == 2)
        pids = writers(proc.proc.pid)
        assert await proc.stop() == 0
    assert not any(alive(p) for p in pids)
    assert len(rows(db)) == 40
    assert " journal " not in proc.log()
