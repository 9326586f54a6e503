"""The writing half of an h1server connection: response heads and bodies, back-pressure.

A whole `Response` goes out in one transport write (head and body together when small);
a `StreamResponse` writes its head here and its body through `write_raw`-like calls of
its own.  `pause_writing`/`resume_writing` from the transport make `drain()` wait while
the transport holds more than its high-water mark; a client that has gone makes the next
write or drain raise ConnectionResetError.
"""

from __future__ import annotations

import asyncio

from hydrallm.proxy.h1head import DateCache, response_head
from hydrallm.proxy.wire import Request, Response, StreamResponse

__all__ = ["ResponseWriter"]


class ResponseWriter(asyncio.Protocol):
    """Base of `h1server.Connection`: everything that writes to the client."""

    __slots__ = (
        "_drain",
        "closing",
        "dates",
        "loop",
        "sent_head",
        "stopped",
        "transport",
        "will_close",
        "write_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, dates: DateCache) -> None:
        self.loop = loop
        self.dates = dates
        self.transport: asyncio.Transport | None = None
        self._drain: asyncio.Future[None] | None = None
        self.write_paused = False
        self.closing = False  # close once the request being answered is done
        self.stopped = False  # no more requests are parsed (an error, an upgrade)
        self.will_close = False  # the head being answered said `Connection: close`
        self.sent_head = False  # the head of the request being answered was written

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain
        self._drain = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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

    def fail_drain(self) -> None:
        """The connection is lost: a write waiting for the buffer to drain fails."""
        waiter = self._drain
        self._drain = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client has gone"))
            waiter.exception()  # retrieved here: its awaiter may be cancelled already

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
        # _connection_line, inline (one call less per request)
        close = self.closing or self.stopped or not request.keep_alive or not request.body_complete
        self.will_close = close
        self.sent_head = True
        if close:
            framing += "Connection: close\r\n"
        elif request.version == "1.0":
            framing += "Connection: keep-alive\r\n"
        head = response_head(status, response.reason, response.headers, framing, self.dates)
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
        framing = self._connection_line(request, framing)
        transport.write(
            response_head(status, response.reason, response.headers, framing, self.dates)
        )
        return chunked, no_body

    def _connection_line(self, request: Request, framing: str) -> str:
        """Decide whether the connection goes on after this answer, and say so."""
        close = self.closing or self.stopped or not request.keep_alive or not request.body_complete
        self.will_close = close
        self.sent_head = True
        if close:
            return framing + "Connection: close\r\n"
        if request.version == "1.0":
            return framing + "Connection: keep-alive\r\n"
        return framing
