"""The request journal: one SQLite row per request and per attempt, written off the hot path.

`JournalSink` is a telemetry `Sink`.  On the event loop it only reads attributes: each
attempt of a request becomes a small tuple in that request's trail (keyed by the request
id the handler puts in `CURRENT_REQUEST`), and when the request ends, its event and trail
become one flat tuple of primitives on a bounded deque; nothing is decoded, formatted,
priced or redacted there.  Every `FLUSH_S` (and whenever `BATCH_ROWS` are queued) the
queued tuples are `marshal`led into one message and written, non-blocking, into a pipe to
the writer process (`journal_writer.py`), which builds the rows, decodes the usage,
prices and redacts them, writes them in one transaction, and enforces `retention` and
`max_size` when told to (at start and every `HOUSEKEEPING_S`).

Why a process and not a thread: the writer's Python (~20 µs a request) held the GIL that
the event loop needs, and sqlite3 hands the GIL over around every statement; at c16 on
two cores that cost the proxy 15-20 % of its throughput.  A process runs on the other
core and shares nothing with the loop but a pipe.  It is started with `subprocess` (a
fresh interpreter running `journal_writer.main`), not `multiprocessing`: nothing of the
proxy is inherited (no event loop, no listening socket, only the two pipes), it works the
same however hydrallm was started (console script, `-m`, a test runner) where "spawn"
re-imports the parent's `__main__`, and it needs none of multiprocessing's helpers.  It
starts at the first flush, a second after `start()`, so `serve` is ready as soon as
before; a proxy that stops sooner writes its few rows in-process while closing.

Measured (this 2-core VM, load generator and upstream on the same cores, one interleaved
run, medians; journal on vs off): the thread cost 16-22 % of c16 throughput and +1.5-2.1
ms of c1 p99; the process 16 % and +0.0-0.5 ms.  With the same loop-side work and a
writer that discards what it reads, the cost is ~7 %; with a sink that does nothing, ~0:
what remains is the writer's own ~40 µs a request (rows, usage decoding, SQLite) running
on the other vCPU, which slows the proxy's (shared caches and host) although it never
takes the proxy's CPU time (SCHED_IDLE).  Cutting the writer's work is what is left.

If the writer falls behind, the pipe and then the deque fill up; a full deque drops its
oldest rows and counts them (`dropped`, shown in the metrics and the status page): a
request is never slowed or failed by the journal.

Several worker processes share one file, each with a writer process of its own: WAL mode
lets readers and one writer work at once, and `busy_timeout` makes a writer wait its turn
for the write lock instead of failing.  Each batch is one short transaction.

If the file cannot be opened or written (corrupt, read-only, disk full), or the writer
process dies, the journal logs one line and turns itself off; the proxy goes on serving.

The file itself (schema, connections, limits): `journal_db.py`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from hydrallm.config import Config, JournalConfig, Price
from hydrallm.observe.events import CURRENT_REQUEST, AttemptEvent, Redactor, RequestEvent, Sink
from hydrallm.observe.journal_db import journal_path, open_for_writing
from hydrallm.observe.journal_pipe import WriterProcess, settings_message

__all__ = ["JournalSink", "journal_path"]

QUEUE_LIMIT = 10_000
# One message (and one transaction in the writer) per second, or per BATCH_ROWS requests
# when they come faster: each marshal + write on the loop stays well under a millisecond.
FLUSH_S = 1.0
BATCH_ROWS = 256
HOUSEKEEPING_S = 60.0
BODY_LIMIT = 64 * 1024
_PENDING_LIMIT = 10_000

# A request's trail: one tuple per attempt (see `attempt`), one list per models skipped.
_Trail = list[tuple[Any, ...] | list[str]]


class JournalSink(Sink):
    wants_usage = True

    def __init__(
        self,
        config: JournalConfig,
        *,
        prices: tuple[tuple[str, Price], ...] = (),
        secrets: frozenset[str] = frozenset(),
        worker: int = 0,
        model_names: dict[str, str] | None = None,
        report: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.path = journal_path(config)
        self.worker = worker
        # Where a reload's new config is read from (set by the process that runs the sink).
        self.config_source: Callable[[], Config] | None = None
        self._redact = Redactor(secrets)
        # Rows name the settings (prices, model names, secrets) they are written with by
        # generation; the writer receives each generation before the first row naming it.
        self._generation = 0
        self._report = report or (lambda message: None)
        self._clock = clock
        self._queue: deque[tuple[Any, ...]] = deque(maxlen=QUEUE_LIMIT)
        self._pending: dict[str, _Trail] = {}
        self.dropped = 0
        self.written = 0
        self.error: str | None = None
        self.enabled = config.enabled
        self._writer = WriterProcess(self._queue, BATCH_ROWS, self._counted, self._failed)
        self._settings = settings_message(0, prices, model_names or {}, secrets)
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
            # Opened here, not only in the writer, so that a bad file is reported before
            # the proxy is ready (and a new file gets its schema now).
            open_for_writing(self.path).close()
        except (sqlite3.Error, OSError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        c = self.config
        self._writer.send(("open", str(self.path), self.worker, c.bodies, c.max_size))
        self._writer.send(self._settings)
        self._housekeeping()
        self._started = True
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._writer.spawn(None)
            return
        self._timer = self._loop.call_later(FLUSH_S, self._tick)

    def close(self) -> None:
        """Write what is queued, let the writer finish (bounded), stop it."""
        self._stop_timer()
        if self._started and self.enabled:
            self._writer.finish()
        else:
            self._writer.stop()
        self._started = False

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
        if self._clock() - self._last_housekeeping >= HOUSEKEEPING_S:
            self._housekeeping()
        if not self._writer.spawned:
            self._writer.spawn(self._loop)
        self._writer.pump()
        if self.enabled and self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_S, self._tick)

    def _housekeeping(self) -> None:
        self._last_housekeeping = now = self._clock()
        self._writer.send(("housekeeping", now - self.config.retention))

    def _counted(self, written: int) -> None:
        self.written += written

    def _failed(self, error: str) -> None:
        """The file or the writer failed: one log line, the journal off (once)."""
        if self.error is not None:
            return
        self.enabled = False
        self._stop_timer()
        self._queue.clear()
        self._pending.clear()
        self.error = error
        self._report(f"journal {self.path} disabled: {self._redact(error)}")

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "path": str(self.path),
            "queued": len(self._queue),
            "dropped": self.dropped,
            "written": self.written,
            "error": self.error,
        }

    # --- Sink (event loop: cheap) ----------------------------------------------------------

    def _trail(self) -> _Trail | None:
        """The current request's trail so far, started on first use (None: not journaled)."""
        if not self.enabled:
            return None
        rid = CURRENT_REQUEST.get()
        if rid is None:
            return None
        pending = self._pending
        trail = pending.get(rid)
        if trail is None:
            if len(pending) >= _PENDING_LIMIT:
                # Requests whose end never came (should not happen): forget the oldest.
                del pending[next(iter(pending))]
            trail = pending[rid] = []
        return trail

    def attempt(self, event: AttemptEvent) -> None:
        trail = self._trail()
        if trail is not None:
            a = event
            trail.append(
                (
                    a.model,
                    a.model_id,
                    a.endpoint,
                    a.key,
                    a.outcome,
                    a.status,
                    a.error,
                    a.latency,
                    a.waited,
                    a.ttft,
                    a.retry,
                    a.fallback,
                )
            )

    def skipped(self, listener: str, model_ids: list[str]) -> None:
        trail = self._trail()
        if trail is not None:
            trail.append(list(model_ids))  # a list in a trail: models left out

    def reload(self, result: str, detail: str) -> None:
        """A new config serves: its prices, model names and secrets apply to the requests
        that end from now on (where the file is and its limits stay as they were)."""
        if (
            result == "success"
            and self.config_source is not None
            and self._started
            and self.enabled
        ):
            config = self.config_source()
            self._redact = Redactor(config.secrets)
            names = {mid: m.model for mid, m in config.models.items()}
            self._generation += 1
            self._writer.send(
                settings_message(self._generation, config.prices, names, config.secrets)
            )

    def request(self, event: RequestEvent) -> None:
        # The journal's work on the event loop: one flat tuple of what the event holds.
        if not self.enabled:
            return
        e = event
        usage = e.usage
        request_body = response_body = None
        if self.config.bodies:
            request_body = _bounded(e.request_body)
            response_body = _bounded(e.response_body)
        queue = self._queue
        if len(queue) >= QUEUE_LIMIT:
            self.dropped += 1  # the deque's bound lets the oldest go by itself
        queue.append(
            (
                e.request_id,
                e.started_at,
                e.listener,
                e.route,
                e.method,
                e.path,
                e.requested_model,
                e.served_model,
                e.served_by,
                e.endpoint,
                e.status,
                e.attempts,
                e.recovered,
                e.latency,
                e.streamed,
                e.body_bytes,
                e.usage_raw if usage is None else tuple(usage),
                e.error,
                e.session,
                request_body,
                response_body,
                self._generation,
                self._pending.pop(e.request_id, None),
            )
        )
        if len(queue) >= BATCH_ROWS:
            self._writer.pump()


def _bounded(body: bytes | None) -> tuple[bytes, int] | None:
    return None if body is None else (body[:BODY_LIMIT], len(body))
