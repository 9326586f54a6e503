"""LeanTransport (proxy/h1client.py), the upstream HTTP/1.1 client, against real loopback
servers: aiohttp web servers where an upstream behaves, raw asyncio servers where it must
misbehave (close idle connections silently, reset, send garbage, never answer)."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from hydrallm.errors import ConnectError, ProtocolError
from hydrallm.proxy.h1client import LeanTransport
from hydrallm.proxy.h1upstream import HIGH_WATER
from hydrallm.proxy.upstream import Response, message_headers, read_body

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Raw:
    """A raw TCP server on 127.0.0.1: `handler` plays each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed = 0  # connections the client closed (EOF seen by the server)
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.tasks.discard(task)
            writer.transport.abort()


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[Raw, str]]:
    raw = Raw(handler)
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield raw, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for w in raw.writers:
            w.transport.abort()
        await asyncio.gather(*raw.tasks, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@asynccontextmanager
async def web_server(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def client(**kwargs: object) -> AsyncIterator[LeanTransport]:
    transport = LeanTransport(**kwargs)  # type: ignore[arg-type]
    try:
        yield transport
    finally:
        await transport.close()


async def body_of(response: Response) -> bytes:
    return await read_body(response, 1 << 30)


async def wait_for(cond: Callable[[], bool]) -> None:
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


# --- the request on the wire -------------------------------------------------------------


async def test_request_is_the_given_headers_in_order_and_nothing_added() -> None:
    heads: list[tuple[bytes, bytes]] = []

    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append(await read_request(reader))
            writer.write(answer(b"ok"))

    async with raw_server(play) as (_, url), client() as t:
        port = url.rsplit(":", 1)[1]
        r = await t.send("POST", url + "/v1/x?a=1", [("Z-First", "1"), ("a-second", "2")], b"hi")
        assert await body_of(r) == b"ok"
        r = await t.send("GET", url + "/models", [("X-Y", "z")], b"")
        await body_of(r)
        r = await t.send("DELETE", url + "?q=1", [], b"")
        await body_of(r)
    assert heads == [
        (
            b"POST /v1/x?a=1 HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nZ-First: 1\r\na-second: 2\r\n"
            b"Content-Length: 2\r\n\r\n" % port.encode(),
            b"hi",
        ),
        (b"GET /models HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nX-Y: z\r\n\r\n" % port.encode(), b""),
        (
            b"DELETE /?q=1 HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Length: 0\r\n\r\n"
            % port.encode(),
            b"",
        ),
    ]


async def test_url_credentials_become_basic_auth_and_a_line_break_is_never_sent() -> None:
    heads: list[bytes] = []

    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append((await read_request(reader))[0])
            writer.write(answer(b"ok"))

    async with raw_server(play) as (_, url), client() as t:
        with_user = url.replace("http://", "http://us%40er:p%3Ass@")
        await body_of(await t.send("GET", with_user + "/x", [], b""))
        with pytest.raises(ProtocolError, match="line break"):
            await t.send("GET", url + "/x", [("X-Bad", "a\r\nInjected: 1")], b"")
    assert b"Authorization: Basic dXNAZXI6cDpzcw==\r\n" in heads[0]  # us@er:p:ss
    assert len(heads) == 1


async def test_compressed_bodies_pass_byte_for_byte() -> None:
    packed = gzip.compress(b'{"text": "hello"}' * 100)

    async def gz(_: web.Request) -> web.Response:
        return web.Response(body=packed, headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/gz", gz)
    async with web_server(app) as url, client() as t:
        r = await t.send("GET", url + "/gz", [("Accept-Encoding", "gzip")], b"")
        assert r.headers["Content-Encoding"] == "gzip"
        assert await body_of(r) == packed


# --- response framing --------------------------------------------------------------------


async def test_chunked_and_length_bodies_reuse_one_connection() -> None:
    peers: list[object] = []

    async def chunked(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport)
        resp = web.StreamResponse(reason="Fine Thanks")
        resp.headers.add("X-Twice", "1")
        resp.headers.add("x-twice", "2")
        await resp.prepare(request)
        for i in range(5):
            await resp.write(b"piece%d;" % i)
            await asyncio.sleep(0.005)
        await resp.write_eof()
        return resp

    async def plain(request: web.Request) -> web.Response:
        peers.append(request.transport)
        return web.Response(body=b"x" * 100_000)

    app = web.Application()
    app.router.add_get("/c", chunked)
    app.router.add_get("/p", plain)
    async with web_server(app) as url, client() as t:
        r = await t.send("GET", url + "/c", [], b"")
        assert (r.status, r.reason) == (200, "Fine Thanks")
        assert isinstance(r.headers, CIMultiDictProxy)
        assert r.headers.getall("X-TWICE") == ["1", "2"]
        assert await body_of(r) == b"".join(b"piece%d;" % i for i in range(5))
        assert t.pool_counts() == (0, 1)
        assert await body_of(await t.send("GET", url + "/p", [], b"")) == b"x" * 100_000
        assert t.pool_counts() == (0, 1)
    assert len(peers) == 2 and peers[0] is peers[1]


async def test_close_delimited_body_ends_at_eof_and_1xx_is_skipped() -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        writer.write(b"HTTP/1.1 201 Made\r\nX-Real: yes\r\n\r\nfirst,")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"second")
        await writer.drain()
        writer.close()

    async with raw_server(play) as (_, url), client() as t:
        r = await t.send("POST", url + "/x", [], b"{}")
        assert (r.status, r.reason, r.headers.get("X-Real"), "Link" in r.headers) == (
            201,
            "Made",
            "yes",
            False,
        )
        assert await body_of(r) == b"first,second"
        assert t.pool_counts() == (0, 0)  # a body ended by EOF leaves no connection to reuse


async def test_head_204_and_304_have_no_body() -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
            elif b"/204" in head:
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")

    async with raw_server(play) as (_, url), client() as t:
        r = await t.send("HEAD", url + "/h", [], b"")
        assert (r.status, r.headers["Content-Length"]) == (200, "5000")
        assert await asyncio.wait_for(r.read_chunk(), 2) == b""
        for path, status in (("/204", 204), ("/304", 304), ("/204", 204)):
            r = await t.send("GET", url + path, [], b"")
            assert r.status == status
            assert await asyncio.wait_for(r.read_chunk(), 2) == b""


# --- the pool ------------------------------------------------------------------------------


async def test_connection_close_unread_bodies_and_abort_leave_nothing_pooled() -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            if b"/close" in head:
                writer.write(answer(b"bye", b"Connection: close\r\n"))
            elif b"/big" in head:
                writer.write(answer(b"y" * 5_000_000))
            else:
                writer.write(answer(b"ok"))

    async with raw_server(play) as (raw, url), client() as t:
        assert await body_of(await t.send("GET", url + "/close", [], b"")) == b"bye"
        assert t.pool_counts() == (0, 0)
        r = await t.send("GET", url + "/big", [], b"")
        assert len(await r.read_chunk()) > 0
        assert t.pool_counts() == (1, 0)
        r.release()  # not read to the end: closed, never reused
        assert t.pool_counts() == (0, 0)
        r = await t.send("GET", url + "/ok", [], b"")
        r.abort()
        assert t.pool_counts() == (0, 0)
        r = await t.send("GET", url + "/ok", [], b"")
        await asyncio.sleep(0.05)
        r.release()  # the whole body arrived, unread: reusable
        assert t.pool_counts() == (0, 1)
        await body_of(await t.send("GET", url + "/ok", [], b""))
        assert raw.connections == 4


async def test_idle_connections_close_after_the_keepalive() -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"ok"))

    async with raw_server(play) as (raw, url), client(keepalive=0.2) as t:
        await body_of(await t.send("GET", url, [], b""))
        assert t.pool_counts() == (0, 1)
        await wait_for(lambda: t.pool_counts() == (0, 0))
        await wait_for(lambda: not raw.tasks)  # the server saw the connection close
        await body_of(await t.send("GET", url, [], b""))
        assert raw.connections == 2


