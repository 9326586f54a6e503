"""The client-facing HTTP/1.1 server: an asyncio Protocol over httptools (llhttp).

Built for what hydrallm needs and nothing more (uvicorn's httptools protocol is the model):
one `Connection` per client connection parses requests with llhttp, runs the handler in
one task per request (pipelined requests wait their turn, in order), and writes what it
returns: a whole `Response` in one transport write, or a `StreamResponse` the handler
wrote itself.  Compared with aiohttp's `web.Server` it skips the generic request and
response machinery: ~2x less CPU per request in the server side.

Protections (what aiohttp gave us, and what connguard.py added to it):
- head limits: request target and each header field at most 8,190 bytes, at most 128
  headers (aiohttp's); ambiguous framing (CL+TE, duplicate CL, a Transfer-Encoding other
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
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from itertools import chain
from socket import socket
from typing import Any, Protocol, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from hydrallm.proxy.wire import Request, RequestBodyError, Response, StreamResponse

__all__ = ["Connection", "H1Server", "Handler"]

Handler = Callable[[Request], Awaitable[Response | StreamResponse]]
# Called with the peer address ("host:port", or "-") when a slow head is cut with a 408.
OnTimeout = Callable[[str], None]


class Log(Protocol):
    def warn(self, event: str, **fields: object) -> None: ...
    def error(self, event: str, **fields: object) -> None: ...


MAX_LINE = 8190  # the request target (aiohttp's max_line_size)
MAX_FIELD = 8190  # one header name or value (aiohttp's max_field_size)
MAX_HEADERS = 128  # aiohttp's max_headers
MAX_HEAD = MAX_HEADERS * MAX_FIELD  # bytes of one head, whatever its shape
PIPELINE_MAX = 8  # requests parsed ahead of the one being answered before reading pauses
BODY_HIGH = 1 << 20  # request body bytes buffered unread before reading pauses
LINGER = 2.0  # how long input is read and dropped after a final answer, before closing

# aiohttp's singleton rule: two of these in one request is ambiguous, so refused.
_SINGLETONS = (
    "Content-Length",
    "Content-Location",
    "Content-Range",
    "Content-Type",
    "ETag",
    "Host",
    "Max-Forwards",
    "Server",
    "Transfer-Encoding",
    "User-Agent",
)
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {phrase}\r\n" for code, phrase in _REASONS.items()}
_CTL = dict.fromkeys(map(ord, "\r\n\x00"))
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Sent before closing a connection whose request head is too slow (RFC 9110 §15.5.9).
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Connection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 46\r\n"
    b"\r\n"
    b"hydrallm: request head not complete in time.\r\n"
)


class _Bad(Exception):
    """A request that is not acceptable HTTP (the message is for the client and the log)."""


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
        self._date = ""
        self._date_at = -1

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
            self._server = await self.loop.create_server(
                self, host, port, reuse_port=reuse_port or None, backlog=backlog
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

    def date_line(self) -> str:
        """The `Date` header line, made once per second."""
        now = int(time.time())
        if now != self._date_at:
            t = time.gmtime(now)
            self._date = (
                f"Date: {_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon]} {t.tm_year}"
                f" {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT\r\n"
            )
            self._date_at = now
        return self._date


class Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler, writes the answers."""

    __slots__ = (
        "_began",
        "_current",
        "_drain",
        "_error",
        "_head_size",
        "_headers",
        "_in_head",
        "_lingering",
        "_peer",
        "_queue",
        "_read_paused",
        "_sent_head",
        "_serving",
        "_spoke",
        "_stopped",
        "_task",
        "_timer",
        "_url",
        "_will_close",
        "closing",
        "loop",
        "parser",
        "server",
        "transport",
        "write_paused",
    )

    def __init__(self, server: H1Server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._in_head = False
        self._began = 0.0
        self._current: Request | None = None  # the request whose body is being parsed
        self._serving: Request | None = None  # the request whose handler runs
        self._task: asyncio.Task[None] | None = None
        self._queue: deque[Request] = deque()  # pipelined requests, in order
        self._timer: asyncio.TimerHandle | None = None
        self._spoke = False  # any byte received yet
        self._stopped = False  # no more requests are parsed (an error, an upgrade)
        self._error: str | None = None  # a request that could not be parsed: 400 in turn
        self._lingering = False  # a final answer was sent: input is dropped until closed
        self._will_close = False  # the head being answered said `Connection: close`
        self._sent_head = False  # the head of the request being answered was written
        self._read_paused = False
        self._peer: str | None = None
        self._drain: asyncio.Future[None] | None = None
        self.write_paused = False
        self.closing = False  # close once the request being answered is done

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        # Until the first byte, the head deadline doubles as the first-byte deadline.
        self._timer = self.loop.call_later(self.server.read_timeout, self._silent_deadline)

    def data_received(self, data: bytes) -> None:
        if self._stopped or self._lingering:
            return
        self._spoke = True
        if self._timer is not None and not self._in_head:
            self._timer.cancel()  # the first-byte or the keep-alive deadline
            self._timer = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade or CONNECT: the request is answered as a plain one, then the
            # connection ends (hydrallm switches to no other protocol).
            self._stopped = True
            self.closing = True
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._bad(str(cause) if isinstance(cause, _Bad) else f"{exc}: {cause!r}")
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
        self._queue.clear()
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # the client has gone: so has the reason to go on
        gone = ConnectionResetError("the client has gone")
        current = self._current
        if current is not None:
            current.fail(gone)
        waiter = self._drain
        self._drain = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(gone)
            waiter.exception()  # retrieved here: its awaiter may be cancelled already

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain
        self._drain = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
            raise _Bad(f"the request target is longer than {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept raw: checked and decoded together when the head is complete (the bytes of
        # a head are bounded by MAX_HEAD meanwhile).
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timer()
        parser = self.parser
        raw = self._headers
        if len(raw) > MAX_HEADERS:
            raise _Bad(f"more than {MAX_HEADERS} headers")
        if raw and max(map(len, chain.from_iterable(raw))) > MAX_FIELD:
            raise _Bad(f"a header name or value is longer than {MAX_FIELD} bytes")
        # llhttp strips the whitespace before a value, not after it (RFC 9110 §5.5).
        headers = CIMultiDict(
            [
                (n.decode("latin-1"), v.rstrip(b" \t").decode("utf-8", "surrogateescape"))
                for n, v in raw
            ]
        )
        version = parser.get_http_version()
        names = {n.lower() for n, _ in raw}
        if version != "1.0" and b"host" not in names:
            raise _Bad("the request has no Host header")
        if len(names) != len(raw):  # a name repeats: refuse it if it must not
            for name in _SINGLETONS:
                if len(headers.getall(name, ())) > 1:
                    raise _Bad(f"more than one {name} header")
        te = headers.get("Transfer-Encoding")
        if te is not None and te.strip(" \t").lower() != "chunked":
            raise _Bad(f"Transfer-Encoding {te[:40]!r} is not supported; only chunked is")
        request = Request(
            self,
            parser.get_method().decode("ascii"),
            self._url.decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(headers),
            version,
            parser.should_keep_alive(),
            self._began,
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
            self._will_close = self._sent_head = False
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
                if not self._sent_head:
                    self._will_close = True
                    self.write_raw(
                        b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n"
                        b"Content-Length: 0\r\n\r\n"
                    )
            next_request = self._after(request, complete)

    def _after(self, request: Request, complete: bool) -> Request | None:
        """The connection after an answer: the next request, or idle, or closed."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return None
        if self._will_close or not complete or self._stopped or self.closing:
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
            self._timer = self.loop.call_later(
                self.server.keepalive_timeout, self._keepalive_deadline
            )
        return None

    def _bad(self, message: str) -> None:
        """Input that is not acceptable HTTP: a 400 in turn, then the connection ends."""
        self._stopped = True
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
        body = f"hydrallm: bad request: {self._error}\n".encode("utf-8", "replace")
        self.write_raw(
            b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self._linger()

    # --- writing ---------------------------------------------------------------------------

    def write_raw(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def write_whole(self, request: Request, response: Response) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        status, body = response.status, response.body
        if status in (204, 304) or status < 200:
            framing, send = "", False
        else:
            framing, send = f"Content-Length: {len(body)}\r\n", request.method != "HEAD"
        head = self._head(request, status, response.reason, response.headers, framing)
        if not send or not body:
            transport.write(head)
        elif len(body) <= 65536:
            transport.write(head + body)  # one write, one packet for a small answer
        else:
            transport.writelines((head, body))

    def write_stream_head(self, request: Request, response: StreamResponse) -> tuple[bool, bool]:
        """Send a streamed response's head; returns (chunked, without body)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        status = response.status
        no_body = request.method == "HEAD" or status in (204, 304) or status < 200
        chunked = False
        if status in (204, 304) or status < 200:
            framing = ""
        elif response.content_length is not None:
            framing = f"Content-Length: {response.content_length}\r\n"
        elif no_body:
            framing = ""
        elif request.version == "1.1":
            framing, chunked = "Transfer-Encoding: chunked\r\n", True
        else:
            framing = ""
            self.closing = True  # HTTP/1.0: the end of the body is the end of the connection
        transport.write(self._head(request, status, response.reason, response.headers, framing))
        return chunked, no_body

    def _head(
        self,
        request: Request,
        status: int,
        reason: str | None,
        headers: Sequence[tuple[str, str]],
        framing: str,
    ) -> bytes:
        line = _STATUS_LINES.get(status) if reason is None else None
        if line is None:
            line = f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Unknown')}\r\n"
        n = len(headers)
        block = "\r\n".join(map(": ".join, headers))
        if line.count("\n") != 1 or block.count("\n") != n - 1 or block.count("\r") != n - 1:
            # A CR or LF inside a value or reason would start a header line of its own.
            line = line[:-2].translate(_CTL) + "\r\n"
            block = "\r\n".join(f"{k.translate(_CTL)}: {v.translate(_CTL)}" for k, v in headers)
        if n:
            block += "\r\n"
        low = block.lower()
        date = "" if low.startswith("date:") or "\ndate:" in low else self.server.date_line()
        close = self.closing or self._stopped or not request.keep_alive or not request.body_complete
        self._will_close = close
        self._sent_head = True
        if close:
            framing += "Connection: close\r\n"
        elif request.version == "1.0":
            framing += "Connection: keep-alive\r\n"
        return f"{line}{block}{framing}{date}\r\n".encode("utf-8", "surrogateescape")

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark."""
        if not self.write_paused:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        waiter = self._drain
        if waiter is None:
            waiter = self._drain = self.loop.create_future()
        await waiter

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
        self._timer = None
        if self._serving is None and not self._in_head and self.transport is not None:
            self.transport.close()

    def _head_deadline(self) -> None:
        self._timer = None
        transport = self.transport
        if self._serving is not None or not self._in_head or transport is None:
            return
        if transport.is_closing():
            return
        self._stopped = True
        transport.write(_TIMEOUT_RESPONSE)
        self._linger()
        if self.server.on_timeout is not None:
            self.server.on_timeout(self.peer)
