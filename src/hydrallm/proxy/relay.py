"""After the commit point: relay the rest of an upstream body to the client.

Chunks are written as they arrive (no buffering).  Silence longer than the stream idle
limit, or an upstream failure, can no longer be retried transparently: a stream we
understand is ended with a protocol-correct error event (never a silent truncation that
looks like success); any other body is cut by aborting the client connection, so the
client sees an incomplete response rather than a short one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from hydrallm.errors import UpstreamError
from hydrallm.formats.sse import DEFAULT_MAX_SIZE as MAX_LINE
from hydrallm.proxy.engine import Committed

# Mid-stream recovery hook: given the committed attempt and the reason it broke, try to
# finish the answer (writing to the client itself); return True when it did.
Recover = Callable[[Committed, web.StreamResponse, str], Awaitable[bool]]


@dataclass(slots=True)
class RelayResult:
    broken: str | None  # why the upstream body broke after commit, if it did
    recovered: bool = False
    client_gone: bool = False


async def relay(
    committed: Committed,
    out: web.StreamResponse,
    *,
    idle_timeout: float,
    abort_client: Callable[[], None],
    write_timeout: float | None = None,
    draining: Callable[[], bool] = lambda: False,
    observe: Callable[[bytes], None] | None = None,
    recover: Recover | None = None,
) -> RelayResult:
    """Write the held prefix and then the rest of the upstream body to `out`."""
    response = committed.response
    broken: str | None = None
    try:
        for chunk in committed.prefix:
            if observe is not None:
                observe(chunk)
            await out.write(chunk)
        if committed.complete:
            return RelayResult(None)
        loop = asyncio.get_running_loop()
        # Length of the line being relayed: one with no end past MAX_LINE ends the stream
        # (an endless line is no answer, and the client's SDK would buffer it forever).
        # Streams made of text lines (SSE) only.
        fmt = committed.format
        line = 0 if fmt is not None and fmt.codec == "sse" else None
        # write_timeout bounds the whole response once it has started (as the original).
        write_deadline = loop.time() + write_timeout if write_timeout else None
        while True:
            wait = idle_timeout
            if write_deadline is not None:
                wait = min(wait, write_deadline - loop.time())
            try:
                async with asyncio.timeout(wait):
                    chunk = await response.read_chunk()
            except TimeoutError:
                if write_deadline is not None and loop.time() >= write_deadline:
                    broken = f"response exceeded write_timeout ({write_timeout:g}s)"
                else:
                    broken = f"upstream stalled: no data for {idle_timeout:g}s"
                break
            except UpstreamError as exc:
                broken = exc.message
                break
            if not chunk:
                break
            if line is not None:
                end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
                line = line + len(chunk) if end < 0 else len(chunk) - end - 1
                if line > MAX_LINE:
                    broken = f"the upstream sent a line longer than {MAX_LINE // 1024} KiB"
                    recover = None  # not a break another model could mend
                    break
            if observe is not None:
                observe(chunk)
            await out.write(chunk)
    except (ConnectionResetError, ConnectionError):
        response.abort()
        return RelayResult(None, client_gone=True)
    except asyncio.CancelledError:
        response.abort()
        if draining() and committed.format is not None:
            # Shutdown grace ran out: end the stream in a way the client's SDK reports,
            # rather than a silent cut.  The write only fills the transport buffer.
            try:
                await out.write(
                    committed.format.error_event("hydrallm: the proxy is shutting down")
                )
            except BaseException:
                pass
        raise
    if broken is None:
        response.release()
        return RelayResult(None)
    response.abort()
    if recover is not None and await recover(committed, out, broken):
        return RelayResult(broken, recovered=True)
    if draining():
        broken = "the proxy is shutting down"
    await end_broken(committed, out, broken, abort_client)
    return RelayResult(broken)


async def end_broken(
    committed: Committed,
    out: web.StreamResponse,
    reason: str,
    abort_client: Callable[[], None],
) -> None:
    """End a committed body whose upstream broke: an error event, or a cut connection."""
    encoded = committed.response.headers.get("Content-Encoding", "identity").lower()
    fmt = committed.format
    if fmt is not None and fmt.writes_errors and encoded in ("", "identity"):
        try:
            await out.write(fmt.error_event(gave_up_message(reason)))
        except (ConnectionError, RuntimeError):
            pass
        return
    # No in-band way to say it: make the truncation visible as a transport error.
    abort_client()


def gave_up_message(reason: str) -> str:
    """What the client reads when a broken answer cannot be finished: plain words, no
    library exception text."""
    if reason.startswith("upstream error event: "):
        cause = "the upstream reported an error: " + reason.removeprefix("upstream error event: ")
    elif reason.startswith(("upstream body broken", "connection error", "upstream closed")):
        cause = "the upstream connection broke"
    else:
        cause = reason
    return (
        f"hydrallm: upstream stream failed ({cause}) and the answer could not be finished. "
        "The partial answer received so far is incomplete."
    )