async def test_a_pooled_connection_the_server_closed_is_retried_once_on_a_fresh_one() -> None:
    # Each connection answers one request, then closes when the next one arrives, without
    # a word: to the client, exactly a server that dropped an idle connection just before
    # its request went out.  The request is sent again on a fresh connection.
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"ok"))  # keep-alive by default ...
        await writer.drain()
        await reader.read(1)  # ... and then closed silently

    async with raw_server(play) as (raw, url), client() as t:
        for i in range(3):
            r = await t.send("POST", url + "/x", [], b"{}")
            assert await body_of(r) == b"ok"
            assert t.pool_counts() == (0, 1)
            assert raw.connections == i + 1
        assert raw.connections == 3


async def test_a_stale_pooled_connection_is_retried_only_once() -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if raw.connections > 1:
            await reader.read(1)  # every later connection closes before answering
            return
        await read_request(reader)
        writer.write(answer(b"ok"))
        await writer.drain()
        await reader.read(1)

    async with raw_server(play) as (raw, url), client() as t:
        assert await body_of(await t.send("GET", url, [], b"")) == b"ok"
        with pytest.raises(ProtocolError, match=r"^upstream closed the connection$"):
            await t.send("GET", url, [], b"")
        assert raw.connections == 2  # the stale one and one fresh one


