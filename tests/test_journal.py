"""The request journal end to end: a real proxy, fake upstreams, official SDKs; then what
the journal file says about each request (rows, attempt trails, outcomes)."""

from __future__ import annotations

import gc
import marshal
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai

from hydrallm.observe.journal_query import one, open_readonly, requests
from hydrallm.testing import CANONICAL_TEXT, FakeUpstream, faults
from hydrallm.testing.harness import ProxyHarness
from hydrallm.testing.prefill import PrefillUpstream

MESSAGES = [{"role": "user", "content": "hi"}]


def config(db: Path, *urls: str, kind: str = "openai", extra: str = "", attempts: int = 1) -> str:
    parts = [
        '[retry]\ndefault_interval = "5ms"\nmax_cycles = 1\nstream_idle_timeout = "300ms"\n',
        f'[journal]\npath = "{db}"\n',
        extra,
    ]
    for i, url in enumerate(urls):
        base = url + "/v1" if kind == "openai" else url
        parts.append(f'[endpoints.e{i}]\nurl = "{base}"\napi_key = "sk-journal-secret-{i:04d}"\n')
    for i, _ in enumerate(urls):
        parts.append(
            f'[[models]]\nname = "m{i}"\nendpoint = "e{i}"\ntype = "{kind}"\n'
            f'model = "model-{i}"\nattempts = {attempts}\n'
        )
    return "\n".join(parts)


@asynccontextmanager
async def proxy(text: str) -> AsyncIterator[ProxyHarness]:
    async with ProxyHarness(text, level="info") as px:
        yield px


def rows(db: Path) -> list[dict[str, Any]]:
    conn = open_readonly(db)
    try:
        return list(reversed(requests(conn, limit=1000)))
    finally:
        conn.close()


