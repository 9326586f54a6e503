"""hydrallm's own HTTP/1.1 server (proxy/h1server.py): the protocol rules a client notices.

Each test runs a real `H1Server` on loopback with a small handler and speaks raw bytes to
it (or uses aiohttp's client), so what is checked is exactly what goes over the wire.
"""

from __future__ import annotations

import asyncio
import gzip
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from hydrallm.observe.events import Logger
from hydrallm.proxy.h1server import H1Server, Handler
from hydrallm.proxy.relay import WRITE_HIGH_WATER, bound_send_queue
from hydrallm.proxy.wire import (
    BodyTooLarge,
    Request,
    RequestBodyError,
    Response,
    StreamResponse,
    json_response,
)


@asynccontextmanager
async def serving(
    handler: Handler, *, read_timeout: float = 5.0, keepalive: float = 75.0
) -> AsyncIterator[tuple[H1Server, int, io.StringIO]]:
    stream = io.StringIO()
    log = Logger("info", stream=stream, color=False)
    server = H1Server(handler, read_timeout=read_timeout, keepalive_timeout=keepalive, log=log)
    await server.listen("127.0.0.1", 0)
    try:
        yield server, server.addresses[0][1], stream
    finally:
        await server.shutdown(0.5)
        log.flush()


async def exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send `data`, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()


async def echo(request: Request) -> Response:
    body = await request.read_body(1 << 20)
    text = f"{request.method} {request.raw_path} {len(body)} {body[:40]!r}"
    return Response(body=text.encode(), content_type="text/plain")


async def test_pipelined_requests_are_answered_in_order_with_both_body_framings() -> None:
    async def slow_first(request: Request) -> Response:
        if request.raw_path == "/1":
            await asyncio.sleep(0.2)  # the later requests must still wait their turn
        return await echo(request)

    async with serving(slow_first) as (_s, port, _log):
        answer = await exchange(
            port,
            b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            b"GET /3?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    bodies = [b"POST /1 5 b'hello'", b"POST /2 5 b'abcde'", b"GET /3?q=1 0 b''"]
    positions = [answer.find(b) for b in bodies]
    assert all(p > 0 for p in positions) and positions == sorted(positions), answer
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert answer.count(b"Date: ") == 3
    # The last request asked to close: the server says so, then closes (read() ended).
    assert answer.rsplit(b"HTTP/1.1 200 OK\r\n", 1)[1].count(b"Connection: close") == 1


async def test_keep_alive_over_aiohttp_client_and_http_1_0() -> None:
    async with serving(echo) as (_s, port, _log):
        async with aiohttp.ClientSession() as s:
            for i in range(3):
                async with s.post(f"http://127.0.0.1:{port}/k", data=b"x" * i) as r:
                    assert (await r.read()).startswith(f"POST /k {i}".encode())
            connector = s.connector
            assert connector is not None and len(connector._conns) == 1  # one connection, reused
        # HTTP/1.0 without keep-alive: the answer ends the connection, said in the head.
        answer = await exchange(port, b"GET /old HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in answer


async def test_keep_alive_times_from_the_last_answer_not_the_first() -> None:
    # Requests 0.2 s apart with a 0.3 s keep-alive: the connection outlives the first idle
    # period's deadline because it was busy again; idle longer than 0.3 s, it is closed.
    async with serving(echo, keepalive=0.3) as (_s, port, _log):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(4):
                writer.write(b"GET /k%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
                assert (await reader.readuntil(b"b''")).startswith(b"HTTP/1.1 200 OK")
                await asyncio.sleep(0.2)
            async with asyncio.timeout(2.0):
                assert await reader.read() == b""  # closed, idle past the keep-alive time
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("head", "problem"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"request target is longer"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", b"longer than 8190"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(130))
            + b"\r\n",
            b"more than 128 headers",
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", b"more than one Host"),
        (b"GET / HTTP/1.1\r\n\r\n", b"no Host header"),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00", b"Invalid method"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", b"only chunked"),
    ],
    ids=["long-target", "long-header", "many-headers", "two-hosts", "no-host", "tls", "te-gzip"],
)
async def test_bad_request_bytes_get_400_with_a_message_never_a_traceback(
    head: bytes, problem: bytes
) -> None:
    called: list[str] = []

    async def handler(request: Request) -> Response:
        called.append(request.raw_path)
        return Response()

    async with serving(handler) as (_s, port, log):
        answer = await exchange(port, head)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]
    assert b"Connection: close" in answer and problem in answer, answer[-200:]
    assert called == []
    lines = [x for x in log.getvalue().splitlines() if "client_error" in x]
    assert len(lines) == 1 and "status=400" in lines[0] and "peer=127.0.0.1" in lines[0]
    assert "Traceback" not in log.getvalue()


