"""One upstream HTTP/1.1 connection (`Conn`, an asyncio.Protocol fed to httptools' llhttp
parser) and the response read from it (`LeanResponse`).  The pool is h1client.py's.

Parser callbacks fill the connection's per-response state; waiters (one for the head, one
for the next body piece) are woken once per `data_received`, after the whole piece was
parsed, so bytes after a message's end fail the attempt before anyone sees the answer.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from multidict import CIMultiDict, CIMultiDictProxy

from hydrallm.errors import ProtocolError, UpstreamError

# Reading stops once this much body is buffered unread: the bound on memory per slow
# client (issue 14, 3b; aiohttp's read_bufsize=16 KiB gave the same 32 KiB).
HIGH_WATER = 32 * 1024
MAX_HEAD = 64 * 1024  # an upstream head larger than this is refused
MAX_FIELD = 8190  # one header line (aiohttp's limit)
# Response headers that describe the upstream connection, not the message.
RESPONSE_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "upgrade",
        "trailer",
        "proxy-connection",
    }
)


class Pool(Protocol):
    """What a connection needs of its pool."""

    loop: asyncio.AbstractEventLoop

    def release(self, conn: Conn) -> None: ...
    def lost(self, conn: Conn) -> None: ...
    def forget(self, conn: Conn) -> None: ...


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


class _Stop(Exception):
    """Raised in a parser callback to stop parsing (the reason is already in `error`)."""


class Conn(asyncio.Protocol):
    """One upstream connection and the state of the response it is reading."""

    __slots__ = (
        "active", "body_waiter", "chunks", "closed", "complete", "error", "got_bytes", "head_bytes",
        "head_done", "head_waiter", "headers", "idle_since", "interim", "keep_alive", "key",
        "loop", "message", "no_body", "parser", "paused", "pool", "raw", "reason", "reused", "size",
        "status", "transport",
    )  # fmt: skip

    def __init__(self, pool: Pool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
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
        self.raw: list[bytes] = []  # header names and values alternating, as received
        self.headers: CIMultiDictProxy[str] | None = None
        self.message: list[tuple[str, str]] = []  # the headers less RESPONSE_HOP_BY_HOP
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
        # wake(), inline: this runs once per piece of every answer (streams too).
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
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
        # Kept raw, checked and decoded together when the head is complete.
        self.raw += (name, value)

    def on_headers_complete(self) -> None:
        raw = self.raw
        # One piece: llhttp lets no CR or LF into a name or value and only token characters
        # into a name, so the fields joined by LF decode and split back exactly.
        joined = b"\n".join(raw)
        if len(joined) > MAX_FIELD:  # one of them may be that long
            for i in range(0, len(raw), 2):
                if len(raw[i]) + len(raw[i + 1]) > MAX_FIELD:
                    message = f"invalid upstream response: a header over {MAX_FIELD} bytes"
                    self.fail(ProtocolError(message))
                    raise _Stop
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: an interim answer; the real one follows
            self.interim = True
            return
        self.status = status
        if raw:
            text = joined.decode("utf-8", "surrogateescape")
            parts = text.split("\n")
            # (Names and values alternate by construction: no strict check needed.)
            pairs = list(zip(parts[::2], parts[1::2], strict=False))
            lowered = text.lower().split("\n")[::2]
            self.headers = CIMultiDictProxy(CIMultiDict(pairs))
            self.message = [
                pair
                for pair, name in zip(pairs, lowered, strict=True)
                if name not in RESPONSE_HOP_BY_HOP
            ]
        else:
            self.headers = CIMultiDictProxy(CIMultiDict())
            self.message = []
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
    __slots__ = ("_conn", "headers", "message", "reason", "status")

    def __init__(self, conn: Conn) -> None:
        self._conn: Conn | None = conn
        self.status = conn.status
        self.reason = conn.reason
        assert conn.headers is not None
        self.headers = conn.headers
        self.message = conn.message  # see upstream.message_headers

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
                conn.abort()  # kept as self._conn: a later read raises the same error again
                conn.pool.forget(conn)
                raise conn.error
            waiter = conn.body_waiter = conn.loop.create_future()
            try:
                await waiter
            except asyncio.CancelledError:
                self.abort()
                raise
        return b""

    def take_whole(self, limit: int) -> bytes | None:
        """The whole body, when all of it has arrived and it is under `limit` bytes (then
        the connection goes back to the pool); else None and nothing is taken."""
        conn = self._conn
        if conn is None or not conn.complete or conn.size >= limit:
            return None
        chunks = conn.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        conn.chunks = []
        conn.size = 0
        self.release()
        return data

    def release(self) -> None:
        """Back to the pool when the whole body arrived (read or not), else closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool.release(conn)

    def abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
            conn.pool.forget(conn)
