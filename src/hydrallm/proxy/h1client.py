"""`LeanTransport`: the upstream HTTP/1.1 client on `asyncio.Protocol` + httptools (llhttp).

aiohttp's `ClientSession._request` and `StreamReader.readany` cost about a third of the
proxy's CPU per request (issue 19); this client does only what the proxy needs: one write
of head and body, a parser callback per piece, a pool of keep-alive connections per
(scheme, host, port).  Bodies pass byte for byte (no decompression), no headers are added
but Host, Content-Length and (for user:password@ URLs) Authorization.  Targets reached
through an environment proxy go to a lazily created `AiohttpTransport` instead.
Timeouts other than the 30 s connect timeout are the caller's (see deadline.py).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
from collections.abc import Iterable, Mapping
from typing import cast
from urllib.parse import unquote, urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from multidict import CIMultiDict, CIMultiDictProxy

from hydrallm.errors import ConnectError, ProtocolError, UpstreamError
from hydrallm.proxy.upstream import AiohttpTransport, EnvProxies, Response

# Reading stops once this much body is buffered unread: the bound on memory per slow
# client (issue 14, 3b; aiohttp's read_bufsize=16 KiB gave the same 32 KiB).
HIGH_WATER = 32 * 1024
MAX_HEAD = 64 * 1024  # an upstream head larger than this is refused (aiohttp: 8190 a line)
MAX_FIELD = 8190
CONNECT_TIMEOUT = 30.0
DNS_TTL = 300.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


class _Stop(Exception):
    """Raised in a parser callback to stop parsing (the reason is already in `error`)."""


class _Origin:
    """What one `scheme://[userinfo@]host[:port]` prefix means, parsed once."""

    __slots__ = ("auth", "host", "host_header", "key", "port", "proxy", "tls")

    def __init__(self, origin: str, proxies: EnvProxies) -> None:
        parts = urlsplit(origin)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ProtocolError(f"upstream error: unsupported URL scheme or host ({scheme})")
        self.host = parts.hostname
        default = _DEFAULT_PORTS[scheme]
        try:
            self.port = parts.port or default
        except ValueError:
            raise ProtocolError("upstream error: invalid port in the upstream URL") from None
        self.tls = scheme == "https"
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = shown if self.port == default else f"{shown}:{self.port}"
        self.key = (scheme, self.host, self.port)
        self.auth: str | None = None
        if parts.username is not None or parts.password is not None:
            # As aiohttp did: credentials in the URL become Basic auth (latin-1, decoded).
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            self.auth = "Basic " + base64.b64encode(pair.encode("latin-1")).decode()
        self.proxy = proxies.for_host(scheme, self.host) if proxies.enabled else None


class _Conn(asyncio.Protocol):
    """One upstream connection and the state of the response it is reading."""

    __slots__ = (
        "active", "body_waiter", "chunks", "closed", "complete", "error", "got_bytes", "head_bytes",
        "head_done", "head_waiter", "headers", "idle_since", "interim", "keep_alive", "key",
        "loop", "no_body", "parser", "paused", "pool", "raw", "reason", "reused", "size",
        "status", "transport",
    )  # fmt: skip

    def __init__(self, pool: LeanTransport, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool._loop
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.closed = False
        self.active = False  # a request is out and its response not yet released
        self.reused = False
        self.idle_since = 0.0
        self.reset(False)
        self.head_waiter: asyncio.Future[None] | None = None

    def reset(self, no_body: bool) -> None:
        """Ready for the next response (`no_body`: the request was HEAD)."""
        self.no_body = no_body
        self.got_bytes = False
        self.head_bytes = 0
        self.head_done = self.complete = self.interim = False
        self.keep_alive = True
        self.status = 0
        self.reason = ""
        self.raw: list[tuple[str, str]] = []
        self.headers: CIMultiDictProxy[str] | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.paused = False
        self.error: UpstreamError | None = None
        self.body_waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self.active:  # bytes nobody asked for (on an idle connection): drop it
            self.abort()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            # A callback's own complaint (set by fail()) wins over the parser's wrapper.
            where = "upstream body broken" if self.head_done else "invalid upstream response"
            self.fail(ProtocolError(f"{where}: {_short(exc)}"))
            self.abort()
        if not self.head_done:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD and self.error is None:
                self.fail(ProtocolError(f"invalid upstream response: head over {MAX_HEAD} bytes"))
                self.abort()
        elif self.size > HIGH_WATER and not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._lost(self)
        if self.complete or self.error is not None:
            self.wake()
            return
        if not self.head_done:
            if exc is None:
                self.fail(ProtocolError("upstream closed the connection"))
            else:
                self.fail(ProtocolError(f"connection error: {_short(exc)}"))
        elif exc is None and self._close_delimited():
            self.complete = True  # no length given: the body ends where the connection does
            self.keep_alive = False
        else:
            why = "the connection closed" if exc is None else _short(exc)
            self.fail(ProtocolError(f"upstream body broken: {why} before the body's end"))
        self.wake()

    # --- httptools callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:  # a second message on the heels of the first: never reuse
            self.fail(ProtocolError("invalid upstream response: bytes after the body's end"))
            raise _Stop
        self.raw = []
        self.interim = False

    def on_status(self, status: bytes) -> None:
        self.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_FIELD:
            self.fail(ProtocolError(f"invalid upstream response: a header over {MAX_FIELD} bytes"))
            raise _Stop
        self.raw.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: an interim answer; the real one follows
            self.interim = True
            return
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(self.raw))
        self.head_done = True
        if self.no_body:  # HEAD: llhttp cannot be told; the connection is not reused
            self.complete = True
            self.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.chunks.append(body)
            self.size += len(body)

    def on_message_complete(self) -> None:
        if self.interim:
            return
        if not self.complete:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()

    # --- helpers ----------------------------------------------------------------------
    def _close_delimited(self) -> bool:
        headers = self.headers
        if headers is None or "Content-Length" in headers:
            return False
        return "chunked" not in headers.get("Transfer-Encoding", "").lower()

    def fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
            self.keep_alive = False

    def wake(self) -> None:
        waiter = self.head_waiter
        if waiter is not None and (self.head_done or self.error is not None):
            self.head_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        waiter = self.body_waiter
        if waiter is not None and (self.chunks or self.complete or self.error is not None):
            self.body_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()


class LeanResponse:
    __slots__ = ("_conn", "headers", "reason", "status")

    def __init__(self, conn: _Conn) -> None:
        self._conn: _Conn | None = conn
        self.status = conn.status
        self.reason = conn.reason
        assert conn.headers is not None
        self.headers = conn.headers

    async def read_chunk(self) -> bytes:
        """What has arrived of the body (all pieces joined); b"" at its end."""
        conn = self._conn
        while conn is not None:
            chunks = conn.chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                conn.chunks = []
                conn.size = 0
                if conn.complete:
                    self.release()
                elif conn.paused and not conn.closed:
                    conn.paused = False
                    conn.transport.resume_reading()  # type: ignore[union-attr]
                return data
            if conn.complete:
                self.release()
                break
            if conn.error is not None:
                self.abort()
                raise conn.error
            waiter = conn.body_waiter = conn.loop.create_future()
            try:
                await waiter
            except asyncio.CancelledError:
                self.abort()
                raise
        return b""

    def release(self) -> None:
        """Back to the pool when the whole body arrived (read or not), else closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool._release(conn)

    def abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
            conn.pool._busy.discard(conn)


