"""The client-facing request and response types of hydrallm's HTTP/1.1 server.

`h1server.Connection` parses requests into `Request` objects (headers as one
`CIMultiDictProxy`, the body buffered as it arrives) and writes what the handler returns:
a whole `Response` in one `transport.write`, or a `StreamResponse` the handler prepared
and wrote itself (chunked frames, back-pressure through `Connection.drain`).

    async def handle(request: Request) -> Response | StreamResponse:
        body = await request.read_body(limit, deadline)   # inflated, bounded in size and time
        return json_response({"ok": True})
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from hydrallm.proxy.h1conn import Connection

__all__ = [
    "INFLATED",
    "BodyTooLarge",
    "Handler",
    "Request",
    "RequestBodyError",
    "Response",
    "StreamResponse",
    "json_response",
]

Headers = Sequence[tuple[str, str]]

# Request Content-Encodings inflated when the body is read (aiohttp's parser rule, kept:
# ASCII, compared in lower case).  br and zstd need their libraries (brotli, zstandard);
# without them such a body is refused as undecodable (400).
INFLATED = frozenset({"gzip", "deflate", "br", "zstd"})
WAKE_AFTER = 256 * 1024


class BodyTooLarge(Exception):
    """The request body (after inflation) is larger than the limit given to read_body."""


class RequestBodyError(Exception):
    """The request body cannot be read: broken chunked framing, a coding that does not
    inflate.  The message says which, for the client."""


class Request:
    """One request as the client sent it (the head parsed, the body arriving)."""

    __slots__ = (
        "_buffered",
        "_conn",
        "_error",
        "_parts",
        "_waiter",
        "began",
        "body_complete",
        "headers",
        "keep_alive",
        "method",
        "names",
        "raw_path",
        "version",
    )

    def __init__(
        self,
        conn: Connection,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
        version: str,
        keep_alive: bool,
        began: float,
        names: list[str] | None = None,
    ) -> None:
        self._conn = conn
        self.method = method
        self.raw_path = raw_path  # the request-target exactly as sent (path and query)
        self.headers = headers
        self.version = version  # "1.1" or "1.0"
        self.keep_alive = keep_alive
        # Loop time of the first byte of this request's head: read_timeout bounds head and
        # body together (DECISIONS.md).
        self.began = began
        # The header names in lower case, in the order of `headers.items()`.
        self.names = names if names is not None else [k.lower() for k in headers]
        self._parts: list[bytes] = []
        self._buffered = 0
        # Whether the whole body has arrived (at once, for a request without one).  A plain
        # attribute, not a property: read twice per request.
        self.body_complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def path(self) -> str:
        return self.raw_path.partition("?")[0]

    @property
    def query_string(self) -> str:
        return self.raw_path.partition("?")[2]

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None else None  # the parser checked its digits

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._conn.transport

    @property
    def peer(self) -> str:
        return self._conn.peer

    def send_continue(self) -> None:
        """Answer `Expect: 100-continue`: the client then sends its body."""
        self._conn.write_raw(b"HTTP/1.1 100 Continue\r\n\r\n")

    def body_now(self, limit: int) -> bytes | None:
        """The whole body at once when all of it has arrived and needs no inflating (no
        await, no coroutine: the common case), else None: then use read_body.

        Raises BodyTooLarge like read_body."""
        if not self.body_complete or "Content-Encoding" in self.headers:
            return None
        parts = self._parts
        if self._buffered > limit:
            raise BodyTooLarge
        self._parts, self._buffered = [], 0
        self._conn.body_taken()
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    async def read_body(self, limit: int, deadline: float | None = None) -> bytes:
        """The whole body, inflated (gzip, deflate...), at most `limit` bytes after
        inflation, arriving before loop time `deadline`.

        Raises BodyTooLarge, TimeoutError, RequestBodyError (framing or coding).
        """
        inflater = _inflater_for(self.headers)
        parts: list[bytes] = []
        size = 0
        timer: asyncio.TimerHandle | None = None
        loop = self._conn.loop
        try:
            while True:
                if self._parts:
                    taken, self._parts, self._buffered = self._parts, [], 0
                    self._conn.body_taken()
                    for chunk in taken:
                        if inflater is not None:
                            chunk = inflater.feed(chunk, limit - size + 1)
                        size += len(chunk)
                        if size > limit:
                            raise BodyTooLarge
                        parts.append(chunk)
                if self.body_complete:
                    break
                if self._error is not None:
                    raise self._error
                waiter = self._waiter = loop.create_future()
                if timer is None and deadline is not None:
                    timer = loop.call_at(deadline, _expire, waiter)
                await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if inflater is not None:
            inflater.finish()
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    # --- called by the connection ---------------------------------------------------------

    def feed(self, data: bytes) -> int:
        self._parts.append(data)
        self._buffered += len(data)
        # The reader is woken per WAKE_AFTER bytes and at the end, not per read: a 1 MiB
        # body arrives in ~16 socket reads.
        waiter = self._waiter
        if self._buffered >= WAKE_AFTER and waiter is not None and not waiter.done():
            waiter.set_result(None)
        return self._buffered

    def finish(self) -> None:
        self.body_complete = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if self.body_complete:
            return
        self._error = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """A whole response: written with its Content-Length in one transport write.

    `headers` must not carry Content-Length, Transfer-Encoding or Connection (the server
    writes those).
    """

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(
        self,
        status: int = 200,
        *,
        body: bytes = b"",
        headers: Headers = (),
        reason: str | None = None,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.headers: Headers = (
            headers if content_type is None else [*headers, ("Content-Type", content_type)]
        )


class StreamResponse:
    """A response written as it goes: `prepare()` sends the head, `write()` each piece
    (chunked, unless `content_length` is set), `write_eof()` ends it.

    A write to a client that has gone raises ConnectionResetError; each write waits while
    the transport holds more than its high-water mark (back-pressure).
    """

    __slots__ = (
        "_chunked",
        "_conn",
        "_no_body",
        "_sent",
        "content_length",
        "done",
        "headers",
        "prepared",
        "reason",
        "status",
    )

    def __init__(self, status: int = 200, *, headers: Headers = (), reason: str | None = None):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length: int | None = None
        self.prepared = False
        self.done = False
        self._conn: Connection | None = None
        self._chunked = False
        self._no_body = False
        self._sent = 0

    async def prepare(self, request: Request) -> None:
        conn = request._conn
        self._conn = conn
        self._chunked, self._no_body = conn.write_stream_head(request, self)
        self.prepared = True

    async def write(self, data: bytes | memoryview) -> None:
        conn = self._conn
        assert conn is not None, "prepare() first"
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        if not data or self._no_body:
            return
        if self._chunked:
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self._sent += len(data)
            transport.write(data)
        if conn.write_paused:
            await conn.drain()

    async def write_eof(self) -> None:
        conn = self._conn
        if conn is None or self.done:
            return
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        if self._chunked and not self._no_body:
            transport.write(b"0\r\n\r\n")
        # A body shorter than its Content-Length cannot be followed by another response.
        self.done = self._chunked or self._no_body or self.content_length in (None, self._sent)
        if conn.write_paused:
            await conn.drain()


def json_response(payload: object, status: int = 200) -> Response:
    return Response(
        status,
        body=json.dumps(payload).encode(),
        content_type="application/json; charset=utf-8",
    )


# What a listener serves: the server calls it once per request.
Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


# --- request body codings -----------------------------------------------------------------


class _Decoder(Protocol):
    def feed(self, data: bytes, room: int) -> bytes: ...
    def finish(self) -> None: ...


def _inflater_for(headers: CIMultiDictProxy[str]) -> _Decoder | None:
    codings = headers.getall("Content-Encoding", ())
    if not codings:
        return None
    coding = codings[-1]  # as aiohttp's parser: the last header decides
    if not coding.isascii() or coding.lower() not in INFLATED:
        return None
    coding = coding.lower()
    if coding in ("gzip", "deflate"):
        return _Zlib(coding)
    return _Library(coding)


_UNDECODABLE = "the request body could not be decompressed"


class _Zlib:
    """gzip or deflate, inflated at most `room` bytes at a time (a bomb stops at the limit)."""

    __slots__ = ("_d", "_deflate")

    def __init__(self, coding: str) -> None:
        self._deflate = coding == "deflate"
        self._d: zlib._Decompress | None = None

    def feed(self, data: bytes, room: int) -> bytes:
        d = self._d
        if d is None:
            if not self._deflate:
                wbits = 16 + zlib.MAX_WBITS
            elif data and data[0] & 0x0F != 8:
                wbits = -zlib.MAX_WBITS  # raw deflate, as some clients send it (aiohttp's rule)
            else:
                wbits = zlib.MAX_WBITS
            d = self._d = zlib.decompressobj(wbits)
        try:
            return d.decompress(data, room)
        except zlib.error as exc:
            raise RequestBodyError(_UNDECODABLE) from exc

    def finish(self) -> None:
        if self._d is not None and not self._d.eof:  # an empty body is an empty body
            raise RequestBodyError(_UNDECODABLE + " (it ends before the compressed data)")


class _Library:
    """br or zstd, when the library is installed (imported only when a body needs it)."""

    __slots__ = ("_d",)

    def __init__(self, coding: str) -> None:
        try:
            if coding == "br":
                import brotli  # type: ignore[import-not-found]

                self._d = brotli.Decompressor()
            else:
                import zstandard  # type: ignore[import-not-found]

                self._d = zstandard.ZstdDecompressor().decompressobj()
        except ImportError:
            raise RequestBodyError(
                f"{_UNDECODABLE}: {coding} is not available on this proxy"
            ) from None

    def feed(self, data: bytes, room: int) -> bytes:
        try:
            out = self._d.process(data) if hasattr(self._d, "process") else self._d.decompress(data)
        except Exception as exc:
            raise RequestBodyError(_UNDECODABLE) from exc
        return bytes(out)

    def finish(self) -> None:
        return None
