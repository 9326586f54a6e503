"""An upstream stream whose error events are held back and raised, for recovery.

Recovery needs an `overloaded_error` in the middle of an answer to be a break to mend,
not the last word the client reads; and a partial event must not grow without bound
while it waits for its end.
"""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDictProxy

from hydrallm.errors import StreamFailure
from hydrallm.formats.base import WireFormat
from hydrallm.formats.frames import EventSplitter, EventTooLong, parse_event
from hydrallm.formats.sse import DEFAULT_MAX_SIZE as MAX_EVENT
from hydrallm.proxy.upstream import Response

__all__ = ["MAX_EVENT", "GuardedResponse"]


class GuardedResponse:
    """An upstream response whose error events become a `StreamFailure` instead of bytes.

    Bytes are handed on in whole events (a partial event is held until its end), so an
    error event can be caught before any of it is written to the client.
    """

    __slots__ = (
        "_failure",
        "_format",
        "_inner",
        "_split",
        "headers",
        "oversized",
        "reason",
        "status",
    )

    def __init__(self, inner: Response, fmt: WireFormat) -> None:
        self._inner = inner
        self._format = fmt
        # An event is held until its end: bounded like the peek's, or it could grow forever.
        self._split = EventSplitter(max_event=MAX_EVENT)
        self._failure: str | None = None
        self.oversized = False
        self.status: int = inner.status
        self.reason: str = inner.reason
        self.headers: CIMultiDictProxy[str] = inner.headers

    def hold(self, prefix: list[bytes]) -> list[bytes]:
        """Filter the bytes read before commit the same way (they reach the client first)."""
        passed = self._filter(b"".join(prefix))
        return [passed] if passed else []

    async def read_chunk(self) -> bytes:
        if self._failure is not None:
            raise StreamFailure(self._failure)
        while True:
            chunk = await self._inner.read_chunk()
            if not chunk:
                return self._split.flush()
            passed = self._filter(chunk)
            if passed:
                return passed
            if self._failure is not None:
                raise StreamFailure(self._failure)

    def _filter(self, chunk: bytes) -> bytes:
        """The whole events of `chunk` up to an error event (which sets `_failure`)."""
        try:
            passed = self._split.feed_whole(chunk)
        except EventTooLong:
            self.oversized = True
            self._failure = f"the upstream sent an event longer than {MAX_EVENT // 1024} KiB"
            raise StreamFailure(self._failure) from None
        maybe_error = self._format.maybe_error
        # One scan of the whole for the error markers (none spans an event's end); only
        # when one is there, the events are split apart and looked at one by one.
        if not passed or not maybe_error(passed):
            return passed
        events = EventSplitter().feed(passed)
        for i, raw in enumerate(events):
            if maybe_error(raw):
                event = parse_event(raw)
                if self._format.is_error_event(event):
                    self._failure = f"upstream error event: {_describe(event.data)}"
                    return b"".join(events[:i])
        return passed

    def release(self) -> None:
        self._inner.release()

    def abort(self) -> None:
        self._inner.abort()


def _describe(data: dict[str, Any] | None) -> str:
    error = (data or {}).get("error")
    if not isinstance(error, dict):
        response = (data or {}).get("response")
        error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or "error"
        return f"{kind}: {error.get('message', '')}"
    return "error"