async def test_request_headers_reach_the_handler_as_sent_less_trailing_blanks() -> None:
    # Decoded in one piece (h1head.request_headers): every name and value must come out
    # as it went in, in order, repeats kept, trailing blanks cut, odd bytes kept.
    seen: list[tuple[list[tuple[str, str]], list[str]]] = []

    async def handler(request: Request) -> Response:
        seen.append((list(request.headers.items()), request.names))
        return Response()

    async with serving(handler) as (_s, port, _log):
        answer = await exchange(
            port,
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: a b \t\r\nX-Rep: 1\r\nx-rep: 2\r\n"
            b"X-Empty:\r\nX-Bytes: \xc3\xa9\xff\r\nConnection: close\r\n\r\n",
        )
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:100]
    ((items, names),) = seen
    assert items == [
        ("Host", "x"),
        ("X-Pad", "a b"),
        ("X-Rep", "1"),
        ("x-rep", "2"),
        ("X-Empty", ""),
        ("X-Bytes", "é\udcff"),
        ("Connection", "close"),
    ]
    assert names == ["host", "x-pad", "x-rep", "x-rep", "x-empty", "x-bytes", "connection"]


async def test_a_broken_chunked_body_fails_the_read_and_the_client_gets_400() -> None:
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        try:
            await request.read_body(1 << 20)
        except RequestBodyError as exc:
            seen.append(str(exc))
            return Response(400, body=str(exc).encode())
        return Response()

    async with serving(handler) as (_s, port, _log):
        answer = await exchange(
            port,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
        )
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert seen and "malformed" in seen[0]


async def test_head_whole_and_streamed_responses_frame_their_bodies() -> None:
    async def handler(request: Request) -> Response | StreamResponse:
        if request.raw_path == "/whole":
            return json_response({"a": 1})
        if request.raw_path == "/dated":
            return Response(body=b"x", headers=[("Date", "Tue, 01 Dec 2026 00:00:00 GMT")])
        out = StreamResponse(headers=[("Content-Type", "text/event-stream")])
        await out.prepare(request)
        for piece in (b"data: 1\n\n", b"data: 2\n\n"):
            await out.write(piece)
        await out.write_eof()
        return out

    async with serving(handler) as (_s, port, _log):
        whole = await exchange(port, b"GET /whole HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head_only = await exchange(
            port, b"HEAD /whole HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        streamed = await exchange(port, b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        dated = await exchange(port, b"GET /dated HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert whole.endswith(b'\r\n\r\n{"a": 1}') and b"Content-Length: 8\r\n" in whole
    assert head_only.endswith(b"\r\n\r\n") and b"Content-Length: 8\r\n" in head_only
    assert b"Transfer-Encoding: chunked\r\n" in streamed
    assert streamed.endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n")
    assert dated.count(b"Date: ") == 1 and b"Date: Tue, 01 Dec 2026" in dated


async def test_cr_lf_in_a_response_header_value_never_starts_a_header_line() -> None:
    async def handler(request: Request) -> Response:
        return Response(headers=[("X-Model", "gpt\r\nSet-Cookie: evil=1")], reason="OK\r\nX: 1")

    async with serving(handler) as (_s, port, _log):
        answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nSet-Cookie" not in head and b"\r\nX: 1" not in head
    assert b"X-Model: gptSet-Cookie: evil=1" in head


async def test_expect_100_continue_then_body() -> None:
    async def handler(request: Request) -> Response:
        request.send_continue()
        return await echo(request)

    async with serving(handler) as (_s, port, _log):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        async with asyncio.timeout(3):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"body")
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
            assert b"POST /e 4 b'body'" in await reader.readuntil(b"b'body'")
        writer.close()


