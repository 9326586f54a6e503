"""Whole SSE events out of a byte stream, with their raw bytes kept.

`SSEDecoder` gives parsed events but not the bytes they came from; recovery needs
both: the raw bytes to pass an event through unchanged, the parsed form to read it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hydrallm.dataclass import dataclass
from hydrallm.formats.peek import StreamKind

# An event ends at a blank line.  Upstreams use one line-ending style per stream.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event: its `event:` name, its data (JSON object, or None), and raw bytes."""

    name: str | None
    data: dict[str, Any] | None
    text: str  # the joined data lines
    raw: bytes

    @property
    def type(self) -> str | None:
        """The event's type: the `event:` field, else the data's `type`."""
        if self.name is not None:
            return self.name
        value = self.data.get("type") if self.data is not None else None
        return value if isinstance(value, str) else None


class EventTooLong(ValueError):
    """An event (or a line with no end) grew past the splitter's limit."""


class EventSplitter:
    """Feed bytes, get the raw bytes of each complete event (the tail is held).

    Cost is linear in the bytes fed: a chunk that ends no event is only appended to a
    list (the held bytes are joined once, when their event ends), so a long event that
    arrives in small pieces is not rescanned or copied per piece.  With `max_event`, an
    event held longer than that raises `EventTooLong` instead of growing without bound.
    """

    __slots__ = ("_parts", "_size", "max_event")

    def __init__(self, max_event: int | None = None) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.max_event = max_event

    def feed(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        if self._parts:
            # An event end may straddle the boundary: look at the held tail's last bytes too.
            tail = self._parts[-1][-3:] + data
            if b"\n\n" not in tail and (b"\r" not in tail or _EVENT_END.search(tail) is None):
                self._hold(data)
                return []
            buf = b"".join(self._parts) + data
            self._parts, self._size = [], 0
        else:
            buf = data
        out: list[bytes] = []
        start = 0
        if b"\r" in buf:
            for match in _EVENT_END.finditer(buf):
                out.append(buf[start : match.end()])
                start = match.end()
        else:
            # LF only (nearly every upstream): bytes.find is a C scan, where the regex's
            # alternation is stepped byte by byte (a third of the relay's CPU on long
            # events).  Same events: the leftmost `\n\n` after the previous end.
            find = buf.find
            end = find(b"\n\n")
            while end >= 0:
                end += 2
                out.append(buf[start:end])
                start = end
                end = find(b"\n\n", start)
        if start < len(buf):
            self._hold(buf[start:] if start else buf)
        return out

    def _hold(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self.max_event is not None and self._size > self.max_event:
            raise EventTooLong(f"an event longer than {self.max_event} bytes")

    def feed_whole(self, data: bytes) -> bytes:
        """Like `feed`, but the complete events as one piece (nothing is split apart).

        On LF-only data the cut is at the last `\\n\\n`, one reverse scan: what passes is
        the same bytes as `b"".join(feed(data))`, except that a blank line right after an
        event's end may pass with it instead of being held (a blank line is no event).
        """
        if not data:
            return b""
        if b"\r" in data or (self._parts and b"\r" in self._parts[-1][-3:]):
            return b"".join(self.feed(data))
        if self._parts:
            end = data.rfind(b"\n\n")
            if end < 0:
                if self._parts[-1][-1:] == b"\n" and data[:1] == b"\n":
                    end = -1  # the end straddles the boundary
                else:
                    self._hold(data)
                    return b""
            end += 2
            passed = b"".join(self._parts) + data[:end]
            self._parts, self._size = [], 0
        else:
            end = data.rfind(b"\n\n")
            if end < 0:
                self._hold(data)
                return b""
            end += 2
            passed = data[:end] if end < len(data) else data
        if end < len(data):
            self._hold(data[end:])
        return passed

    def flush(self) -> bytes:
        """What is left at the end of the stream (an unterminated event), if anything."""
        rest = b"".join(self._parts)
        self._parts, self._size = [], 0
        return rest

    @property
    def pending(self) -> bytes:
        return b"".join(self._parts)

    @property
    def pending_size(self) -> int:
        return self._size


def parse_event(raw: bytes) -> Event:
    """Parse the raw bytes of one event (comments and unknown fields ignored)."""
    name: str | None = None
    data: list[str] = []
    decoded = raw.decode("utf-8", errors="replace")
    # SSE lines end at CR, LF or CRLF only: `str.splitlines` would also cut at U+0085,
    # U+2028 and U+2029, which JSON carries raw inside strings (a tool argument holding
    # one was parsed as two broken lines).
    lines = decoded.split("\n") if "\r" not in decoded else _LINE_END.split(decoded)
    for line in lines:
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    text = "\n".join(data)
    parsed: dict[str, Any] | None = None
    if text and text[0] == "{":
        try:
            value_ = json.loads(text)
        except ValueError:
            value_ = None
        if isinstance(value_, dict):
            parsed = value_
    return Event(name, parsed, text, raw)


def is_error_event(kind: StreamKind, event: Event) -> bool:
    """An upstream's in-stream failure (after which the answer will not go on)."""
    if kind is StreamKind.OPENAI_CHAT:
        return event.name == "error" or (event.data is not None and "error" in event.data)
    return event.type in ("error", "response.failed")


def maybe_error(kind: StreamKind, raw: bytes) -> bool:
    """Cheap pre-check before parsing: could these bytes be an error event?"""
    if kind is StreamKind.OPENAI_CHAT:
        # One scan in the common case: every marker contains `error`.
        return b"error" in raw and (
            b'"error"' in raw or b"event: error" in raw or b"event:error" in raw
        )
    return b"error" in raw or b"response.failed" in raw


def encode(data: dict[str, Any], name: str | None = None) -> bytes:
    """One SSE event with a JSON payload."""
    head = f"event: {name}\n" if name else ""
    return b"%sdata: %s\n\n" % (head.encode(), json_bytes(data))


def json_bytes(value: object) -> bytes:
    """Compact JSON as UTF-8, non-ASCII text as it is.  A lone surrogate (JSON may carry
    one as a `\\ud800` escape; Python decodes it to a str that has no UTF-8) goes out as
    that escape again, where raw it would fail the answer."""
    return utf8(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def utf8(json_text: str) -> bytes:
    """JSON text as UTF-8: a lone surrogate, which can only be inside a string there,
    written as its `\\uXXXX` escape (the same JSON value)."""
    return json_text.encode("utf-8", "backslashreplace")
