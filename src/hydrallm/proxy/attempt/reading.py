"""How an attempt reads its upstream's answer before committing to it.

A non-streaming body is read whole first (up to `PRECOMMIT_BODY_LIMIT`), so that a reset
mid-body can still be retried; a stream is read until its wire format's peek gives a
verdict, through gzip or deflate when the upstream compressed it (the client gets the
bytes as they came).  And the texts an attempt reports: an error body's excerpt for the
log (inflated no further than it shows), a timeout's message.
"""

from __future__ import annotations

import zlib

from hydrallm.errors import StreamFailure
from hydrallm.formats.base import WireFormat
from hydrallm.formats.peek import Commit, Failed, Peeker
from hydrallm.proxy.upstream import Response

__all__ = [
    "DEBUG_BODY_LIMIT",
    "ERROR_BODY_LIMIT",
    "PRECOMMIT_BODY_LIMIT",
    "error_excerpt",
    "excerpt",
    "peek",
    "read_ahead",
    "timeout_message",
]

# A non-streaming 2xx body is read completely before commit (so a reset mid-body can still
# be retried) up to this size; a larger body is committed and relayed as it comes.
PRECOMMIT_BODY_LIMIT = 4 * 1024 * 1024
# How much of an upstream error body `log.include_error_body` shows, and of an outgoing
# body the debug level shows.
ERROR_LOG_LIMIT = 4096
DEBUG_BODY_LIMIT = 2048
# Error bodies kept for the client / classification are read up to this size.
ERROR_BODY_LIMIT = 1024 * 1024


async def read_ahead(response: Response, prefix: list[bytes]) -> bool:
    """Read a non-streaming body into `prefix` up to `PRECOMMIT_BODY_LIMIT`: True when
    that was all of it."""
    size = 0
    while size < PRECOMMIT_BODY_LIMIT:
        chunk = await response.read_chunk()
        if not chunk:
            return True
        prefix.append(chunk)
        size += len(chunk)
    return False


async def peek(response: Response, fmt: WireFormat, prefix: list[bytes]) -> bool:
    """Read a stream into `prefix` until its format's peek commits to it (or reads the
    provider's own final error, which the client gets as it is): True when the stream
    ended meanwhile.  A retryable failure in the stream raises `StreamFailure`.
    (br, zstd...: the registry chose passthrough, which commits at once.)"""
    inflate = _inflater(response.headers.get("Content-Encoding", ""))
    peeker = fmt.peeker()
    complete = False
    while True:
        chunk = await response.read_chunk()
        if chunk:
            prefix.append(chunk)
            verdict = _feed(peeker, inflate, chunk)
        else:
            verdict = _feed(peeker, inflate, b"", end=True) or peeker.eof()
            complete = True
        if verdict is None:
            continue
        if isinstance(verdict, Commit):
            return complete
        assert isinstance(verdict, Failed)
        if not verdict.retryable:
            # The provider's own, final answer (e.g. a validation error as an exception
            # frame): the client gets it as it is.
            return complete
        raise StreamFailure(f"{verdict.kind}: {verdict.message}")


def _inflater(encoding: str) -> zlib._Decompress | bool | None:
    """A decompressor for the peek: None when the body is not compressed, False when it is
    compressed in a way the standard library cannot read."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header, detected
    return False


def _feed(
    peeker: Peeker, inflate: zlib._Decompress | bool | None, chunk: bytes, *, end: bool = False
) -> Commit | Failed | None:
    """Feed the peek the plain bytes of `chunk` (None: no verdict yet)."""
    if inflate is None or isinstance(inflate, bool):
        return None if end else peeker.feed(chunk)
    try:
        data = inflate.flush() if end else inflate.decompress(chunk)
    except zlib.error:
        return Commit()  # cannot look inside: the client's own decoder will judge it
    return peeker.feed(data) if data else None


def error_excerpt(encoding: str, body: bytes) -> str:
    """An upstream's error body as the log shows it (`log.include_error_body`)."""
    lowered = encoding.lower()
    if "gzip" in lowered or "deflate" in lowered:
        # Inflate at most what is logged: a 1 MiB gzip of zeros is 1 GiB inflated.
        try:
            inflated = zlib.decompressobj(wbits=47).decompress(body, ERROR_LOG_LIMIT + 1)
        except zlib.error:
            return "(compressed body that could not be decompressed)"
        if len(inflated) > ERROR_LOG_LIMIT:
            shown = inflated[:ERROR_LOG_LIMIT].decode("utf-8", "replace")
            return f"{shown}… (inflated further; {len(body)} bytes compressed)"
        body = inflated
    return excerpt(body, ERROR_LOG_LIMIT)


def excerpt(body: bytes, limit: int) -> str:
    text = body[:limit].decode("utf-8", "replace")
    return text + f"… ({len(body)} bytes)" if len(body) > limit else text


def timeout_message(phase: str, sent: float, now: float) -> str:
    waited = now - sent
    what = {
        "response": "no response",
        "first_token": "no first token",
        "body": "response body not complete",
    }.get(phase, "no answer")
    return f"{what} after {waited:.1f}s"
