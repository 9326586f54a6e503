"""Faults on purpose, at every phase (issue 8): the upstream misbehaves, the client misbehaves.

Every upstream fault must end in the right retry/fallback (or a clean error in the API's
format) and leave the proxy healthy for the next request.  Every client disconnect must
stop the upstream work at once, and no further attempt may start.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest

from hydrallm.observe.events import Logger
from hydrallm.observe.log import bridge_aiohttp_logging, unbridge_aiohttp_logging
from hydrallm.proxy.h1server import H1Server
from hydrallm.proxy.wire import Request, Response, StreamResponse
from hydrallm.testing import FakeUpstream, RawFaultServer, faults
from hydrallm.testing.harness import ProxyHarness

CHAT = "/v1/chat/completions"


def config(*models: tuple[str, str, int], extra: str = "", model_extra: str = "") -> str:
    """OpenAI-type chain: one endpoint and model per (url, name, attempts)."""
    parts = ['[retry]\ndefault_interval = "10ms"\nmax_cycles = 1\n' + extra]
    parts.append("[cooldown]\nenabled = false\n")
    for i, (url, _name, _attempts) in enumerate(models):
        parts.append(f'[endpoints.e{i}]\nurl = "{url}"\napi_key = "sk-faults-key-0001"\n')
    for i, (_url, name, attempts) in enumerate(models):
        parts.append(
            f'[[models]]\nendpoint = "e{i}"\ntype = "openai"\nmodel = "{name}"\n'
            f"attempts = {attempts}\n{model_extra if i == 0 else ''}\n"
        )
    return "\n".join(parts)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def faulty(kind: str) -> AsyncIterator[tuple[str, Callable[[], int]]]:
    """An upstream that fails in `kind`; yields (url, number of attempts it saw)."""
    if kind == "refused":
        yield f"http://127.0.0.1:{closed_port()}", lambda: 0
        return
    if kind.startswith("raw:"):
        async with RawFaultServer(kind[4:]) as raw:
            yield raw.url, lambda: raw.connections
        return
    fault = {
        "reset_before_headers": faults.reset_before_headers(),
        "reset_after_headers": faults.reset_after_headers(),
        "reset_mid_body": faults.reset_mid_stream(after_chunks=1),
        "error_event_first": faults.error_event_first(),
        "status_503": faults.status(503),
        "hang": faults.hang(),
    }[kind]
    async with FakeUpstream(default=fault) as fake:
        yield fake.url, lambda: len(fake.requests)


# Over 1 MiB, aiohttp's client warns (ResourceWarning) about a bytes body; with warnings
# as errors the proxy's send raises.  upstream.py must build the payload itself (report).
BIG = 4 * 1024 * 1024
# (kind, streaming request, body size). The model timeout is 400ms: faults that never
# answer become timeouts, which fall back to the next model at once (fallback_on_timeout).
UPSTREAM_FAULTS = [
    ("refused", False, 0),
    ("raw:reset_before_status", False, 0),
    ("raw:garbage_status", False, 0),
    ("raw:oversized_headers", False, 0),
    ("raw:short_body", False, 0),
    ("raw:accept_never_answer", False, 0),
    ("raw:never_read_body", False, 1000 * 1000),
    ("raw:never_read_body", False, BIG),
    ("reset_before_headers", False, 0),
    ("reset_after_headers", False, 0),
    ("reset_mid_body", False, 0),
    ("reset_after_headers", True, 0),
    ("error_event_first", True, 0),
    ("status_503", False, 0),
    ("hang", True, 0),
]


TIMEOUT_KINDS = frozenset({"raw:accept_never_answer", "raw:never_read_body", "hang"})


def body_of(size: int, stream: bool) -> bytes:
    payload = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    raw = json.dumps(payload).encode()
    if size:
        raw = raw[:-1] + b', "pad": "' + b"p" * size + b'"}'
    return raw


async def post(
    s: aiohttp.ClientSession, url: str, body: bytes
) -> tuple[int, dict[str, str], bytes]:
    # A BytesIO keeps the Content-Length and spares aiohttp's "large raw bytes" warning.
    data = io.BytesIO(body) if len(body) > 65536 else body
    async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        return r.status, dict(r.headers), await r.read()


@pytest.mark.parametrize(("kind", "stream", "size"), UPSTREAM_FAULTS, ids=lambda v: str(v))
async def test_upstream_fault_falls_back_and_the_proxy_stays_healthy(
    kind: str, stream: bool, size: int
) -> None:
    async with faulty(kind) as (bad_url, seen), FakeUpstream() as good:
        cfg = config((bad_url, "bad", 2), (good.url, "good", 1), model_extra='timeout = "400ms"')
        cfg = cfg.replace("max_cycles = 1\n", 'max_cycles = 1\nfirst_token_timeout = "400ms"\n')
        tries = 1 if kind in TIMEOUT_KINDS else 2
        async with ProxyHarness(cfg) as px, aiohttp.ClientSession() as s:
            for round_ in range(2):  # the second round proves the proxy is still healthy
                status, headers, body = await post(s, px.url() + CHAT, body_of(size, stream))
                assert status == 200, (kind, round_, body[:300])
                assert headers["x-hydrallm-model"] == "good", (kind, body[:300])
                assert headers["x-hydrallm-attempts"] == str(tries + 1)
                text = body.decode()
                assert (
                    ("[DONE]" in text)
                    if stream
                    else (json.loads(text)["object"] == "chat.completion")
                )
            if kind != "refused":
                assert seen() == 2 * tries, f"{kind}: the bad upstream saw {seen()} attempts"
            assert len(good.requests) == 2
            assert "Traceback" not in px.logs()


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("refused", 502),
        ("raw:garbage_status", 502),
        ("raw:short_body", 502),
        ("raw:accept_never_answer", 504),
        ("reset_mid_body", 502),
        ("status_503", 503),
    ],
)
async def test_exhausted_upstream_fault_is_a_clean_error(kind: str, expect: int) -> None:
    async with faulty(kind) as (bad_url, _seen):
        cfg = config((bad_url, "bad", 2), model_extra='timeout = "300ms"')
        async with ProxyHarness(cfg) as px, aiohttp.ClientSession() as s:
            for _ in range(2):
                status, headers, body = await post(s, px.url() + CHAT, body_of(0, False))
                assert status == expect
                tries = 1 if kind in TIMEOUT_KINDS else 2
                assert headers["x-hydrallm-attempts"] == str(tries)
                error = json.loads(body)["error"]
                assert error["message"]
                if expect != 503:  # proxy-made: says why
                    assert error["message"].startswith(f"hydrallm: all {tries} attempt")
            async with s.get(px.url() + "/_hydrallm/health") as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"


async def test_body_longer_than_content_length_is_refused_and_never_poisons_the_pool() -> None:
    # Bytes after the declared body could be a smuggled second response: the attempt is a
    # protocol error (retried, then fallen back from) and the extra bytes reach no one.
    async with RawFaultServer("long_body") as raw, FakeUpstream() as good:
        cfg = config((raw.url, "raw", 2), (good.url, "good", 1))
        async with ProxyHarness(cfg) as px, aiohttp.ClientSession() as s:
            for _ in range(3):
                status, headers, body = await post(s, px.url() + CHAT, body_of(0, False))
                assert status == 200 and b"xxxx" not in body
                assert json.loads(body)["model"] == "good"
                assert headers["x-hydrallm-attempts"] == "3"
            assert "outcome=protocol_error" in px.logs()
        assert raw.connections == 6 and len(good.requests) == 3


@pytest.mark.parametrize("size", [0, 1000 * 1000, BIG])
async def test_answer_before_the_request_body_is_read_is_relayed(size: int) -> None:
    async with RawFaultServer("answer_before_body") as raw:
        async with ProxyHarness(config((raw.url, "raw", 1))) as px, aiohttp.ClientSession() as s:
            for _ in range(2):
                status, _headers, body = await post(s, px.url() + CHAT, body_of(size, False))
                assert (status, json.loads(body)) == (200, {"early": True})


async def test_reset_mid_stream_after_commit_ends_with_an_error_event() -> None:
    async with FakeUpstream(default=faults.reset_mid_stream(after_chunks=2)) as up:
        cfg = config((up.url, "m", 1), extra='midstream = "error"\n')
        async with ProxyHarness(cfg) as px, aiohttp.ClientSession() as s:
            status, _h, body = await post(s, px.url() + CHAT, body_of(0, True))
            assert status == 200
            text = body.decode()
            assert '"error"' in text and "hydrallm: upstream stream failed" in text
            assert "[DONE]" not in text
            up.default = faults.ok()
            status, _h, body = await post(s, px.url() + CHAT, body_of(0, True))
            assert status == 200 and b"[DONE]" in body


# --- client faults ----------------------------------------------------------------------


async def raw_request(
    url: str, head: bytes, body: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + body)
    await writer.drain()
    return reader, writer


def head(path: str, *lines: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: proxy\r\n" + "".join(f"{x}\r\n" for x in lines) + "\r\n"
    ).encode()


async def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_client_disconnect_before_the_body_is_sent_forwards_nothing() -> None:
    async with FakeUpstream() as up, ProxyHarness(config((up.url, "m", 1))) as px:
        _r, w = await raw_request(px.url(), head(CHAT, "Content-Length: 1000"), b'{"model":')
        await asyncio.sleep(0.1)
        w.transport.abort()
        await wait_for(
            lambda: (
                px.proxy.state.in_flight == 0
                and not px.proxy.listeners["default"].server.connections
            )
        )  # type: ignore[union-attr]
        await asyncio.sleep(0.1)
        assert not up.requests
        async with aiohttp.ClientSession() as s:
            status, _h, _b = await post(s, px.url() + CHAT, body_of(0, False))
            assert status == 200


async def test_client_disconnect_while_waiting_between_attempts_stops_the_plan() -> None:
    async with FakeUpstream(default=faults.status(503)) as a, FakeUpstream() as b:
        cfg = config((a.url, "a", 3), (b.url, "b", 1)).replace('"10ms"', '"600ms"')
        async with ProxyHarness(cfg) as px:
            _r, w = await raw_request(px.url(), head(CHAT, "Content-Length: 14"), b'{"model":"x"} ')
            await wait_for(lambda: len(a.requests) == 1)
            w.transport.abort()  # during the 600ms wait before the retry
            await wait_for(lambda: px.proxy.state.in_flight == 0)
            await asyncio.sleep(0.9)
            assert len(a.requests) == 1 and not b.requests


async def test_client_disconnect_while_the_upstream_thinks_closes_it_at_once() -> None:
    async with FakeUpstream(default=faults.hang()) as a, FakeUpstream() as b:
        async with ProxyHarness(config((a.url, "a", 2), (b.url, "b", 1))) as px:
            _r, w = await raw_request(px.url(), head(CHAT, "Content-Length: 14"), b'{"model":"x"} ')
            await wait_for(lambda: len(a.requests) == 1)
            started = time.monotonic()
            w.transport.abort()
            await a.wait_aborted(1, timeout=1.0)
            assert time.monotonic() - started < 0.5
            await asyncio.sleep(0.2)
            assert len(a.requests) == 1 and not b.requests


async def test_client_disconnect_mid_stream_closes_the_upstream_at_once() -> None:
    async with FakeUpstream(default=faults.slow_chunks(0.1)) as a, FakeUpstream() as b:
        async with ProxyHarness(config((a.url, "a", 2), (b.url, "b", 1))) as px:
            async with aiohttp.ClientSession() as s:
                r = await s.post(px.url() + CHAT, data=body_of(0, True))
                assert b"data:" in await r.content.readany()
                started = time.monotonic()
                r.close()
            await a.wait_aborted(1, timeout=1.0)
            assert time.monotonic() - started < 0.5
            await asyncio.sleep(0.2)
            assert len(a.requests) == 1 and not b.requests
            assert px.proxy.state.in_flight == 0


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_over_the_limit_is_413_and_nothing_is_forwarded(chunked: bool) -> None:
    async with FakeUpstream() as up:
        cfg = '[server]\nmax_body_size = "1KiB"\n' + config((up.url, "m", 1))
        async with ProxyHarness(cfg) as px, aiohttp.ClientSession() as s:
            big = b'{"model":"x","pad":"' + b"p" * 4096 + b'"}'

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(0, len(big), 512):
                    yield big[i : i + 512]

            data: object = chunks() if chunked else big
            async with s.post(px.url() + CHAT, data=data) as r:
                assert r.status == 413
                assert "larger than the limit" in (await r.json())["error"]["message"]
            status, _h, _b = await post(s, px.url() + CHAT, body_of(0, False))
            assert status == 200
        assert len(up.requests) == 1


@pytest.mark.parametrize(
    "lines",
    [
        ("Content-Length: 14", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: chunked", "Content-Length: 14"),
        ("Content-Length: 14", "Content-Length: 15"),
        ("Transfer-Encoding: gzip, chunked",),
        ("X-Smuggle: a\rb", "Content-Length: 14"),
    ],
    ids=["cl-te", "te-cl", "cl-cl", "te-not-last-chunked", "bare-cr"],
)
async def test_ambiguous_framing_is_rejected_and_nothing_is_forwarded(
    lines: tuple[str, ...],
) -> None:
    async with FakeUpstream() as up, ProxyHarness(config((up.url, "m", 1))) as px:
        r, w = await raw_request(px.url(), head(CHAT, *lines), b'{"model":"x"}\n')
        async with asyncio.timeout(2):
            answer = await r.read()
        w.close()
        assert answer.split(b" ", 2)[1] == b"400", answer[:200]
        await asyncio.sleep(0.1)
        assert not up.requests


# --- slow loris: the request head must arrive within read_timeout --------------------------


async def trickle(url: str, interval: float, limit: float) -> tuple[bytes, float]:
    """Send a request head one header line per `interval`; return what came back, and when."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    got = b""

    async def feed() -> None:
        i = 0
        while True:
            await asyncio.sleep(interval)
            writer.write(f"X-Slow-{i}: {'a' * 10}\r\n".encode())
            i += 1

    feeder = asyncio.create_task(feed())
    try:
        async with asyncio.timeout(limit):
            got = await reader.read()
    except TimeoutError:
        got = b"<still open>"
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        writer.transport.abort()
    return got, time.monotonic() - started


