"""Request and response heads for h1server: the checks a request head must pass, and
the bytes of a response head.

Request heads keep aiohttp's limits and rules (what clients met before): the target and
each header field at most 8,190 bytes, at most 128 headers, Host required on HTTP/1.1,
no repeated singleton header, no Transfer-Encoding but chunked.  llhttp itself refuses
ambiguous framing (CL+TE, two Content-Lengths), bare CR/LF, NUL and obs-fold.

Response heads are built with one join; a CR or LF inside a value or reason is removed
rather than allowed to start a header line of its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from http import HTTPStatus
from itertools import chain

from multidict import CIMultiDict

__all__ = [
    "MAX_FIELD",
    "MAX_HEAD",
    "MAX_HEADERS",
    "MAX_LINE",
    "TIMEOUT_RESPONSE",
    "BadRequest",
    "DateCache",
    "bad_request",
    "request_headers",
    "response_head",
]

MAX_LINE = 8190  # the request target (aiohttp's max_line_size)
MAX_FIELD = 8190  # one header name or value (aiohttp's max_field_size)
MAX_HEADERS = 128  # aiohttp's max_headers
MAX_HEAD = MAX_HEADERS * MAX_FIELD  # bytes of one head, whatever its shape

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
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Connection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 46\r\n"
    b"\r\n"
    b"hydrallm: request head not complete in time.\r\n"
)
SERVER_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)


class BadRequest(Exception):
    """A request that is not acceptable HTTP (the message is for the client and the log)."""


def request_headers(raw: list[tuple[bytes, bytes]], version: str) -> CIMultiDict[str]:
    """The headers of a request head as llhttp delivered them, checked and decoded."""
    if len(raw) > MAX_HEADERS:
        raise BadRequest(f"more than {MAX_HEADERS} headers")
    if raw and max(map(len, chain.from_iterable(raw))) > MAX_FIELD:
        raise BadRequest(f"a header name or value is longer than {MAX_FIELD} bytes")
    # llhttp strips the whitespace before a value, not after it (RFC 9110 §5.5).
    headers = CIMultiDict(
        [(n.decode("latin-1"), v.rstrip(b" \t").decode("utf-8", "surrogateescape")) for n, v in raw]
    )
    names = {n.lower() for n, _ in raw}
    if version != "1.0" and b"host" not in names:
        raise BadRequest("the request has no Host header")
    if len(names) != len(raw):  # a name repeats: refuse it if it must not
        for name in _SINGLETONS:
            if len(headers.getall(name, ())) > 1:
                raise BadRequest(f"more than one {name} header")
    te = headers.get("Transfer-Encoding")
    if te is not None and te.strip(" \t").lower() != "chunked":
        raise BadRequest(f"Transfer-Encoding {te[:40]!r} is not supported; only chunked is")
    return headers


def bad_request(message: str) -> bytes:
    """The whole 400 answer to a request that could not be parsed."""
    body = f"hydrallm: bad request: {message}\n".encode("utf-8", "replace")
    return (
        b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


class DateCache:
    """The `Date` header line, made once per second."""

    __slots__ = ("_at", "_line")

    def __init__(self) -> None:
        self._line = ""
        self._at = -1

    def line(self) -> str:
        now = int(time.time())
        if now != self._at:
            t = time.gmtime(now)
            self._line = (
                f"Date: {_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon]} {t.tm_year}"
                f" {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT\r\n"
            )
            self._at = now
        return self._line


def response_head(
    status: int,
    reason: str | None,
    headers: Sequence[tuple[str, str]],
    framing: str,
    dates: DateCache,
) -> bytes:
    """Status line, headers, `framing` (Content-Length / Transfer-Encoding / Connection
    lines, each ending in CRLF) and a Date unless the headers carry one."""
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
    date = "" if low.startswith("date:") or "\ndate:" in low else dates.line()
    return f"{line}{block}{framing}{date}\r\n".encode("utf-8", "surrogateescape")
