"""Incremental Server-Sent Events decoder (sans-IO).

Follows the WHATWG "event stream interpretation" rules, fed with bytes in
chunks of any size: lines end with CRLF, LF or CR; lines starting with ``:``
are comments; ``field:value`` drops one space after the colon; an empty line
dispatches the event. Bytes are decoded per complete line, so a UTF-8
character split across chunks is reassembled; invalid UTF-8 becomes U+FFFD.
"""

from __future__ import annotations

from hydrallm.dataclass import dataclass

__all__ = ["DEFAULT_MAX_SIZE", "SSEDecoder", "SSEError", "SSEEvent"]

DEFAULT_MAX_SIZE = 1024 * 1024
_BOM = "\ufeff"


class SSEError(ValueError):
    """The stream broke a limit of the decoder (a line or event too large)."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event.

    ``event`` is None when the stream gave no ``event:`` field (the spec's
    implicit "message"). ``data`` joins the ``data:`` lines with "\\n".
    ``id`` is the ``id:`` given inside this event, if any.
    """

    event: str | None
    data: str
    id: str | None = None


class SSEDecoder:
    """Turns a byte stream into :class:`SSEEvent` objects, chunk by chunk.

    ``max_size`` bounds both a single line and the data accumulated for one
    event, so a hostile or broken upstream cannot make the proxy buffer
    without limit; crossing it raises :class:`SSEError`.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if max_size < 1:
            raise ValueError("max_size must be positive")
        self._max_size = max_size
        self._buf = bytearray()
        # Bytes of _buf known to hold no line terminator: rescanning them for
        # every small chunk of a long line would be quadratic.
        self._scanned = 0
        self._first_line = True
        self._lines_seen = 0
        self._event: str | None = None
        self._data: list[str] = []
        self._data_size = 0
        self._id: str | None = None

    @property
    def lines_seen(self) -> int:
        """How many complete lines (comments and blank lines included) were read."""
        return self._lines_seen

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Add bytes; return the events they complete (often none)."""
        self._buf += data
        events: list[SSEEvent] = []
        buf = self._buf
        start = 0
        pos = self._scanned
        end = len(buf)
        while pos < end:
            byte = buf[pos]
            if byte == 0x0A:
                self._line(bytes(buf[start:pos]), events)
                pos += 1
                start = pos
            elif byte == 0x0D:
                if pos + 1 == end:
                    # A CR at the end may be the first half of CRLF: wait.
                    break
                self._line(bytes(buf[start:pos]), events)
                pos += 2 if buf[pos + 1] == 0x0A else 1
                start = pos
            else:
                nl = _next_terminator(buf, pos)
                pos = end if nl < 0 else nl
        del buf[:start]
        self._scanned = pos - start
        if len(buf) > self._max_size:
            raise SSEError(f"SSE line longer than {self._max_size} bytes")
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: finish the last line and event.

        Unlike the WHATWG rule, which drops an event not followed by a blank
        line, the pending event is dispatched: several LLM upstreams end with
        a single newline after ``data: [DONE]``, and the SDKs accept that.
        """
        events: list[SSEEvent] = []
        if self._buf:
            # A trailing CR is a complete line ending at EOF.
            line = bytes(self._buf[:-1] if self._buf.endswith(b"\r") else self._buf)
            self._buf.clear()
            self._scanned = 0
            self._line(line, events)
        self._dispatch(events)
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        self._lines_seen += 1
        line = raw.decode("utf-8", errors="replace")
        if self._first_line:
            self._first_line = False
            if line.startswith(_BOM):
                line = line[1:]
        if not line:
            self._dispatch(events)
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_size += len(value) + 1
            if self._data_size > self._max_size:
                raise SSEError(f"SSE event data larger than {self._max_size} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            # The spec ignores ids containing NUL.
            self._id = value
        # "retry" and unknown fields are ignored: the proxy never reconnects.

    def _dispatch(self, events: list[SSEEvent]) -> None:
        # Per the spec an event without any data line is not dispatched.
        if self._data:
            events.append(SSEEvent(self._event, "\n".join(self._data), self._id))
        self._event = None
        self._data = []
        self._data_size = 0
        self._id = None


def _next_terminator(buf: bytearray, pos: int) -> int:
    lf = buf.find(b"\n", pos)
    cr = buf.find(b"\r", pos)
    if lf < 0:
        return cr
    if cr < 0:
        return lf
    return min(lf, cr)
