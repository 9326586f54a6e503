"""`MockTransport`: the upstream `Transport` seam without sockets, for the pure core's tests.

A handler turns each request into a `MockResponse` (or raises an `UpstreamError`, as the
real transport does for a refused connection).  A response's body is a script of chunks:
bytes are handed out one per `read_chunk()`, an exception instance is raised at that point
(a reset mid-body), and `STALL` never answers (so a timeout fires).

    transport = MockTransport(lambda req: MockResponse(503, body=[b"busy"]))
    engine = Engine(config, transport, ...)
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from multidict import CIMultiDict, CIMultiDictProxy


class _Stall:
    def __repr__(self) -> str:
        return "STALL"


STALL = _Stall()  # a body step that never arrives

Step = bytes | BaseException | _Stall


@dataclass(slots=True)
class MockRequest:
    """What the transport was asked to send."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)


@dataclass(slots=True)
class MockResponse:
    status: int = 200
    headers: Iterable[tuple[str, str]] = ()
    body: Sequence[Step] = ()
    reason: str = ""
    released: bool = field(default=False, init=False)
    aborted: bool = field(default=False, init=False)
    _headers: CIMultiDictProxy[str] | None = field(default=None, init=False)
    _at: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._headers = CIMultiDictProxy(CIMultiDict(list(self.headers)))

    @property
    def message_headers(self) -> CIMultiDictProxy[str]:
        assert self._headers is not None
        return self._headers

    async def read_chunk(self) -> bytes:
        if self._at >= len(self.body):
            return b""
        step = self.body[self._at]
        self._at += 1
        if isinstance(step, _Stall):
            await asyncio.Event().wait()  # until a deadline cancels the reader
        if isinstance(step, BaseException):
            raise step
        assert isinstance(step, bytes)
        return step

    def release(self) -> None:
        self.released = True

    def abort(self) -> None:
        self.aborted = True


class _Bound:
    """A `MockResponse` as the engine sees it: the `Response` protocol, `headers` a proxy."""

    __slots__ = ("_inner", "headers", "reason", "status")

    def __init__(self, inner: MockResponse) -> None:
        self._inner = inner
        self.status = inner.status
        self.reason = inner.reason
        self.headers = inner.message_headers

    async def read_chunk(self) -> bytes:
        return await self._inner.read_chunk()

    def release(self) -> None:
        self._inner.release()

    def abort(self) -> None:
        self._inner.abort()


Handler = Callable[[MockRequest], "MockResponse | Awaitable[MockResponse]"]


class MockTransport:
    """Implements `hydrallm.proxy.upstream.Transport` by calling `handler` for each request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[MockRequest] = []
        self.responses: list[MockResponse] = []
        self.closed = False

    async def send(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> _Bound:
        request = MockRequest(method, url, list(headers), body)
        self.requests.append(request)
        result = self.handler(request)
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, MockResponse)
        self.responses.append(result)
        return _Bound(result)

    async def close(self) -> None:
        self.closed = True


def script(*responses: MockResponse | BaseException) -> Handler:
    """A handler answering the requests in order with `responses` (the last one repeats);
    an exception instance is raised instead of answering (e.g. `ConnectError`)."""
    queue = list(responses)

    def handler(request: MockRequest) -> MockResponse:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, BaseException):
            raise item
        # A fresh copy each time, so a repeated response can be read again.
        return MockResponse(item.status, list(item.headers), list(item.body), item.reason)

    return handler
