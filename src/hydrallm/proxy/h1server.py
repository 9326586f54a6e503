"""The client-facing HTTP/1.1 server: an asyncio Protocol over httptools (llhttp).

Built for what hydrallm needs and nothing more (uvicorn's httptools protocol is the model):
one `Connection` (h1conn.py) per client connection parses requests with llhttp, runs the
handler in one task per request (pipelined requests wait their turn, in order), and
writes what it returns (h1write.py): a whole `Response` in one transport write, or a
`StreamResponse` the handler wrote itself.  Compared with aiohttp's `web.Server` it skips the generic request and
response machinery: ~2x less CPU per request in the server side.

Protections (what aiohttp gave us, and what connguard.py added to it):
- head limits (h1head.py): request target and each header field at most 8,190 bytes, at
  most 128 headers (aiohttp's); ambiguous framing (CL+TE, duplicate CL, a Transfer-Encoding other
  than chunked), bare CR/LF, NUL, obs-fold, a missing Host on 1.1, duplicate singleton
  headers: 400 with a plain message, logged as one `client_error` line, never a traceback;
- slow loris: a request head not complete within `read_timeout` of its first byte gets
  `408` and the connection is half-closed (FIN, not RST) and drained for a short linger,
  because closing a socket with unread input makes the kernel reset it, and a reset can
  overtake the 408 in the client's receive queue.  A connection that sends nothing is
  closed after `read_timeout`; an idle kept-alive one after `keepalive_timeout`;
- a response to a request whose body was not read says `Connection: close`, and the
  connection lingers the same way after it.

    server = H1Server(handler, read_timeout=60, keepalive_timeout=75, log=logger)
    await server.listen("127.0.0.1", 8080)      # or sock=an inherited listening socket
    ...
    await server.shutdown(grace)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from socket import socket
from typing import Any, Protocol

from hydrallm.proxy.h1conn import Connection
from hydrallm.proxy.h1head import DateCache
from hydrallm.proxy.wire import Handler

__all__ = ["Connection", "H1Server", "Handler"]

# Called with the peer address ("host:port", or "-") when a slow head is cut with a 408.
OnTimeout = Callable[[str], None]


class Log(Protocol):
    def warn(self, event: str, **fields: object) -> None: ...
    def error(self, event: str, **fields: object) -> None: ...


class H1Server:
    """Listens, makes a `Connection` per client, and shuts down gracefully."""

    def __init__(
        self,
        handler: Handler,
        *,
        read_timeout: float,
        keepalive_timeout: float = 75.0,
        on_timeout: OnTimeout | None = None,
        log: Log | None = None,
    ) -> None:
        self.handler = handler
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self.on_timeout = on_timeout
        self.log = log
        self.connections: set[Connection] = set()
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None
        self.dates = DateCache()

    def __call__(self) -> Connection:
        return Connection(self)

    async def listen(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        sock: socket | None = None,
        reuse_port: bool = False,
        backlog: int = 1024,
    ) -> None:
        """Accept on `host:port`, or on `sock` (already bound, shared by workers)."""
        if sock is not None:
            self._server = await self.loop.create_server(self, sock=sock, backlog=backlog)
        else:
            # An ASCII host goes as bytes, which both loops resolve as they are: a str is
            # first encoded with the IDNA codec, whose import costs ~1% of starting.  (In
            # a list: bytes alone would read as a sequence of hosts; typeshed lists str.)
            hosts: Any = [host.encode()] if host and host.isascii() else host
            self._server = await self.loop.create_server(
                self, hosts, port, reuse_port=reuse_port or None, backlog=backlog
            )

    @property
    def addresses(self) -> list[Any]:
        return [s.getsockname() for s in self._server.sockets] if self._server else []

    def close(self) -> None:
        """Stop accepting; connections already open go on."""
        if self._server is not None:
            self._server.close()

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, close idle connections, let requests being answered finish
        within `timeout`, then cancel what is left."""
        self.close()
        for conn in list(self.connections):
            conn.close_when_idle()
        end = self.loop.time() + timeout
        while self.connections and self.loop.time() < end:
            await asyncio.sleep(0.02)
        tasks = [t for t in (conn.cancel() for conn in list(self.connections)) if t is not None]
        if tasks:
            # A cancelled relay ends its stream with an error event: let it write that.
            await asyncio.wait(tasks, timeout=1.0)
        for conn in list(self.connections):
            conn.close()
