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

from hydrallm.dataclass import dataclass
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


class _Stall:
    """The relay's read deadline, checked lazily.

    `arm()` per read only records the deadline; one timer (made at most once per deadline
    span, not per read) looks at it when it fires: a read still pending past its deadline
    has its task cancelled, as `asyncio.timeout` would, and `expired()` then says so
    (uncancelling the task, so an outside cancellation is still seen as one).  Deadlines
    only move forward, so a timer never fires later than the deadline it guards.
    """

    __slots__ = ("_fired", "_handle", "_loop", "_task", "deadline")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task = asyncio.current_task()
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False
        self.deadline: float | None = None  # the pending read's, in loop time; None: none

    def arm(self, deadline: float) -> None:
        self.deadline = deadline
        if self._handle is None:
            self._handle = self._loop.call_at(deadline, self._check)

    def _check(self) -> None:
        self._handle = None
        deadline = self.deadline
        if deadline is None:
            return  # no read pending: the next arm() sets a timer again
        if self._loop.time() < deadline:
            self._handle = self._loop.call_at(deadline, self._check)
            return
        if self._task is not None:
            self._fired = True
            self._task.cancel()

    def expired(self) -> bool:
        """Did this deadline cancel the task (and nothing else)?"""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() == 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


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
        # The read deadline is kept lazily (`_Stall`): a read sets a number, not a timer;
        # an `asyncio.timeout` rescheduled around every read cost ~5 % of a stream's CPU.
        # A slow client is not a stalled upstream: writes run with no deadline.
        stall = _Stall(loop)
        try:
            while True:
                wait = idle_timeout
                if write_deadline is not None:
                    wait = min(wait, write_deadline - loop.time())
                stall.arm(loop.time() + wait)
                try:
                    chunk = await response.read_chunk()
                except UpstreamError as exc:
                    broken = exc.message
                    break
                except asyncio.CancelledError:
                    if not stall.expired():
                        raise
                    if write_deadline is not None and loop.time() >= write_deadline:
                        broken = f"response exceeded write_timeout ({write_timeout:g}s)"
                    else:
                        broken = f"upstream stalled: no data for {idle_timeout:g}s"
                    break
                stall.deadline = None
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
        finally:
            stall.close()
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