async def test_a_fresh_connection_closed_before_the_head_is_an_error_not_a_retry() -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async with raw_server(play) as (raw, url), client() as t:
        with pytest.raises(ProtocolError, match=r"^upstream closed the connection$"):
            await t.send("GET", url, [], b"")
        assert raw.connections == 1


async def test_close_closes_pooled_and_in_use_connections() -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            if b"/slow" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
            else:
                writer.write(answer(b"ok"))
            await writer.drain()

    async with raw_server(play) as (raw, url):
        t = LeanTransport()
        await body_of(await t.send("GET", url, [], b""))
        slow = await t.send("GET", url + "/slow", [], b"")
        assert t.pool_counts() == (1, 0)
        await t.close()
        assert t.pool_counts() == (0, 0)
        await wait_for(lambda: not raw.tasks)
        with pytest.raises(ProtocolError, match="upstream body broken"):
            await body_of(slow)


# --- back-pressure and cancellation ------------------------------------------------------


async def test_a_slow_reader_stops_the_upstream_read() -> None:
    size = 32 * 1024 * 1024
    written: list[int] = []

    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = bytes(range(256)) * 256
        for _ in range(size // len(block)):
            writer.write(block)
            written.append(writer.transport.get_write_buffer_size())
            await writer.drain()
        await reader.read()  # drain() leaves up to 64 KiB queued: stay until the client leaves

    async with raw_server(play) as (_, url), client() as t:
        r = await t.send("GET", url, [], b"")
        first = await r.read_chunk()
        await asyncio.sleep(0.5)  # the client reads nothing: the server must stall
        sent = len(written) * 65536
        assert sent < size // 2, f"{sent} bytes left the server with nobody reading"
        chunk = await r.read_chunk()
        assert len(chunk) <= HIGH_WATER + 256 * 1024  # what was buffered: bounded
        rest = await body_of(r)
        assert len(first) + len(chunk) + len(rest) == size
        assert t.pool_counts() == (0, 1)


async def test_cancelled_send_and_read_close_the_connection() -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        if b"/half" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await reader.read()  # until the client hangs up

    async with raw_server(play) as (raw, url), client() as t:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(t.send("GET", url + "/never", [], b""), 0.2)
        r = await t.send("GET", url + "/half", [], b"")
        assert await r.read_chunk() == b"abc"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.read_chunk(), 0.2)
        assert t.pool_counts() == (0, 0)
        await wait_for(lambda: not raw.tasks)  # both connections closed
        assert raw.connections == 2


