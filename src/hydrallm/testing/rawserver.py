"""`RawFaultServer`: an HTTP-ish server on raw sockets, for faults aiohttp cannot produce.

    async with RawFaultServer("short_body") as srv:
        ...  # every request to srv.url gets Content-Length: 1000 and 10 bytes, then EOF

Each connection is served once, in the chosen `RawMode`, then closed.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct

from hydrallm.testing.service import AsyncService

__all__ = ["RawFaultServer", "RawMode"]


class RawMode(enum.StrEnum):
    """How the raw server misbehaves."""

    GARBAGE_STATUS = "garbage_status"  # a status line that is not HTTP
    OVERSIZED_HEADERS = "oversized_headers"  # one header line far beyond any client limit
    RESET_BEFORE_STATUS = "reset_before_status"  # read the request, send RST
    SHORT_BODY = "short_body"  # Content-Length: 1000, 10 bytes, then EOF
    LONG_BODY = "long_body"  # Content-Length: 2, then 2 + 100 bytes
    ANSWER_BEFORE_BODY = "answer_before_body"  # 200 right after the head; body never read
    NEVER_READ_BODY = "never_read_body"  # read the head only, never read on, never answer
    ACCEPT_NEVER_ANSWER = "accept_never_answer"  # accept; read nothing; say nothing


_GARBAGE = b"HTTP/1.1 two-hundred NOT-OK\r\n\r\n"
SHORT_BODY_PROMISED = 1000
SHORT_BODY_SENT = b'{"partial"'
LONG_BODY = b"{}"
LONG_BODY_EXTRA = b"x" * 100
EARLY_ANSWER = b'{"early":true}'


def _head(status: str, length: int, extra: bytes = b"", *, close: bool = True) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    text = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{connection}"
    )
    return text.encode() + extra + b"\r\n"


class RawFaultServer(AsyncService):
    """Listens on 127.0.0.1:<random port>; every connection gets `mode`.

    `connections` counts accepted connections, `requests` the request heads read
    (kept in `heads`).
    """

    def __init__(
        self, mode: RawMode | str, *, header_size: int = 128 * 1024, host: str = "127.0.0.1"
    ) -> None:
        self.mode = RawMode(mode)
        self.header_size = header_size
        self.connections = 0
        self.requests = 0
        self.heads: list[bytes] = []
        self._host = host
        self._server: asyncio.Server | None = None
        self._url: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopped = asyncio.Event()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        if self._url is None:
            raise RuntimeError("RawFaultServer is not started")
        return self._url

    async def start(self) -> None:
        """Start listening."""
        # The head must fit the reader's buffer: allow big request heads.
        self._server = await asyncio.start_server(self._serve, self._host, 0, limit=1 << 20)
        host, port = self._server.sockets[0].getsockname()[:2]
        self._url = f"http://{host}:{port}"

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopped.set()
        server.close()
        # asyncio creates the connection tasks; this server owns them and ends them
        # by closing their sockets, which wakes every read and drain. (Cancelling
        # them instead makes Python 3.11's asyncio log an error for each one.)
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        reset = False
        try:
            reset = await self._misbehave(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            if not reset:
                writer.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        self.heads.append(head)
        return head

    async def _misbehave(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Play `mode` on one connection; True when the connection was reset."""
        mode = self.mode
        if mode is RawMode.ACCEPT_NEVER_ANSWER:
            await self._stopped.wait()
            return False
        await self._read_head(reader)
        if mode is RawMode.NEVER_READ_BODY:
            await self._stopped.wait()
        elif mode is RawMode.RESET_BEFORE_STATUS:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return True
        elif mode is RawMode.GARBAGE_STATUS:
            writer.write(_GARBAGE)
        elif mode is RawMode.OVERSIZED_HEADERS:
            big = b"X-Oversized: " + b"a" * self.header_size + b"\r\n"
            writer.write(_head("200 OK", len(LONG_BODY), big) + LONG_BODY)
        elif mode is RawMode.SHORT_BODY:
            writer.write(_head("200 OK", SHORT_BODY_PROMISED) + SHORT_BODY_SENT)
        elif mode is RawMode.LONG_BODY:
            # Keep-alive: the extra bytes look like the start of the next response.
            writer.write(_head("200 OK", len(LONG_BODY), close=False) + LONG_BODY + LONG_BODY_EXTRA)
        elif mode is RawMode.ANSWER_BEFORE_BODY:
            writer.write(_head("200 OK", len(EARLY_ANSWER)) + EARLY_ANSWER)
            await writer.drain()
            # Only now read (and drop) the body, until the client hangs up: closing
            # with unread bytes would send a RST that could destroy the answer.
            while await reader.read(65536):
                pass
        await writer.drain()
        return False
