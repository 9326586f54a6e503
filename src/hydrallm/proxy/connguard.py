"""A request-head deadline for aiohttp's low-level server (slow-loris protection).

aiohttp's server bounds idle keep-alive connections but not a request head that trickles
in a byte at a time: such a connection holds a socket and a parser for as long as the
client likes.  `GuardedServer` is a drop-in `web.Server` whose connections start a timer
at the first byte of each request; if the head is not complete within `read_timeout`, the
client gets `408 Request Timeout` and the connection is closed.  Once the head is in, the
handler bounds the body itself (server.py reads it within the same `read_timeout`).

A new connection that sends nothing at all is closed after `read_timeout` too (aiohttp
would hold it for its keep-alive timeout, 75 s: 2,000 silent connections held 2,000
descriptors).  Idle time *between* requests of a kept-alive connection is aiohttp's
`keepalive_timeout` (`server.keepalive_timeout`).

The 408 always reaches the client: the connection is half-closed after it (FIN, not RST)
and whatever the client still sends is read and dropped for a short linger, because
closing a socket with unread input makes the kernel reset it, and a reset can overtake
the 408 in the client's receive queue.

    server = GuardedServer(handler, read_timeout=lc.read_timeout, on_timeout=log_it, ...)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

__all__ = ["GuardedRequestHandler", "GuardedServer"]

# Sent before closing a connection whose request head is too slow (RFC 9110 §15.5.9).
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Connection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 46\r\n"
    b"\r\n"
    b"hydrallm: request head not complete in time.\r\n"
)

# Called with the peer address ("host:port", or "-") when a connection is closed.
OnTimeout = Callable[[str], None]
# How long input is read and dropped after a 408, before the socket is closed.
LINGER = 2.0


class GuardedRequestHandler(RequestHandler):
    """A `RequestHandler` that closes connections whose request head arrives too slowly."""

    def __init__(
        self,
        manager: web.Server,
        *,
        read_timeout: float,
        on_timeout: OnTimeout | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = read_timeout
        self._on_head_timeout = on_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        # True from the moment a request head is handed to the handler until its
        # response is finished: bytes arriving then are body (or pipelined heads).
        self._serving = False
        # When the first byte of the head being received arrived (loop time), and the same
        # for the request being served: the body must arrive within what is left of
        # `read_timeout` (DECISIONS.md: it bounds the whole request, head and body).
        self._head_began: float | None = None
        self.request_began: float | None = None
        self._spoke = False  # any byte received on this connection yet
        self._lingering = False  # 408 sent: input is dropped until the socket closes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Until the first byte, the head deadline doubles as the first-byte deadline.
        self._head_timer = self._loop.call_later(self._head_timeout, self._silent_deadline)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if not self._spoke:
            self._spoke = True
            self._cancel_head_timer()
        if self._head_began is None and not self._serving:
            self._head_began = self._loop.time()
        super().data_received(data)
        if self._messages:
            self._cancel_head_timer()
        elif data and self._head_timer is None and not self._serving:
            # Only a head that did not arrive whole gets a timer: the common case (a
            # complete head in one read) never schedules and cancels one (~2 µs saved).
            self._head_timer = self._loop.call_later(self._head_timeout, self._head_deadline)

    def request_started(self) -> None:
        """Called by `GuardedServer` when the head of a request is complete."""
        self._serving = True
        self.request_began, self._head_began = self._head_began, None
        self._cancel_head_timer()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._serving = False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _silent_deadline(self) -> None:
        """No byte within `read_timeout` of connecting: close (nothing to answer)."""
        self._head_timer = None
        if not self._spoke and not self._serving:
            self.force_close()

    def _head_deadline(self) -> None:
        self._head_timer = None
        transport = self.transport
        if self._serving or self._messages or transport is None or transport.is_closing():
            return
        peer = transport.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
        self._lingering = True
        try:
            transport.write(_TIMEOUT_RESPONSE)
            if transport.can_write_eof():
                transport.write_eof()
        except (ConnectionError, RuntimeError, OSError):
            pass
        # Closes the transport after the linger (or at once when the client closes first),
        # and stops the handler's loop.
        self._loop.call_later(LINGER, self.force_close)
        if self._on_head_timeout is not None:
            self._on_head_timeout(where)


class GuardedServer(web.Server):
    """`web.Server` whose connections enforce a request-head deadline of `read_timeout`."""

    def __init__(
        self,
        handler: Any,
        *,
        read_timeout: float,
        on_timeout: OnTimeout | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.read_timeout = read_timeout
        self.on_timeout = on_timeout

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(
            self,
            read_timeout=self.read_timeout,
            on_timeout=self.on_timeout,
            loop=self._loop,
            **self._kwargs,
        )

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        if isinstance(protocol, GuardedRequestHandler):
            protocol.request_started()
        return super()._make_request(message, payload, protocol, writer, task)
