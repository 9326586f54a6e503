"""The request journal: one SQLite row per request and per attempt, written off the hot path.

`JournalSink` is a telemetry `Sink`.  On the event loop, per request: the handler keeps
the request's steps (each attempt's values as a plain tuple, the models a cooldown left
out) on the request's `Labels`, and hands them over in `RequestEvent.trail`; when the
request ends, the values its event is made from are queued as they are (`request`: they
are the row), onto a bounded deque; only a row with an error (redacted so that no secret
is ever written to a file) or bodies is made there.  Every `BATCH_ROWS` requests, and
every `FLUSH_S`, the batch is encoded into one frame (a C call, no Python a row: as
`marshal` writes it) and appended to the spool (`journal_spool.py`): one `write`.  Nothing
is decoded, formatted or priced on the loop.  Where the optional C module is built
(`rowcodec`), the usual row's queuing, the usage slice and the encoding run in it.
(A batch once made its rows in Python when spooled: 256 rows cold in the cache took
0.5-0.9 ms in one piece, and the request that arrived meanwhile waited for it.)

The rows are built and written into SQLite by the writer process (`journal_writer.py`):
at once while the proxy is quiet (at most `LIGHT` requests in the last second: a person
with a coding agent), and while it is busy, only when it becomes quiet again or the spool
passes `FORCE_BYTES`.  A busy proxy that turns quiet hands the writer its backlog; the
first request after that says "hold", and the writer stops after the transaction it is
in.  Anyone who reads the journal (`hydrallm log`, `usage`, the status page's charts)
loads what is pending first.  So the journal's work runs when the machine has time for
it, and is never lost: a stopped or killed proxy leaves its segments, which the next
writer or reader loads.

Why this shape, by measurement (this 2-core VM, load generator and upstream on the same
cores, interleaved, medians; journal on vs off): a writer thread in the proxy cost 16-22 %
of c16 throughput and +1.5-2.1 ms of c1 p99 (its Python held the GIL the event loop
needs); a writer process fed through a pipe, 16 % and +0.2 ms (its ~30 µs a request on
the other vCPU still slowed the proxy's: shared caches and host); spooling and loading
later: see bench/RESULTS.md.  A process, not a thread, loads the spool so that a proxy
that is quiet but then gets a request never waits for the GIL; it is started with
`subprocess` (a fresh interpreter running `journal_writer.main`), not `multiprocessing`:
nothing of the proxy is inherited (no event loop, no listening socket, only two pipes),
and it starts at the first flush, a second after `start()`, so `serve` is ready as soon
as before; a proxy that stops sooner loads its few rows in-process while closing.

If the spool holds more than the journal may (`max_size`; the writer has died or cannot
keep up), new rows are dropped and counted (`dropped`, shown in the metrics and the
status page): a request is never slowed or failed by the journal.

Several worker processes share one file, each with a spool segment and a writer of its
own: WAL mode lets readers and one writer work at once, and `busy_timeout` makes a writer
wait its turn for the write lock instead of failing.  Each load step is one short
transaction.

If the file cannot be opened or written (corrupt, read-only, disk full), or the writer
process dies, the journal logs one line and turns itself off; the proxy goes on serving.

The file itself (schema, connections, limits): `journal_db.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from hydrallm.config import Config, JournalConfig, Price
from hydrallm.observe.events import Redactor, RequestEvent, Sink, TrailStep
from hydrallm.observe.journal_db import journal_path, open_for_writing
from hydrallm.observe.journal_pipe import WriterProcess
from hydrallm.observe.journal_spool import (
    SpoolWriter,
    frame,
    frame_data,
    pending_bytes,
    settings_message,
    spool_dir,
)
from hydrallm.observe.rowcodec import Appender, rows_message

__all__ = ["JournalSink", "journal_path"]

# One frame appended a second, or one per BATCH_ROWS requests when they come faster: each
# marshal + write on the loop stays well under a millisecond (see `_batch_full`).
FLUSH_S = 1.0
BATCH_ROWS = 256
QUEUE_LIMIT = 40 * BATCH_ROWS  # a multiple of it (see `_batch_full`)
LIGHT = 50  # requests in the last second up to which the writer loads at once
FORCE_BYTES = 32 << 20  # spooled bytes (~100,000 requests) loaded however busy the proxy
HOUSEKEEPING_S = 60.0
LOAD_AT_CLOSE_S = 2.0  # a stopping proxy loads its spool for this long (~80,000 requests)
BODY_LIMIT = 64 * 1024


class JournalSink(Sink):
    wants_usage = True
    plain_request = True  # `request` gets the event's values as they were made

    def __init__(
        self,
        config: JournalConfig,
        *,
        prices: tuple[tuple[str, Price], ...] = (),
        secrets: frozenset[str] = frozenset(),
        worker: int = 0,
        report: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.path = journal_path(config)
        self.worker = worker
        # Where a reload's new config is read from (set by the process that runs the sink).
        self.config_source: Callable[[], Config] | None = None
        self._redact = Redactor(secrets)
        self._report = report or (lambda message: None)
        self._clock = clock
        # The rows of ended requests (`request`), until they are spooled.
        # (With the C module the usual row is queued encoded, as bytes: `Appender`.)
        self._rows: deque[Any] = deque(maxlen=QUEUE_LIMIT)
        self._full = False  # the queue is full: each new row lets the oldest go
        self.dropped = 0
        self.written = 0
        self.error: str | None = None
        self.enabled = config.enabled
        # `request` in C for the usual row, when the C module is built (rowcodec.Appender).
        self._appender = (
            Appender(self._rows, BATCH_ROWS, self._batch_full, self._request_slow)
            if Appender is not None
            else None
        )
        self._writer = WriterProcess(self._replied, self._failed)
        self._header = frame(settings_message(prices, worker))
        self._spool = SpoolWriter(spool_dir(self.path), lambda: self._header)
        self._backlog = 0  # bytes of closed segments the writer has not loaded
        self._taken = 0  # requests spooled since the last tick
        self._flush_soon = False  # a flush is scheduled (call_soon)
        self._loading = False  # the writer was asked to load and has not said it is idle
        self._catching_up = False  # ... a backlog of a busy time: the next request holds it
        self._plain_again()  # (sets `_plain`, the flag `request` reads first)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_housekeeping = 0.0
        self._started = False

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Check that the file can be used (a failure disables the journal), and start the
        writer: at the first flush under a running event loop, at once without one."""
        if not self.enabled:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            problem = self._check_file()
            if problem is not None:
                self._failed(problem)
                return
        c = self.config
        self._writer.send(("open", str(self.path), c.max_size, str(self._spool.directory)))
        self._backlog = pending_bytes(self._spool.directory)  # a stopped proxy's, if any
        self._housekeeping()
        self._started = True
        if self._loop is None:
            self._writer.spawn(None)
            return
        # Checked beside the rest of the startup, not before it: creating a journal costs
        # tens of milliseconds of disk syncs.  A bad file is still reported once, a moment
        # after the proxy is ready, and the journal turned off; no request waits for it.
        checked = self._loop.run_in_executor(None, self._check_file)
        checked.add_done_callback(self._checked)
        self._timer = self._loop.call_later(FLUSH_S, self._tick)

    def _check_file(self) -> str | None:
        import sqlite3

        try:
            # Opened here, not only in the writer, so that a bad file is reported at once
            # (and a new file gets its schema now).
            open_for_writing(self.path).close()
        except (sqlite3.Error, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _checked(self, future: asyncio.Future[str | None]) -> None:
        problem = None if future.cancelled() else future.result()
        if problem is not None:
            self._failed(problem)

    def close(self) -> None:
        """Spool what is queued, stop the writer, load the spool here for up to
        `LOAD_AT_CLOSE_S`; what is not loaded by then stays spooled for the next writer
        or reader.  Here, not in the writer: at its CPU priority a loaded machine could
        starve it for seconds, and a stopping proxy serves nobody whose GIL it could take."""
        self._stop_timer()
        if not (self._started and self.enabled):
            self._writer.stop()
            self._started = False
            return
        self._started = False
        self.flush()
        try:
            self._spool.rotate()
        except OSError as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
        self._writer.send(("hold",))  # a writer that is loading stops after its step
        self._writer.finish()
        if self.enabled:
            self._load_here(time.monotonic() + LOAD_AT_CLOSE_S)

    def _load_here(self, deadline: float) -> None:
        import sqlite3

        from hydrallm.observe.journal_spool import ingest
        from hydrallm.observe.journal_writer import Writer

        try:
            writer = Writer(str(self.path), self.config.max_size)
        except (sqlite3.Error, OSError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        try:
            ingest(
                writer,
                self._spool.directory,
                stop=lambda: time.monotonic() > deadline,
                written=self._counted,
            )
            # Retention and the size limit hold after what was just loaded (and even if
            # the writer, at its priority, never got to them on a busy machine).
            writer.housekeeping(self._clock() - self.config.retention)
        except Exception as exc:  # as the writer process reports it
            self._failed(f"{type(exc).__name__}: {exc}")
        finally:
            writer.close()

    async def aclose(self) -> None:
        self._stop_timer()
        self._writer.detach()  # the loop lets go of the pipes; close() drains them
        await asyncio.to_thread(self.close)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if not self.enabled:
            return
        ended, self._taken = self._taken + len(self._rows), 0
        if self._clock() - self._last_housekeeping >= HOUSEKEEPING_S:
            self._housekeeping()
        if not self._writer.spawned:
            self._writer.spawn(self._loop)
        self.flush()
        pending = self._spool.size + self._backlog
        if self.enabled and pending and not self._loading:
            if ended <= LIGHT:
                self._load(catch_up=ended > 0 or pending > LIGHT * 1024)
            elif pending >= FORCE_BYTES:
                self._load(catch_up=False)
        if self.enabled and self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_S, self._tick)

    def _flush_later(self) -> None:
        self._flush_soon = False
        self.flush()

    def flush(self) -> None:
        """Append what is queued to the spool, as one frame."""
        if not self._rows or not self.enabled:
            return
        count = len(self._rows)
        message = self._take()
        if self._spool.size + self._backlog > self.config.max_size:
            # The writer is far behind (or gone): the spool holds no more than the file may.
            self.dropped += count
            return
        try:
            data = frame_data(rows_message(message[1]))
        except ValueError as exc:  # a value `marshal` cannot write: a bug, not the file's
            self.dropped += count
            self._report(f"journal: {count} requests not written: {exc}")
            return
        try:
            self._spool.append(data)
        except OSError as exc:
            self._failed(f"{type(exc).__name__}: {exc}")

    def _take(self) -> tuple[str, list[Any]]:
        """The queued rows as a "rows" message (`journal_spool.rows_of` reads it,
        `rowcodec.rows_message` writes it: a row is its values, or the bytes `Appender`
        encoded them to); the queue emptied."""
        rows = self._rows
        message = ("rows", list(rows))
        self._taken += len(rows)
        rows.clear()
        self._full = False
        return message

    def _load(self, *, catch_up: bool) -> None:
        """Ask the writer to load everything spooled; `catch_up`: the first request from
        now on tells it to hold."""
        try:
            self._spool.rotate()
        except OSError as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        self._loading = True
        self._catching_up = catch_up
        self._plain_again()
        self._writer.send(("ingest",))

    def _hold(self) -> None:
        self._catching_up = False
        self._plain_again()
        self._writer.send(("hold",))

    def _plain_again(self) -> None:
        """A request's row may be queued as it is (`request`) when the journal is on, has
        no writer to tell to hold, and writes no bodies."""
        self._set_plain(self.enabled and not self._catching_up and not self.config.bodies)

    def _set_plain(self, plain: bool) -> None:
        self._plain = plain
        if self._appender is not None:
            self._appender.plain = plain

    def plain_handler(self) -> Callable[[tuple[Any, ...]], None]:
        return self._appender if self._appender is not None else self.request

    def _replied(self, message: tuple[Any, ...]) -> None:
        if message[0] == "written":
            self.written += message[1]
        elif message[0] == "idle":
            self._backlog = message[1]
            self._loading = self._catching_up = False
            self._plain_again()

    def _housekeeping(self) -> None:
        self._last_housekeeping = now = self._clock()
        self._writer.send(("housekeeping", now - self.config.retention))

    def _counted(self, written: int) -> None:
        self.written += written

    async def settle(self, timeout: float = 2.0) -> None:
        """For a reader in this process: spool what is queued and have the writer load
        it all (waiting up to `timeout`; a writer that cannot keep up leaves the rest)."""
        if not (self._started and self.enabled):
            return
        if not self._writer.spawned:
            self._writer.spawn(self._loop)
        self.flush()
        if not self._loading:
            self._load(catch_up=False)
        deadline = time.monotonic() + timeout
        while self._loading and self.enabled and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _failed(self, error: str) -> None:
        """The file or the writer failed: one log line, the journal off (once)."""
        if self.error is not None:
            return
        self.enabled = False
        self._set_plain(False)
        self._stop_timer()
        self._rows.clear()
        self._full = False
        self._loading = self._catching_up = False
        try:
            self._spool.rotate()
        except OSError:
            pass
        self.error = error
        self._report(f"journal {self.path} disabled: {self._redact(error)}")

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "path": str(self.path),
            "queued": len(self._rows),
            "spooled_bytes": self._spool.size + self._backlog,
            "dropped": self.dropped,
            "written": self.written,
            "error": self.error,
        }

    # --- Sink (event loop: cheap) ----------------------------------------------------------

    def reload(self, result: str, detail: str) -> None:
        """A new config serves: its prices and secrets apply to the requests that end from
        now on (where the file is and its limits stay as they were).  Its prices start a
        new spool segment."""
        if (
            result == "success"
            and self.config_source is not None
            and self._started
            and self.enabled
        ):
            config = self.config_source()
            self.flush()  # the requests so far, priced as before
            try:
                self._spool.rotate()
            except OSError as exc:
                self._failed(f"{type(exc).__name__}: {exc}")
                return
            self._redact = Redactor(config.secrets)
            self._header = frame(settings_message(config.prices, self.worker))

    def request(self, e: RequestEvent | tuple[Any, ...]) -> None:
        """The journal's work on the event loop per request: the values the handler made
        the request's event from (or the event) are queued as they are: they are the row,
        the trail already plain tuples (a first try that answered is no step but four
        values of the row, its model the request's).  The batch is encoded whole when it
        is spooled (`rowcodec.encode`: C, or `marshal` after each row is made a plain
        tuple).  With the C module, Telemetry calls `rowcodec.Appender` instead of this
        method (`plain_handler`): the same, less the Python call.
        Only a row that holds what is not written as it is (an error to redact, in it or
        in its trail; bodies) is made here, and the first request after a busy time's
        backlog went to the writer tells it to hold (`_plain` is off meanwhile).

        The usual row holds strings and numbers only, no list or tuple: the cyclic
        collector's count of live containers is raised by each one made and kept, and a
        pass runs at 700; rows queued with their trail's list and step (three containers
        a request) made one pass every ~230 requests, each walking the queue and moving it
        to an older generation (measured at c16: 0.8-1.1 % of the proxy's CPU in the
        collector, 0.2 % with one container a row; bench/RESULTS.md, eighth session).  A row that is only strings and
        numbers is also dropped from the collector's view by its first pass."""
        # By position: a NamedTuple's field by name is a descriptor call.
        queue = self._rows
        if self._plain and e[17] is None and e[21] is None:
            queue.append(e)  # the usual request: no trail (a first try), nothing to redact
            if not len(queue) % BATCH_ROWS:
                self._batch_full()
        else:
            self._request_slow(e)

    def _request_slow(self, e: RequestEvent | tuple[Any, ...]) -> None:
        """`request` for any other row (and `Appender`'s `slow`): made anew (`_fixed`);
        the first request after a backlog went to the writer tells it to hold."""
        if not self.enabled:
            return
        if self._catching_up:
            self._hold()
        queue = self._rows
        queue.append(self._fixed(e))
        if not len(queue) % BATCH_ROWS:
            self._batch_full()

    def _batch_full(self) -> None:
        """Every `BATCH_ROWS` rows: spool the batch.  A request alone (c1) is followed by
        the next, which waits for the spooling: a long batch makes that rarer (p99).  A
        long batch is also cheaper a row: `marshal` puts every object another reference
        holds in a table, and the status page keeps the last 50 requests' events, which
        hold the same values (callgrind, c16: 32 rows a batch, 1.7k instructions a row more
        than 256, and no fewer cache misses; 512 no cheaper).  (A full queue, the writer
        far behind, lets its oldest row go at each request: counted here.)"""
        n = len(self._rows)
        if n == QUEUE_LIMIT:
            if self._full:
                self.dropped += 1
            self._full = True
        if self._started and not self._flush_soon:
            if self._loop is None:
                self.flush()
            else:
                # After the task that ended this request has written its answer, not
                # before: the flush is not added to this request's latency.
                self._flush_soon = True
                self._loop.call_soon(self._flush_later)

    def _fixed(self, e: RequestEvent | tuple[Any, ...]) -> tuple[Any, ...]:
        """A request's row when its event holds what is not written as it is: an error
        (redacted, in the row and in its trail), bodies (`bodies = true`: bounded and
        redacted; never written otherwise)."""
        bodies = self.config.bodies
        steps: list[TrailStep] | None = e[21]
        return (
            *e[:17],
            e[17] if e[17] is None else self._redact(e[17]),
            e[18],
            self._body(e[19]) if bodies else None,
            self._body(e[20]) if bodies else None,
            [self._step(s) for s in steps] if steps else None,
            *e[22:],
        )

    def _step(self, step: TrailStep) -> TrailStep:
        """A step of a trail with its error redacted."""
        if len(step) < 12 or step[6] is None:  # models left out; no error
            return step
        return (*step[:6], self._redact(step[6]), *step[7:])

    def _body(self, body: bytes | None) -> str | None:
        """A body as the proxy sent it (`bodies = true`, for debugging): its first
        `BODY_LIMIT` bytes, its whole length, every configured secret redacted."""
        if not body:
            return None
        text = body[:BODY_LIMIT].decode("utf-8", "replace")
        if len(body) > BODY_LIMIT:
            text += f"… ({len(body)} bytes)"
        return self._redact(text)