# --- errors ----------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_refused_and_unresolvable_are_connect_errors_without_secrets() -> None:
    port = closed_port()
    async with client() as t:
        with pytest.raises(ConnectError) as refused:
            await t.send("GET", f"http://user:S3CRET@127.0.0.1:{port}/x?key=QK3Y", [], b"")
        assert str(refused.value).startswith(f"cannot connect to 127.0.0.1:{port}: ")
        with pytest.raises(ConnectError) as dns:
            await t.send("GET", "http://no-such-host.invalid/x?key=QK3Y", [], b"")
        assert str(dns.value).startswith("cannot connect to no-such-host.invalid:80: ")
    for text in (str(refused.value), str(dns.value)):
        assert "S3CRET" not in text and "QK3Y" not in text and "user" not in text


async def test_connect_timeout_is_a_connect_error() -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.05)
        async with client(connect_timeout=0.3) as t:
            try:
                await t.send("GET", f"http://127.0.0.1:{port}/", [], b"")
            except ConnectError as exc:
                assert str(exc) == f"cannot connect to 127.0.0.1:{port}: timed out after 0.3 s"
            else:
                pytest.skip("this kernel accepted past the backlog")
    finally:
        for s in fillers:
            s.close()
        listener.close()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"HTTP/1.1 two-hundred NOT-OK\r\n\r\n", "invalid upstream response: "),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", "invalid upstream response: "),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000, "invalid upstream response: "),
        (answer(b"{}") + b"x" * 100, "invalid upstream response: "),  # a smuggled tail
        (b"HTTP/1.1 200 OK\r\nContent-Len", "upstream closed the connection"),
    ],
)
async def test_broken_heads_are_protocol_errors(reply: bytes, error: str) -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    async with raw_server(play) as (_, url), client() as t:
        with pytest.raises(ProtocolError) as caught:
            await t.send("GET", url, [], b"")
        assert str(caught.value).startswith(error)
        assert t.pool_counts() == (0, 0)


async def test_response_headers_arrive_as_sent_and_the_message_drops_hop_by_hop() -> None:
    # The head is decoded in one piece (h1upstream): names and values must come out as
    # they went in, in order, repeats kept, odd bytes kept, an interim head's left behind.
    reply = (
        b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n"
        b"X-Pad: a \r\nX-Bytes: \xc3\xa9\xff\r\nx-rep: 1\r\nX-Rep: 2\r\nX-Empty:\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )

    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        await reader.read()

    async with raw_server(play) as (_, url), client() as t:
        response = await t.send("GET", url, [], b"")
        message = [
            ("Content-Type", "text/plain"),
            ("X-Pad", "a "),
            ("X-Bytes", "é\udcff"),
            ("x-rep", "1"),
            ("X-Rep", "2"),
            ("X-Empty", ""),
        ]
        assert list(response.headers.items()) == [
            message[0],
            ("Connection", "keep-alive"),
            *message[1:],
            ("Content-Length", "2"),
        ]
        assert message_headers(response) == message
        assert await body_of(response) == b"ok"


@pytest.mark.parametrize("interim", [b"", b"HTTP/1.1 103 Early Hints\r\n"])
async def test_an_upstream_header_line_over_8190_bytes_is_refused(interim: bytes) -> None:
    def head(size: int) -> bytes:
        return b"X-Big: " + b"a" * (size - 5) + b"\r\n"  # name and value: `size` bytes

    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for size in (8190, 8191):
            await read_request(reader)
            if interim:
                writer.write(interim + head(size) + b"\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\n" + (b"" if interim else head(size)))
            writer.write(b"Content-Length: 0\r\n\r\n")
            await writer.drain()

    async with raw_server(play) as (_, url), client() as t:
        response = await t.send("GET", url, [], b"")
        assert response.status == 200 and await body_of(response) == b""
        with pytest.raises(ProtocolError, match="a header over 8190 bytes"):
            await t.send("GET", url, [], b"")


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b'{"partial"',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    ],
)
async def test_broken_bodies_are_protocol_errors_after_what_arrived(reply: bytes) -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply[: reply.index(b"\r\n\r\n") + 4])
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(reply[reply.index(b"\r\n\r\n") + 4 :])
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.close()

    async with raw_server(play) as (_, url), client() as t:
        r = await t.send("GET", url, [], b"")
        got = b""
        with pytest.raises(ProtocolError, match=r"^upstream body broken: "):
            while chunk := await r.read_chunk():
                got += chunk
        assert got in (b'{"partial"', b"hello")
        assert t.pool_counts() == (0, 0)