@asynccontextmanager
async def guarded(
    read_timeout: float, handler: Callable[[Request], Awaitable[Response | StreamResponse]]
) -> AsyncIterator[tuple[str, list[str]]]:
    timeouts: list[str] = []
    server = H1Server(handler, read_timeout=read_timeout, on_timeout=timeouts.append)
    await server.listen("127.0.0.1", 0)
    host, port = server.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", timeouts
    finally:
        await server.shutdown(0.5)


async def _echo(request: Request) -> Response:
    body = await request.read_body(1 << 20)
    return Response(body=b"ok:" + body)


async def test_guarded_server_closes_a_trickling_head_with_408() -> None:
    async with guarded(0.4, _echo) as (url, timeouts):
        got, took = await trickle(url, 0.1, 3.0)
        assert got.startswith(b"HTTP/1.1 408 Request Timeout"), got[:100]
        assert 0.35 < took < 1.0
        assert len(timeouts) == 1 and timeouts[0].startswith("127.0.0.1:")


async def test_guarded_server_lets_keep_alive_and_slow_bodies_be() -> None:
    async def slow_handler(request: Request) -> Response:
        await asyncio.sleep(0.3)  # handler time is not head time
        return await _echo(request)

    async with guarded(0.25, slow_handler) as (url, timeouts), aiohttp.ClientSession() as s:
        for i in range(3):  # one keep-alive connection over ~1s, four times read_timeout
            async with s.post(url, data=str(i)) as r:
                assert await r.read() == f"ok:{i}".encode()
            await asyncio.sleep(0.1)
        # A whole head in one go, then idle: the keep-alive timeout governs, not this guard.
        r_, w = await raw_request(url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        line = await r_.readline()
        await asyncio.sleep(0.5)
        assert line.startswith(b"HTTP/1.1 200")
        assert not w.transport.is_closing()
        w.close()
        assert timeouts == []


async def test_proxy_closes_a_slow_loris_within_read_timeout() -> None:
    async with FakeUpstream() as up:
        cfg = config((up.url, "m", 1)).replace(
            "[cooldown]", '[server]\nread_timeout = "400ms"\n[cooldown]'
        )
        async with ProxyHarness(cfg) as px:
            got, took = await trickle(px.url(), 0.1, 2.5)
            assert got.startswith(b"HTTP/1.1 408"), got[:100]
            assert took < 1.2
            assert not up.requests


async def test_body_slower_than_read_timeout_is_408_and_nothing_is_forwarded() -> None:
    async with FakeUpstream() as up:
        cfg = config((up.url, "m", 1)).replace(
            "[cooldown]", '[server]\nread_timeout = "300ms"\n[cooldown]'
        )
        async with ProxyHarness(cfg) as px:
            r, w = await raw_request(px.url(), head(CHAT, "Content-Length: 14"), b'{"mod')
            async with asyncio.timeout(2):
                answer = await r.readuntil(b"\r\n")
            w.close()
            assert answer.startswith(b"HTTP/1.1 408")
        assert not up.requests


# --- aiohttp's own log records: one line, no traceback ---------------------------------


async def test_malformed_request_is_logged_as_one_line_without_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    try:
        async with FakeUpstream() as up, ProxyHarness(config((up.url, "m", 1))) as px:
            # The proxy bridges aiohttp's logging itself (runner.start); records emitted
            # while it shuts down still go to its log, so unbridge only afterwards.
            r, w = await raw_request(
                px.url(), head(CHAT, "Content-Length: 14", "Transfer-Encoding: chunked"), b"{}"
            )
            async with asyncio.timeout(2):
                answer = await r.read()
            w.close()
            await asyncio.sleep(0.05)
            logs = px.logs()
    finally:
        unbridge_aiohttp_logging()
    assert answer.split(b" ", 2)[1] == b"400"
    lines = [x for x in logs.splitlines() if "client_error" in x]
    assert len(lines) == 1, logs
    assert (
        "peer=127.0.0.1" in lines[0] and "Content-Length" in lines[0] and "status=400" in lines[0]
    )
    assert "Traceback" not in logs
    # Nothing reached the process's stderr (where a stdlib traceback would land).
    assert "Traceback" not in capfd.readouterr().err
    assert not up.requests


async def test_bridge_logs_other_aiohttp_errors_as_one_line() -> None:
    import io
    import logging

    stream = io.StringIO()
    logger = Logger("info", stream=stream, secrets=["sk-bridge-secret"], color=False)
    bridge_aiohttp_logging(logger)
    bridge_aiohttp_logging(logger)  # idempotent: one handler
    try:
        try:
            raise RuntimeError("boom with sk-bridge-secret\nsecond line")
        except RuntimeError:
            logging.getLogger("aiohttp.server").exception("Unhandled exception")
        logging.getLogger("aiohttp.web").debug("below the threshold")
        logger.flush()
    finally:
        unbridge_aiohttp_logging()
    out = stream.getvalue()
    assert out.count("\n") == 1, out
    assert "ERROR" in out and "source=aiohttp.server" in out
    assert "RuntimeError: boom with [redacted] second line" in out
    assert logging.getLogger("aiohttp").propagate is True  # unbridged


async def test_read_timeout_bounds_head_and_body_together() -> None:
    # The head takes most of read_timeout; the body then gets only what is left of it.
    async with FakeUpstream() as up:
        cfg = config((up.url, "m", 1)).replace(
            "[cooldown]", '[server]\nread_timeout = "600ms"\n[cooldown]'
        )
        async with ProxyHarness(cfg) as px:
            host, port = px.url().removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            started = time.monotonic()
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            await asyncio.sleep(0.4)
            writer.write(b"Content-Length: 14\r\n\r\n" + b'{"mod')  # the rest never comes
            async with asyncio.timeout(3):
                answer = await reader.readuntil(b"\r\n")
            took = time.monotonic() - started
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408")
        # ~0.6 s from the first byte, not 0.4 s of head plus a fresh 0.6 s for the body.
        assert took < 0.9, took
        assert not up.requests
