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
# By (status, reason): the reason a handler passes is most often None or the standard one.
_STATUS_LINES = {
    (code, reason): f"HTTP/1.1 {code} {phrase}\r\n"
    for code, phrase in _REASONS.items()
    for reason in (None, phrase)
}
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


def request_headers(fields: list[bytes], version: str) -> tuple[CIMultiDict[str], list[str]]:
    """The headers of a request head as llhttp delivered them (names and values
    alternating), checked and decoded; and their names in lower case, in order.

    Decoded in one piece: llhttp lets no CR or LF into a name or value and only token
    characters into a name, so the fields joined by LF decode and split back exactly
    (UTF-8 never takes an ASCII byte into an invalid sequence), in a few C calls instead
    of several per header."""
    if len(fields) > 2 * MAX_HEADERS:
        raise BadRequest(f"more than {MAX_HEADERS} headers")
    if not fields:
        if version != "1.0":
            raise BadRequest("the request has no Host header")
        return CIMultiDict(), []
    joined = b"\n".join(fields)
    if len(joined) > MAX_FIELD and max(map(len, fields)) > MAX_FIELD:
        raise BadRequest(f"a header name or value is longer than {MAX_FIELD} bytes")
    text = joined.decode("utf-8", "surrogateescape")
    parts = text.split("\n")
    if " \n" in text or "\t\n" in text or text[-1] in " \t":
        # llhttp strips the whitespace before a value, not after it (RFC 9110 §5.5).
        parts[1::2] = [v.rstrip(" \t") for v in parts[1::2]]
    # From a list: multidict builds from one faster than from an iterator.  (Names and
    # values alternate by construction: no strict check needed.)
    headers = CIMultiDict(list(zip(parts[::2], parts[1::2], strict=False)))
    lowered = text.lower().split("\n")[::2]
    names = set(lowered)
    if version != "1.0" and "host" not in names:
        raise BadRequest("the request has no Host header")
    if len(names) != len(lowered):  # a name repeats: refuse it if it must not
        for name in _SINGLETONS:
            if len(headers.getall(name, ())) > 1:
                raise BadRequest(f"more than one {name} header")
    if "transfer-encoding" in names:
        te = headers["Transfer-Encoding"]
        if te.strip(" \t").lower() != "chunked":
            raise BadRequest(f"Transfer-Encoding {te[:40]!r} is not supported; only chunked is")
    return headers, lowered


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
    line = _STATUS_LINES.get((status, reason))
    line_ok = True
    if line is None:
        line = f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Unknown')}\r\n"
        line_ok = line.count("\n") == 1
    n = len(headers)
    block = "\r\n".join(map(": ".join, headers))
    if not line_ok or block.count("\n") != n - 1 or block.count("\r") != n - 1:
        # A CR or LF inside a value or reason would start a header line of its own.
        line = line[:-2].translate(_CTL) + "\r\n"
        block = "\r\n".join(f"{k.translate(_CTL)}: {v.translate(_CTL)}" for k, v in headers)
    if n:
        block += "\r\n"
    low = block.lower()
    date = "" if low[:5] == "date:" or "\ndate:" in low else dates.line()
    return f"{line}{block}{framing}{date}\r\n".encode("utf-8", "surrogateescape")