async def test_reset_before_the_head_is_a_connection_error() -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async with raw_server(play) as (_, url), client() as t:
        with pytest.raises(ProtocolError, match=r"^connection error: "):
            await t.send("GET", url, [], b"")


# --- TLS, DNS, environment proxies -----------------------------------------------------


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(crt), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return crt, key


async def test_https_with_a_trusted_and_an_untrusted_certificate(
    cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    crt, key = cert
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(crt, key)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"secure:" + await request.read())

    app = web.Application()
    app.router.add_post("/x", hello)
    async with web_server(app, server_ctx) as url:
        trusting = ssl.create_default_context(cafile=str(crt))
        async with client(ssl_context=trusting) as t:
            for _ in range(2):
                assert await body_of(await t.send("POST", url + "/x", [], b"hi")) == b"secure:hi"
            assert t.pool_counts() == (0, 1)
        async with client() as t:  # the system's trust store does not know this certificate
            with pytest.raises(ConnectError, match=r"^cannot connect to 127\.0\.0\.1:\d+: .*CERT"):
                await t.send("POST", url + "/x", [], b"hi")
        monkeypatch.setenv("SSL_CERT_FILE", str(crt))
        async with client() as t:  # ... unless SSL_CERT_FILE names it
            assert await body_of(await t.send("POST", url + "/x", [], b"a")) == b"secure:a"


async def test_localhost_resolves_once_and_either_family_connects() -> None:
    loop = asyncio.get_running_loop()
    lookups: list[str] = []
    original = loop.getaddrinfo

    async def counting(host: str, *args: object, **kwargs: object) -> object:
        lookups.append(host)
        return await original(host, *args, **kwargs)  # type: ignore[arg-type]

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    async with web_server(app) as url:
        port = url.rsplit(":", 1)[1]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(loop, "getaddrinfo", counting)
            async with client() as t:
                for _ in range(3):
                    r = await t.send("GET", f"http://localhost:{port}/", [], b"")
                    assert await body_of(r) == b"ok"
                    r.abort()  # no pooling: each request connects again
        assert lookups == ["localhost"]

    if not socket.has_ipv6:
        return
    try:
        server = await asyncio.start_server(lambda r, w: None, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback")
    server.close()
    await server.wait_closed()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "::1", 0)
    await site.start()
    try:
        port6 = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with client() as t:
            r = await t.send("GET", f"http://[::1]:{port6}/", [], b"")
            assert await body_of(r) == b"ok"
    finally:
        await runner.cleanup()


async def test_targets_behind_an_env_proxy_go_through_it() -> None:
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        return web.Response(text="via proxy")

    async def direct(_: web.Request) -> web.Response:
        return web.Response(text="direct")

    papp, dapp = web.Application(), web.Application()
    papp.router.add_route("*", "/{tail:.*}", proxy)
    dapp.router.add_get("/", direct)
    async with web_server(papp) as purl, web_server(dapp) as durl:
        async with client(env={"HTTP_PROXY": purl}) as t:
            r = await t.send("GET", "http://api.example.test/v1/models", [], b"")
            assert await body_of(r) == b"via proxy"
            r.release()
            r = await t.send("GET", durl + "/", [], b"")  # loopback: never proxied
            assert await body_of(r) == b"direct"
    assert seen == ["http://api.example.test/v1/models"]


def test_importing_the_client_does_not_import_aiohttp() -> None:
    code = "import sys, hydrallm.proxy.h1client; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_under_uvloop() -> None:
    # The proxy runs on uvloop, whose transports are not asyncio.Transport subclasses.
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[bytes]:
        async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(b"3\r\nabc\r\n0\r\n\r\n")

        async with raw_server(play) as (raw, url), client() as t:
            bodies = [await body_of(await t.send("GET", url, [], b"")) for _ in range(3)]
            assert raw.connections == 1
            return bodies

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == [b"abc"] * 3
