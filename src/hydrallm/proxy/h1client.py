"""`LeanTransport`: the upstream HTTP/1.1 client on `asyncio.Protocol` + httptools (llhttp).

aiohttp's `ClientSession._request` and `StreamReader.readany` cost about a third of the
proxy's CPU per request (issue 19); this client does only what the proxy needs: one write
of head and body, a parser callback per piece, a pool of keep-alive connections per
(scheme, host, port).  Bodies pass byte for byte (no decompression), no headers are added
but Host, Content-Length and (for user:password@ URLs) Authorization.  Targets reached
through an environment proxy go to a lazily created `AiohttpTransport` instead.
Timeouts other than the 30 s connect timeout are the caller's (see deadline.py).
This module is the pool, DNS cache and request head; h1upstream.py parses the responses.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

from hydrallm.errors import ConnectError, ProtocolError
from hydrallm.proxy.h1upstream import Conn, LeanResponse
from hydrallm.proxy.upstream import AiohttpTransport, EnvProxies, Response

CONNECT_TIMEOUT = 30.0
DNS_TTL = 300.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _Origin:
    """What one `scheme://[userinfo@]host[:port]` prefix means, parsed once."""

    __slots__ = ("auth", "host", "host_header", "host_line", "key", "port", "proxy", "tls")

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
        self.host_line = f"Host: {self.host_header}\r\n"
        self.key = (scheme, self.host, self.port)
        self.auth: str | None = None
        if parts.username is not None or parts.password is not None:
            # As aiohttp did: credentials in the URL become Basic auth (latin-1, decoded).
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            self.auth = "Basic " + base64.b64encode(pair.encode("latin-1")).decode()
        self.proxy = proxies.for_host(scheme, self.host) if proxies.enabled else None


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
        self.loop = asyncio.get_running_loop()
        self._env = os.environ if env is None else env
        self._proxies = EnvProxies(self._env)
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._ssl = ssl_context  # the system's trust store, made on first https use
        self._origins: dict[str, _Origin] = {}
        self._targets: dict[str, tuple[_Origin, str]] = {}  # url -> (its origin, target)
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[int, str, int]]]] = {}
        self._idle: dict[tuple[str, str, int], list[Conn]] = {}
        self._busy: set[Conn] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._fallback: AiohttpTransport | None = None

    async def send(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> Response:
        """`headers` must not hold Host or Content-Length (callers drop hop-by-hop ones)."""
        split = self._targets.get(url)
        if split is None:
            split = self._split(url)
        origin, target = split
        if origin.proxy is not None:
            if self._fallback is None:
                self._fallback = AiohttpTransport(env=self._env)
            return await self._fallback.send(method, url, headers, body)
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
        head = f"{method} {target} HTTP/1.1\r\n{origin.host_line}{block}{sep}{length}\r\n"
        data = head.encode() + body if body else head.encode()
        head_only = method == "HEAD"
        conn = self._acquire(origin.key)
        # The exchange, inline (a coroutine per request costs more than these lines): send,
        # then read the head; a pooled connection the server closed while it sat idle is
        # replaced by a fresh one, once.
        while True:
            if conn is None:
                conn = await self._connect(origin)
            conn.reset(head_only)
            conn.active = True
            self._busy.add(conn)
            waiter = conn.head_waiter = self.loop.create_future()
            conn.transport.write(data)  # type: ignore[union-attr]
            try:
                await waiter
            except asyncio.CancelledError:
                conn.abort()
                self._busy.discard(conn)
                raise
            if conn.error is None:
                return LeanResponse(conn)
            self._busy.discard(conn)
            conn.abort()
            if not conn.reused or conn.got_bytes:
                raise conn.error
            conn = None  # stale: once more, on a fresh connection

    def _split(self, url: str) -> tuple[_Origin, str]:
        """The origin of `url` and its request target, parsed once per URL."""
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
        target = url[cut:]
        if not target or target[0] == "?":
            target = "/" + target
        if len(self._targets) >= 1024:  # URLs with the clients' query strings: bounded
            self._targets.clear()
        split = self._targets[url] = (origin, target)
        return split

    def _acquire(self, key: tuple[str, str, int]) -> Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.loop.time() - conn.idle_since < self._keepalive:
                return conn
            conn.abort()
        return None

    def release(self, conn: Conn) -> None:
        """Pool `conn` when its response arrived whole and may be followed, else close it."""
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
        conn.idle_since = self.loop.time()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_at(conn.idle_since + self._keepalive, self._sweep)

    def forget(self, conn: Conn) -> None:
        self._busy.discard(conn)

    def lost(self, conn: Conn) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        """Close connections idle for the keep-alive time; come back for the next one."""
        self._sweeper = None
        now = self.loop.time()
        first = None
        for idle in self._idle.values():
            for conn in [c for c in idle if now - c.idle_since >= self._keepalive]:
                idle.remove(conn)
                conn.abort()
            if idle:
                oldest = min(c.idle_since for c in idle)
                first = oldest if first is None else min(first, oldest)
        if first is not None:
            self._sweeper = self.loop.call_at(first + self._keepalive, self._sweep)

    async def _resolve(self, host: str, port: int) -> list[tuple[int, str, int]]:
        cached = self._dns.get((host, port))
        now = self.loop.time()
        if cached is not None and cached[0] > now:
            return cached[1]
        infos = await self.loop.getaddrinfo(
            host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM
        )
        found = [(int(family), str(addr[0]), int(addr[1])) for family, _, _, _, addr in infos]
        if len(self._dns) >= 1024:
            self._dns.clear()
        self._dns[(host, port)] = (now + DNS_TTL, found)
        return found

    async def _connect(self, origin: _Origin) -> Conn:
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
                        _, conn = await self.loop.create_connection(
                            lambda: Conn(self, origin.key),
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