class LeanTransport:
    """Pooled HTTP/1.1 client (the `Transport` seam).  Created inside a running event loop."""

    def __init__(
        self,
        *,
        keepalive: float = 60.0,
        env: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._env = os.environ if env is None else env
        self._proxies = EnvProxies(self._env)
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._ssl = ssl_context  # the system's trust store, made on first https use
        self._origins: dict[str, _Origin] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[int, str, int]]]] = {}
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._busy: set[_Conn] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._fallback: AiohttpTransport | None = None

    async def send(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> Response:
        """`headers` must not hold Host or Content-Length (callers drop hop-by-hop ones)."""
        start = url.find("://") + 3
        cut = url.find("/", start)
        query = url.find("?", start)
        if cut < 0 or 0 <= query < cut:
            cut = query if query >= 0 else len(url)
        prefix = url[:cut]
        origin = self._origins.get(prefix)
        if origin is None:
            origin = _Origin(prefix, self._proxies)
            if len(self._origins) >= 256:
                self._origins.clear()
            self._origins[prefix] = origin
        if origin.proxy is not None:
            if self._fallback is None:
                self._fallback = AiohttpTransport(env=self._env)
            return await self._fallback.send(method, url, headers, body)
        target = url[cut:]
        if not target or target[0] == "?":
            target = "/" + target
        listed = headers if isinstance(headers, list) else list(headers)
        if origin.auth is not None:
            if any(k.lower() == "authorization" for k, _ in listed):
                raise ProtocolError(
                    "upstream error: the URL carries credentials and the request an"
                    " Authorization header; only one can be sent"
                )
            listed = [*listed, ("Authorization", origin.auth)]
        block = "\r\n".join(map(": ".join, listed))
        lines = len(listed) - 1 if listed else 0
        if block.count("\n") != lines or block.count("\r") != lines:
            raise ProtocolError("upstream error: a request header contains a line break")
        length = f"Content-Length: {len(body)}\r\n" if body or method not in ("GET", "HEAD") else ""
        sep = "\r\n" if listed else ""
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n{block}{sep}{length}\r\n"
        )
        data = head.encode() + body if body else head.encode()
        conn = self._acquire(origin.key)
        if conn is not None:
            response = await self._exchange(conn, data, method == "HEAD")
            if response is not None:
                return response
        conn = await self._connect(origin)
        response = await self._exchange(conn, data, method == "HEAD")
        assert response is not None
        return response

    async def _exchange(self, conn: _Conn, data: bytes, head: bool) -> LeanResponse | None:
        """Send and read the head; None when a reused connection was stale (retry)."""
        conn.reset(head)
        conn.active = True
        self._busy.add(conn)
        waiter = conn.head_waiter = self._loop.create_future()
        conn.transport.write(data)  # type: ignore[union-attr]
        try:
            await waiter
        except asyncio.CancelledError:
            conn.abort()
            self._busy.discard(conn)
            raise
        if conn.error is not None:
            self._busy.discard(conn)
            conn.abort()
            if conn.reused and not conn.got_bytes:
                return None  # the server closed it while idle: once more, on a fresh one
            raise conn.error
        return LeanResponse(conn)

    def _acquire(self, key: tuple[str, str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.loop.time() - conn.idle_since < self._keepalive:
                return conn
            conn.abort()
        return None

    def _release(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        if not (conn.complete and conn.keep_alive) or conn.closed or conn.error is not None:
            conn.abort()
            return
        if conn.paused:
            conn.paused = False
            conn.transport.resume_reading()  # type: ignore[union-attr]
        conn.chunks = []  # unread pieces of a complete body: dropped (reset() follows on reuse)
        conn.active = False
        conn.reused = True
        conn.idle_since = self._loop.time()
        self._idle.setdefault(conn.key, []).append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(conn.idle_since + self._keepalive, self._sweep)

    def _lost(self, conn: _Conn) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        """Close connections idle for the keep-alive time; come back for the next one."""
        self._sweeper = None
        now = self._loop.time()
        first = None
        for idle in self._idle.values():
            for conn in [c for c in idle if now - c.idle_since >= self._keepalive]:
                idle.remove(conn)
                conn.abort()
            if idle:
                oldest = min(c.idle_since for c in idle)
                first = oldest if first is None else min(first, oldest)
        if first is not None:
            self._sweeper = self._loop.call_at(first + self._keepalive, self._sweep)

    async def _resolve(self, host: str, port: int) -> list[tuple[int, str, int]]:
        cached = self._dns.get((host, port))
        now = self._loop.time()
        if cached is not None and cached[0] > now:
            return cached[1]
        infos = await self._loop.getaddrinfo(
            host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM
        )
        found = [(int(family), str(addr[0]), int(addr[1])) for family, _, _, _, addr in infos]
        if len(self._dns) >= 1024:
            self._dns.clear()
        self._dns[(host, port)] = (now + DNS_TTL, found)
        return found

    async def _connect(self, origin: _Origin) -> _Conn:
        host, port = origin.host, origin.port
        context = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()  # honours SSL_CERT_FILE
            context = self._ssl
        try:
            async with asyncio.timeout(self._connect_timeout):
                addresses = await self._resolve(host, port)
                last: OSError | None = None
                for family, address, at in addresses:
                    try:
                        _, conn = await self._loop.create_connection(
                            lambda: _Conn(self, origin.key),
                            address,
                            at,
                            family=family,
                            ssl=context,
                            server_hostname=host if context is not None else None,
                        )
                    except (OSError, ssl.CertificateError) as exc:
                        last = exc
                        continue
                    return conn
                raise last or OSError("no address")
        except TimeoutError:
            raise ConnectError(
                f"cannot connect to {host}:{port}: timed out after {self._connect_timeout:g} s"
            ) from None
        except (OSError, ssl.CertificateError) as exc:
            raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc

    def pool_counts(self) -> tuple[int, int]:
        """(connections in use, idle connections kept for reuse)."""
        return len(self._busy), sum(len(v) for v in self._idle.values())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in [*self._busy, *(c for idle in self._idle.values() for c in idle)]:
            conn.abort()
        self._busy.clear()
        self._idle.clear()
        if self._fallback is not None:
            await self._fallback.close()
