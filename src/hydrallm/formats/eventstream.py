"""AWS event-stream (``application/vnd.amazon.eventstream``) codec, sans-IO.

A message is, big-endian::

    total length (4) | headers length (4) | prelude CRC32 (4)
    headers | payload | message CRC32 (4)

The prelude CRC covers the first 8 bytes; the message CRC covers everything
before it. Both are checked before a message is returned: a frame cut or
altered on the way must not reach the client as if it were whole.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

from hydrallm.dataclass import dataclass

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "EventStreamDecoder",
    "EventStreamError",
    "HeaderValue",
    "Message",
    "encode_message",
]

HeaderValue = str | int | bool | bytes

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
_PRELUDE = 12
_MIN_MESSAGE = _PRELUDE + 4

# Header value type codes from the event-stream specification.
_TRUE, _FALSE, _BYTE, _SHORT, _INT, _LONG, _BYTES, _STRING, _TIMESTAMP, _UUID = range(10)
_FIXED = {_BYTE: ">b", _SHORT: ">h", _INT: ">i", _LONG: ">q", _TIMESTAMP: ">q"}


class EventStreamError(ValueError):
    """A frame is corrupt (CRC mismatch), malformed, too large, or truncated."""


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded event-stream message.

    Header values are ``bool`` for the two boolean types, ``int`` for the
    integer types and timestamps (milliseconds since the epoch), ``bytes``
    for byte arrays and UUIDs, ``str`` for strings.
    """

    headers: Mapping[str, HeaderValue]
    payload: bytes

    def _str_header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value if isinstance(value, str) else None

    @property
    def message_type(self) -> str | None:
        """``:message-type``: "event", "exception" or "error"."""
        return self._str_header(":message-type")

    @property
    def event_type(self) -> str | None:
        """``:event-type`` of an event message (e.g. "chunk", "contentBlockDelta")."""
        return self._str_header(":event-type")

    @property
    def exception_type(self) -> str | None:
        """``:exception-type`` of an exception message (e.g. "throttlingException")."""
        return self._str_header(":exception-type")


class EventStreamDecoder:
    """Incremental decoder: feed bytes, get the messages they complete.

    After an error the decoder stays broken and raises again: resynchronising
    inside a byte stream whose framing is lost is guesswork.
    """

    def __init__(self, *, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        if max_message < _MIN_MESSAGE:
            raise ValueError(f"max_message must be at least {_MIN_MESSAGE}")
        self._max = max_message
        self._buf = bytearray()
        self._error: EventStreamError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        """Add bytes; return the complete messages, in order."""
        if self._error is not None:
            raise self._error
        self._buf += data
        messages: list[Message] = []
        try:
            while len(self._buf) >= _PRELUDE:
                total = self._check_prelude()
                if len(self._buf) < total:
                    break
                frame = bytes(self._buf[:total])
                del self._buf[:total]
                messages.append(_decode_frame(frame))
        except EventStreamError as exc:
            self._error = exc
            raise
        return messages

    def close(self) -> None:
        """End of stream: raise if a partial message is left over."""
        if self._error is not None:
            raise self._error
        if self._buf:
            self._error = EventStreamError(
                f"stream ended inside a message ({len(self._buf)} bytes left over)"
            )
            raise self._error

    def _check_prelude(self) -> int:
        total, headers_len, crc = struct.unpack_from(">III", self._buf)
        if zlib.crc32(self._buf[:8]) != crc:
            raise EventStreamError("prelude CRC mismatch")
        if total < _MIN_MESSAGE:
            raise EventStreamError(f"message length {total} is below the minimum {_MIN_MESSAGE}")
        if total > self._max:
            raise EventStreamError(f"message length {total} exceeds the limit {self._max}")
        if headers_len > total - _MIN_MESSAGE:
            raise EventStreamError("headers length exceeds the message")
        return int(total)


def _decode_frame(frame: bytes) -> Message:
    (expected,) = struct.unpack_from(">I", frame, len(frame) - 4)
    if zlib.crc32(frame[:-4]) != expected:
        raise EventStreamError("message CRC mismatch")
    (headers_len,) = struct.unpack_from(">I", frame, 4)
    headers_end = _PRELUDE + headers_len
    headers = _decode_headers(frame[_PRELUDE:headers_end])
    return Message(headers, frame[headers_end:-4])


def _decode_headers(block: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    pos = 0
    try:
        while pos < len(block):
            name_len = block[pos]
            name = _take(block, pos + 1, name_len).decode("utf-8", errors="replace")
            pos += 1 + name_len
            kind = block[pos]
            pos += 1
            value: HeaderValue
            if kind == _TRUE:
                value = True
            elif kind == _FALSE:
                value = False
            elif kind in _FIXED:
                fmt = _FIXED[kind]
                (value,) = struct.unpack_from(fmt, block, pos)
                pos += struct.calcsize(fmt)
            elif kind in (_BYTES, _STRING):
                (size,) = struct.unpack_from(">H", block, pos)
                raw = _take(block, pos + 2, size)
                pos += 2 + size
                value = raw.decode("utf-8", errors="replace") if kind == _STRING else raw
            elif kind == _UUID:
                value = _take(block, pos, 16)
                pos += 16
            else:
                raise EventStreamError(f"unknown header value type {kind}")
            headers[name] = value
    except (IndexError, struct.error) as exc:
        raise EventStreamError("header block is truncated") from exc
    return headers


def _take(block: bytes, start: int, size: int) -> bytes:
    if start + size > len(block):
        raise EventStreamError("header block is truncated")
    return block[start : start + size]


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """Build one CRC-stamped frame.

    ``str`` values are sent as strings, ``bytes`` as byte arrays, ``bool`` as
    the boolean types, and ``int`` as a 32-bit int when it fits, else 64-bit.
    """
    block = bytearray()
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        if not 0 < len(raw_name) < 256:
            raise ValueError(f"header name {name!r} must be 1-255 bytes")
        block.append(len(raw_name))
        block += raw_name
        if isinstance(value, bool):
            block.append(_TRUE if value else _FALSE)
        elif isinstance(value, int):
            if -(2**31) <= value < 2**31:
                block.append(_INT)
                block += struct.pack(">i", value)
            else:
                block.append(_LONG)
                block += struct.pack(">q", value)
        else:
            raw = value.encode("utf-8") if isinstance(value, str) else value
            if len(raw) > 0xFFFF:
                raise ValueError(f"header {name!r} value is longer than 65535 bytes")
            block.append(_STRING if isinstance(value, str) else _BYTES)
            block += struct.pack(">H", len(raw))
            block += raw
    total = _MIN_MESSAGE + len(block) + len(payload)
    prelude = struct.pack(">II", total, len(block))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + bytes(block) + payload
    return body + struct.pack(">I", zlib.crc32(body))
