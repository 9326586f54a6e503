"""After the commit point: relay the rest of an upstream body to the client.

Chunks are written as they arrive (no buffering).  Silence longer than the stream idle
limit, or an upstream failure, can no longer be retried transparently: a stream we
understand is ended with a protocol-correct error event (never a silent truncation that
looks like success); any other body is cut by aborting the client connection, so the
client sees an incomplete response rather than a short one.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hydrallm.errors import UpstreamError
from hydrallm.formats.sse import DEFAULT_MAX_SIZE as MAX_LINE
from hydrallm.proxy.engine import Committed
from hydrallm.proxy.wire import StreamResponse

# What may be queued for one client, in the transport and in the kernel.  Each write waits
# (back-pressure to the upstream read) once the transport holds more than its high-water
# mark; the kernel's send buffer is fixed instead of auto-tuned, because on loopback and
# fast links Linux grows it to 4 MiB per socket, and everything written there has also
# been recorded for mid-stream recovery: 100 clients that stop reading held ~500 MiB.
WRITE_HIGH_WATER = 64 * 1024
SEND_BUFFER = 64 * 1024  # the kernel doubles it for its bookkeeping
# A chunk read from the upstream can be a few hundred KiB (all that was buffered): it is
# written in slices, each waiting for the transport to drain, so the transport never
# holds more than the high-water mark plus one slice.
WRITE_SLICE = 16 * 1024


def bound_send_queue(transport: asyncio.BaseTransport) -> None:
    """Bound the bytes queued towards one client (transport buffer and socket buffer)."""
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:
            pass  # not a socket that takes it (a test transport, a Unix pipe)


def return_freed_memory() -> None:
    """Ask the C allocator to give freed memory back to the system (glibc only).

    Buffers of streams that ended are freed, but glibc keeps the pages (its mmap threshold
    grows after large frees, so later buffers land on a heap it rarely trims): without
    this, the memory 100 slow readers used stays in the process after they leave.  Costs a
    few milliseconds, so it is called only when the last request in flight ends after a
    client left mid-stream.  A cancelled relay's buffers hang in reference cycles (the
    CancelledError's traceback holds its frames), which the cyclic collector frees only
    once enough new objects are made: an idle proxy makes none, so it is run here first.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, looked up once (`find_library` runs `ldconfig`, a subprocess:
    never per call on the event loop), or None where there is none (macOS, musl)."""
    import ctypes
    import ctypes.util

    try:
        trim: Callable[[int], int] = ctypes.CDLL(
            ctypes.util.find_library("c") or "libc.so.6"
        ).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


# Mid-stream recovery hook: given the committed attempt and the reason it broke, try to
# finish the answer (writing to the client itself); return True when it did.
Recover = Callable[[Committed, StreamResponse, str], Awaitable[bool]]


@dataclass(slots=True)
class RelayResult:
    broken: str | None  # why the upstream body broke after commit, if it did
    recovered: bool = False
    client_gone: bool = False


async def relay(
    committed: Committed,
    out: StreamResponse,
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
        # One timer for the whole relay, armed for each read and disarmed for each write
        # (a slow client is not a stalled upstream): a new `asyncio.timeout` per chunk
        # cost ~3 % of a stream's CPU in its enter/exit alone.
        timer = asyncio.timeout(None)
        try:
            async with timer:
                while True:
                    wait = idle_timeout
                    if write_deadline is not None:
                        wait = min(wait, write_deadline - loop.time())
                    timer.reschedule(loop.time() + wait)
                    try:
                        chunk = await response.read_chunk()
                    except UpstreamError as exc:
                        broken = exc.message
                        break
                    timer.reschedule(None)
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
                    await _write_bounded(out, chunk)
                timer.reschedule(None)
        except TimeoutError:
            if not timer.expired():
                raise  # not the idle timer's: as before, not a stall
            if write_deadline is not None and loop.time() >= write_deadline:
                broken = f"response exceeded write_timeout ({write_timeout:g}s)"
            else:
                broken = f"upstream stalled: no data for {idle_timeout:g}s"
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


async def _write_bounded(out: StreamResponse, chunk: bytes) -> None:
    """Write `chunk`, waiting for the client to take what is queued (back-pressure).

    StreamResponse.write() waits while the transport holds more than its high-water mark
    (the protocol's pause_writing): in slices, the transport never holds much more than
    the mark plus one slice.
    """
    if len(chunk) <= WRITE_SLICE:
        await out.write(chunk)
        return
    view = memoryview(chunk)
    for start in range(0, len(chunk), WRITE_SLICE):
        await out.write(view[start : start + WRITE_SLICE])


async def end_broken(
    committed: Committed,
    out: StreamResponse,
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