async def test_request_bodies_inflate_within_the_limit() -> None:
    results: list[object] = []

    async def handler(request: Request) -> Response:
        try:
            results.append(await request.read_body(100_000))
        except (BodyTooLarge, RequestBodyError) as exc:
            results.append(type(exc))
        return Response()

    bomb = gzip.compress(b"\0" * 50_000_000)  # ~50 KB on the wire
    async with serving(handler) as (_s, port, _log), aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{port}/"
        gz = {"Content-Encoding": "gzip"}
        for data in (gzip.compress(b"plain text"), bomb, b"\x1f\x8bnot gzip", b""):
            async with s.post(url, data=data, headers=gz) as r:
                assert r.status == 200
        async with s.post(url, data=b"abc", headers={"Content-Encoding": "br"}) as r:
            assert r.status == 200
    assert results == [b"plain text", BodyTooLarge, RequestBodyError, b"", RequestBodyError]


async def test_a_refused_body_gets_its_answer_then_connection_close_without_reset() -> None:
    async def refuse(request: Request) -> Response:
        return Response(413, body=b"too large")  # the body is never read

    async with serving(refuse) as (_s, port, _log):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")

        async def keep_sending() -> None:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()

        sender = asyncio.create_task(keep_sending())
        try:
            async with asyncio.timeout(4):
                answer = await reader.read(4096)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            writer.transport.abort()
    assert answer.startswith(b"HTTP/1.1 413") and b"Connection: close" in answer


async def test_writes_to_a_client_that_stops_reading_wait_and_then_fail_when_it_goes() -> None:
    progress: list[int] = []
    outcome: list[str] = []

    async def stream(request: Request) -> StreamResponse:
        out = StreamResponse()
        await out.prepare(request)
        assert request.transport is not None
        bound_send_queue(request.transport)
        piece = b"z" * 16384
        try:
            for i in range(2000):  # 32 MiB if nothing waited
                await out.write(piece)
                progress.append(i)
        except ConnectionResetError:
            outcome.append("reset")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        return out

    async with serving(stream) as (_s, port, _log):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.5)  # the client reads nothing
        stuck_at = len(progress)
        await asyncio.sleep(0.2)
        assert len(progress) == stuck_at < 200  # waiting, far from the 2000 pieces
        # Queued: the transport's high-water mark plus what the kernel buffers hold.
        assert stuck_at * 16384 < 8 * 1024 * 1024 + WRITE_HIGH_WATER
        writer.transport.abort()
        for _ in range(100):
            if outcome:
                break
            await asyncio.sleep(0.02)
    assert outcome in (["reset"], ["cancelled"])


async def test_handler_errors_are_a_500_and_one_log_line() -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("bug\nsecond line")

    async with serving(broken) as (_s, port, log):
        answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500")
    assert "server_error" in log.getvalue() and "Traceback" not in log.getvalue()


async def test_shutdown_lets_requests_in_flight_finish_and_closes_idle_connections() -> None:
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        if request.raw_path == "/slow":
            await release.wait()
        return Response(body=b"done")

    server = H1Server(slow, read_timeout=5.0)
    await server.listen("127.0.0.1", 0)
    port = server.addresses[0][1]
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
    idle_w.write(b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await idle_r.readuntil(b"done")).startswith(b"HTTP/1.1 200")
    busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
    busy_w.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(server.shutdown(3.0))
    await asyncio.sleep(0.1)
    assert await idle_r.read() == b""  # the idle keep-alive connection is closed at once
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # no longer accepting
    release.set()
    async with asyncio.timeout(3):
        answer = await busy_r.read()
        await closing
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"done")
    assert b"Connection: close" in answer
    idle_w.close()
    busy_w.close()
