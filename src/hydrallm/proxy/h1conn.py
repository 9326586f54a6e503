"""One client connection of h1server: parse with llhttp, run the handler, answer in order.

The handler runs in one task per request; requests pipelined behind it wait their turn
(reading pauses when PIPELINE_MAX are queued or BODY_HIGH body bytes are unread).  Timers,
one at a time: the first byte (`read_timeout` after connecting), a head that did not
arrive whole (`read_timeout` after its first byte, then 408 and linger).  Idle keep-alive
(`keepalive_timeout`) has a lazy timer of its own: going idle only records the time, and
the timer, when it fires, closes the connection if it has been idle that long or comes
back when it could be (a uvloop timer made and cancelled per request costs ~3 µs).  After a final answer with input still coming (a 408, a 400, a
refused body) the connection is half-closed and input is dropped for LINGER seconds:
closing a socket with unread input makes the kernel reset it, and a reset can overtake
the answer in the client's receive queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools
from multidict import CIMultiDictProxy

from hydrallm.proxy.h1head import (
    MAX_HEAD,
    MAX_LINE,
    SERVER_ERROR,
    TIMEOUT_RESPONSE,
    BadRequest,
    bad_request,
    request_headers,
)
from hydrallm.proxy.h1write import ResponseWriter
from hydrallm.proxy.wire import Request, RequestBodyError, Response

if TYPE_CHECKING:
    from hydrallm.proxy.h1server import H1Server

__all__ = ["Connection"]

PIPELINE_MAX = 8  # requests parsed ahead of the one being answered before reading pauses
BODY_HIGH = 1 << 20  # request body bytes buffered unread before reading pauses
LINGER = 2.0  # how long input is read and dropped after a final answer, before closing


class Connection(ResponseWriter):
    """One client connection: parses requests, runs the handler, writes the answers."""

    __slots__ = (
        "_began",
        "_current",
        "_error",
        "_head_size",
        "_headers",
        "_idle_since",
        "_idle_timer",
        "_in_head",
        "_lingering",
        "_peer",
        "_queue",
        "_read_paused",
        "_serving",
        "_spoke",
        "_task",
        "_timer",
        "_url",
        "parser",
        "server",
    )

    def __init__(self, server: H1Server) -> None:
        super().__init__(server.loop, server.dates)
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[bytes] = []  # names and values alternating
        self._head_size = 0
        self._in_head = False
        self._began = 0.0
        self._current: Request | None = None  # the request whose body is being parsed
        self._serving: Request | None = None  # the request whose handler runs
        self._task: asyncio.Task[None] | None = None
        self._queue: deque[Request] = deque()  # pipelined requests, in order
        self._timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None  # keep-alive, see the docstring
        self._idle_since: float | None = None  # loop time the connection went idle; None: busy
        self._spoke = False  # any byte received yet
        self._error: str | None = None  # a request that could not be parsed: 400 in turn
        self._lingering = False  # a final answer was sent: input is dropped until closed
        self._read_paused = False
        self._peer: str | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        # Until the first byte, the head deadline doubles as the first-byte deadline.
        self._timer = self.loop.call_later(self.server.read_timeout, self._silent_deadline)

    def data_received(self, data: bytes) -> None:
        if self.stopped or self._lingering:
            return
        self._spoke = True
        self._idle_since = None  # the keep-alive timer, if armed, lapses when it fires
        if self._timer is not None and not self._in_head:
            self._timer.cancel()  # the first-byte deadline
            self._timer = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade or CONNECT: the request is answered as a plain one, then the
            # connection ends (hydrallm switches to no other protocol).
            self.stopped = True
            self.closing = True
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._bad(str(cause) if isinstance(cause, BadRequest) else f"{exc}: {cause!r}")
            return
        except httptools.HttpParserError as exc:
            self._bad(str(exc) or type(exc).__name__)
            return
        if self._in_head:
            # Only a head that did not arrive whole costs a timer (and a size count).
            self._head_size += len(data)
            if self._head_size > MAX_HEAD:
                self._bad(f"the request head is larger than {MAX_HEAD} bytes")
            elif self._timer is None and self._serving is None:
                self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._cancel_timer()
        self._cancel_idle_timer()
        self._queue.clear()
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # the client has gone: so has the reason to go on
        gone = ConnectionResetError("the client has gone")
        current = self._current
        if current is not None:
            current.fail(gone)
        self.fail_drain()

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._began = self.loop.time()
        self._url = b""
        self._headers = []
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_LINE:
            raise BadRequest(f"the request target is longer than {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept raw: checked and decoded together when the head is complete (the bytes of
        # a head are bounded by MAX_HEAD meanwhile).
        self._headers += (name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timer()
        parser = self.parser
        version = parser.get_http_version()
        headers, names = request_headers(self._headers, version)
        request = Request(
            self,
            parser.get_method().decode("ascii"),
            self._url.decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(headers),
            version,
            parser.should_keep_alive(),
            self._began,
            names,
        )
        self._current = request
        if self._serving is None:
            self._serving = request
            self._task = self.loop.create_task(self._serve(request))
        else:
            self._queue.append(request)
            if len(self._queue) >= PIPELINE_MAX:
                self._pause_reading()

    def on_body(self, body: bytes) -> None:
        current = self._current
        if current is not None and current.feed(body) > BODY_HIGH:
            self._pause_reading()

    def on_message_complete(self) -> None:
        current = self._current
        if current is not None:
            current.finish()
            self._current = None

    # --- requests --------------------------------------------------------------------------

    async def _serve(self, request: Request) -> None:
        """Answer `request`, then the requests pipelined behind it, in order."""
        handler = self.server.handler
        next_request: Request | None = request
        while next_request is not None:
            request = next_request
            self.will_close = self.sent_head = False
            complete = False
            try:
                response = await handler(request)
                if isinstance(response, Response):
                    self.write_whole(request, response)
                    if self.write_paused:
                        await self.drain()
                    complete = True
                else:
                    if not response.prepared:
                        await response.prepare(request)
                        await response.write_eof()
                    complete = response.done
            except ConnectionError:
                pass  # the client has gone
            except Exception as exc:  # a bug: one log line, a 500 if nothing was sent yet
                log = self.server.log
                if log is not None:
                    log.error("server_error", problem=f"{type(exc).__name__}: {exc}")
                if not self.sent_head:
                    self.will_close = True
                    self.write_raw(SERVER_ERROR)
            next_request = self._after(request, complete)

    def _after(self, request: Request, complete: bool) -> Request | None:
        """The connection after an answer: the next request, or idle, or closed."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return None
        if self.will_close or not complete or self.stopped or self.closing:
            self._serving = None
            self._task = None
            self._queue.clear()
            if self._error is not None:
                self._answer_error()
            elif not request.body_complete or self._current is not None:
                self._linger()  # unread input: a plain close could reset the answer
            else:
                transport.close()
            return None
        if self._queue:
            nxt = self._queue.popleft()
            self._serving = nxt
            if not nxt.body_complete:
                # Its body's read_timeout counts from its turn, not from the time it
                # spent queued behind the answers before it.
                nxt.began = self.loop.time()
            if self._read_paused and len(self._queue) < PIPELINE_MAX:
                self._resume_reading()
            return nxt
        self._serving = None
        self._task = None
        if self._read_paused:
            self._resume_reading()
        if self._in_head:
            self._arm_head_timer()  # the next head began while this one was answered
        else:
            now = self._idle_since = self.loop.time()
            if self._idle_timer is None:
                self._idle_timer = self.loop.call_at(
                    now + self.server.keepalive_timeout, self._keepalive_deadline
                )
        return None

    def _bad(self, message: str) -> None:
        """Input that is not acceptable HTTP: a 400 in turn, then the connection ends."""
        self.stopped = True
        log = self.server.log
        if log is not None:
            log.warn("client_error", peer=self.peer, problem=message[:300], status=400)
        current = self._current
        if current is not None:
            # In a request's body (its chunked framing): that request's read fails.
            self._current = None
            self.closing = True
            current.fail(RequestBodyError(f"the request body is malformed: {message}"))
            return
        self._error = message
        if self._serving is None:
            self._answer_error()

    def _answer_error(self) -> None:
        self.write_raw(bad_request(self._error or "?"))
        self._linger()

    # --- connection state ------------------------------------------------------------------

    @property
    def peer(self) -> str:
        if self._peer is None:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            ok = isinstance(peer, tuple) and len(peer) >= 2
            self._peer = f"{peer[0]}:{peer[1]}" if ok else "-"  # type: ignore[index]
        return self._peer

    def body_taken(self) -> None:
        """The handler took the buffered body: reading may go on."""
        if self._read_paused and len(self._queue) < PIPELINE_MAX:
            self._resume_reading()

    def close_when_idle(self) -> None:
        """Shutdown: close now if idle, else after the answer being written."""
        self.closing = True
        if self._serving is None and self.transport is not None:
            self.transport.close()

    def cancel(self) -> asyncio.Task[None] | None:
        """Shutdown's grace is over: cancel the handler (it ends a stream cleanly)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            return task
        return None

    def close(self) -> None:
        self._cancel_timer()
        self._cancel_idle_timer()
        if self.transport is not None:
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _arm_head_timer(self) -> None:
        self._cancel_timer()
        when = self._began + self.server.read_timeout
        self._timer = self.loop.call_at(when, self._head_deadline)

    def _linger(self) -> None:
        """Half-close after a final answer and drop what still comes, for a while."""
        transport = self.transport
        self._lingering = True
        self._cancel_timer()
        if transport is None or transport.is_closing():
            return
        if self._read_paused:
            self._resume_reading()
        try:
            if transport.can_write_eof():
                transport.write_eof()
        except (OSError, RuntimeError):
            pass
        # Closes the transport after the linger (or at once when the client closes first).
        self._timer = self.loop.call_later(LINGER, self.close)

    def _silent_deadline(self) -> None:
        """No byte within `read_timeout` of connecting: close (nothing to answer)."""
        self._timer = None
        if not self._spoke and self._serving is None and self.transport is not None:
            self.transport.close()

    def _keepalive_deadline(self) -> None:
        self._idle_timer = None
        since = self._idle_since
        if since is None or self._serving is not None or self._in_head:
            return  # busy since: the next time it goes idle arms the timer again
        if self.transport is None:
            return
        due = since + self.server.keepalive_timeout
        if self.loop.time() < due:
            self._idle_timer = self.loop.call_at(due, self._keepalive_deadline)
        else:
            self.transport.close()

    def _head_deadline(self) -> None:
        self._timer = None
        transport = self.transport
        if self._serving is not None or not self._in_head or transport is None:
            return
        if transport.is_closing():
            return
        self.stopped = True
        transport.write(TIMEOUT_RESPONSE)
        self._linger()
        if self.server.on_timeout is not None:
            self.server.on_timeout(self.peer)