def whole_trail(db: Path, request_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A request's attempt trail (without latencies) and its row."""
    conn = open_readonly(db)
    try:
        row = one(conn, request_id)
    finally:
        conn.close()
    assert row is not None
    return [{k: v for k, v in a.items() if k != "latency_ms"} for a in row["attempt_trail"]], row


def trail(db: Path, request_id: str) -> list[tuple[Any, ...]]:
    steps, _ = whole_trail(db, request_id)
    return [(a["model"], a["outcome"], a["status"]) for a in steps]


async def chat(url: str, *, stream: bool = False) -> tuple[str, str]:
    """One chat completion through the proxy; (answer text, x-hydrallm-request-id)."""
    text, rid, _ = await chat_usage(url, stream=stream)
    return text, rid


async def chat_usage(url: str, *, stream: bool = False) -> tuple[str, str, Any]:
    """(answer text, x-hydrallm-request-id, the usage the client read)."""
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="client", max_retries=0) as c:
        if stream:
            raw = await c.chat.completions.with_raw_response.create(
                model="asked-model",
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [ch async for ch in raw.parse()]
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            usage = chunks[-1].usage
        else:
            raw = await c.chat.completions.with_raw_response.create(
                model="asked-model",
                messages=MESSAGES,  # type: ignore[arg-type]
            )
            done = raw.parse()
            text, usage = done.choices[0].message.content or "", done.usage
        return text, raw.headers["x-hydrallm-request-id"], usage


async def test_success_row_carries_the_request_id_the_client_and_the_log_saw(
    tmp_path: Path,
) -> None:
    db = tmp_path / "j.db"
    async with FakeUpstream() as up, proxy(config(db, up.url)) as px:
        text, rid, usage = await chat_usage(px.url(), stream=True)
        assert text == CANONICAL_TEXT
        log_ids = re.findall(r" request .*?\bid=(\S+)", px.logs())
    assert log_ids == [rid]
    [row] = rows(db)
    assert row["id"] == rid
    assert (row["status"], row["attempts"], row["outcome"]) == (200, 1, "first_try")
    assert row["requested_model"] == "asked-model" and row["served_model"] == "model-0"
    assert row["endpoint"] == "e0" and row["client_api"] == "openai-chat"
    assert row["stream"] == 1 and row["bytes"] > len(CANONICAL_TEXT)
    assert row["ttft_ms"] is not None and row["latency_ms"] >= row["ttft_ms"]
    # What the client read in the include_usage chunk is what the journal counted.
    assert usage.prompt_tokens > 0
    assert (row["input_tokens"], row["output_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert row["cost_usd"] is None  # "model-0" has no price: unknown, not zero
    assert trail(db, rid) == [("model-0", "success", 200)]


async def test_the_usual_row_waits_in_the_queue_out_of_the_collectors_view(
    tmp_path: Path,
) -> None:
    # A request its first try answered is queued as strings and numbers (and a stream's
    # usage, a tuple of numbers): nothing the cyclic collector must walk again and again
    # while the row waits for its batch (a list or a step kept per request made it run
    # every ~230 requests under load: bench/RESULTS.md, eighth session).  A retried
    # request keeps its trail.
    db = tmp_path / "j.db"
    async with FakeUpstream() as up, proxy(config(db, up.url, attempts=2)) as px:
        sink = px.proxy.state.journal()
        assert sink is not None
        await chat(px.url())
        await chat(px.url(), stream=True)
        up.script(faults.status(503))
        await chat(px.url())
        queued = list(sink._rows)
    assert len(queued) == 3
    gc.collect()
    gc.collect()
    for row in queued[:2]:
        assert not gc.is_tracked(row), row
        # With the C module the usual row is queued already encoded (`Appender`).
        values = marshal.loads(row) if isinstance(row, bytes) else row
        assert values[21] is None and values[25] == 200  # no trail; the first try's status
    assert gc.is_tracked(queued[2]) and len(queued[2][21]) == 2  # the 503, then the answer
    assert [r["outcome"] for r in rows(db)] == ["first_try", "first_try", "retried"]


async def test_retry_then_success(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with FakeUpstream() as up:
        up.script(faults.status(503))
        async with proxy(config(db, up.url, attempts=2)) as px:
            _, rid = await chat(px.url())
    [row] = rows(db)
    assert (row["status"], row["attempts"], row["retries"], row["outcome"]) == (
        200,
        2,
        1,
        "retried",
    )
    assert trail(db, rid) == [("model-0", "status", 503), ("model-0", "success", 200)]


async def test_fallback_and_then_the_cooldown_skip(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    extra = '[cooldown]\nfailures = 1\nduration = "5m"\n'
    async with (
        FakeUpstream(default=faults.status(429)) as a,
        FakeUpstream() as b,
        proxy(config(db, a.url, b.url, extra=extra)) as px,
    ):
        _, first = await chat(px.url())
        _, second = await chat(px.url())
    r1, r2 = rows(db)
    assert (r1["outcome"], r1["fallbacks"], r1["served_model"]) == ("fell_back", 1, "model-1")
    assert trail(db, first) == [("model-0", "status", 429), ("model-1", "success", 200)]
    # The primary's circuit is open: the second request never asks it, and says so.
    assert (r2["skips"], r2["attempts"], r2["served_model"]) == (1, 1, "model-1")
    assert trail(db, second) == [(None, "skipped_cooldown", None), ("model-1", "success", 200)]
    assert len(a.requests) == 1


async def test_exhaustion_is_a_failed_row_with_every_attempt(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    extra = "[cooldown]\nenabled = false\n"
    async with (
        FakeUpstream(default=faults.status(503)) as a,
        FakeUpstream(default=faults.status(502)) as b,
        proxy(config(db, a.url, b.url, extra=extra, attempts=2)) as px,
        aiohttp.ClientSession() as s,
    ):
        body = {"model": "x", "messages": MESSAGES}
        async with s.post(px.url() + "/v1/chat/completions", json=body) as r:
            assert r.status == 502
            rid = r.headers["x-hydrallm-request-id"]
    [row] = rows(db)
    assert (row["status"], row["attempts"], row["outcome"]) == (502, 4, "failed")
    assert trail(db, rid) == [
        ("model-0", "status", 503),
        ("model-0", "status", 503),
        ("model-1", "status", 502),
        ("model-1", "status", 502),
    ]


async def test_a_refused_request_has_an_id_and_a_row(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    text = config(db, "http://127.0.0.1:9") + '\n[server]\nauth_keys = ["proxy-key-123456"]\n'
    async with proxy(text) as px, aiohttp.ClientSession() as s:
        async with s.post(px.url() + "/v1/chat/completions", json={"model": "x"}) as r:
            assert r.status == 401
            rid = r.headers["x-hydrallm-request-id"]
    [row] = rows(db)
    assert (row["id"], row["status"], row["attempts"], row["outcome"]) == (rid, 401, 0, "failed")


async def test_a_broken_stream_finished_on_the_fallback_is_recovered(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    extra = "[cooldown]\nenabled = false\n"
    async with (
        FakeUpstream(default=faults.reset_mid_stream(after_chunks=3)) as a,
        PrefillUpstream() as b,
        proxy(config(db, a.url, b.url, kind="anthropic", extra=extra)) as px,
    ):
        async with anthropic.AsyncAnthropic(base_url=px.url(), api_key="x", max_retries=0) as c:
            async with c.messages.stream(
                model="claude-x", max_tokens=100, messages=MESSAGES
            ) as stream:
                final = await stream.get_final_message()
    assert "".join(b.text for b in final.content if b.type == "text") == CANONICAL_TEXT
    [row] = rows(db)
    assert row["outcome"] == "recovered"
    assert row["recovered"] == "prefill"
    assert row["model_id"] == "m1" and row["served_model"] == "model-1"
    assert row["error"] is not None  # why the first stream broke
    # The first try, which answered until its stream broke, then the fallback that ended it.
    first = {"model": "model-0", "endpoint": "e0", "key": "…0000", "outcome": "success",
             "status": 200, "error": None, "waited_ms": 0.0}  # fmt: skip
    steps, figures = whole_trail(db, row["id"])
    assert steps == [first, first | {"model": "model-1", "endpoint": "e1", "key": "…0001"}]
    assert (figures["key"], figures["retries"], figures["fallbacks"]) == ("…0001", 0, 1)


async def test_a_stream_that_cannot_be_recovered_is_failed_gave_up(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with (
        FakeUpstream(default=faults.reset_mid_stream(after_chunks=3)) as a,
        proxy(config(db, a.url, kind="anthropic")) as px,
    ):
        async with anthropic.AsyncAnthropic(base_url=px.url(), api_key="x", max_retries=0) as c:
            try:
                async with c.messages.stream(
                    model="claude-x", max_tokens=100, messages=MESSAGES
                ) as stream:
                    await stream.get_final_message()
            except anthropic.APIError:
                pass
    [row] = rows(db)
    assert row["outcome"] == "failed" and row["recovered"] == "gave_up"
    # A first try's row restored whole, its model the request's.
    steps, figures = whole_trail(db, row["id"])
    assert steps == [{"model": "model-0", "endpoint": "e0", "key": "…0000", "outcome": "success",
                      "status": 200, "error": None, "waited_ms": 0.0}]  # fmt: skip
    assert (figures["key"], figures["retries"], figures["fallbacks"]) == ("…0000", 0, 0)


async def test_a_reload_brings_new_prices(tmp_path: Path) -> None:
    import dataclasses

    from hydrallm.app.reload import Reloader
    from hydrallm.config import Price

    db = tmp_path / "j.db"
    async with FakeUpstream() as up:
        async with proxy(config(db, up.url)) as px:
            await chat(px.url())
            priced = dataclasses.replace(px.config, prices=(("model-*", Price(1e6, 0, 0, 0)),))
            reloader = Reloader(px.proxy, lambda: priced, path=None)
            assert await reloader.reload("test")
            await chat(px.url())
    before, after = rows(db)
    assert before["cost_usd"] is None  # "model-0" had no price
    assert after["cost_usd"] == after["input_tokens"]  # $1 a token, as the new config says


async def test_a_session_header_is_kept_as_a_hash_never_as_sent(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    session = "0d9c5a1e-session-of-claude-code"
    async with FakeUpstream() as up, proxy(config(db, up.url)) as px:
        headers = {"X-Claude-Code-Session-Id": session}  # as Claude Code spells it
        async with openai.AsyncOpenAI(
            base_url=px.url() + "/v1", api_key="client", max_retries=0, default_headers=headers
        ) as c:
            await c.chat.completions.create(model="asked-model", messages=MESSAGES)  # type: ignore[arg-type]
        await chat(px.url())  # no session header
    with_session, without = rows(db)
    assert isinstance(with_session["session"], str) and len(with_session["session"]) == 16
    assert without["session"] is None
    assert not files_hold(tmp_path, session.encode())


def files_hold(folder: Path, data: bytes) -> bool:
    return any(data in p.read_bytes() for p in folder.rglob("*") if p.is_file())
