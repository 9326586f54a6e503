"""The request journal: one SQLite row per request and per attempt, written off the hot path.

`JournalSink` is a telemetry `Sink`.  On the event loop it only keeps references: a
request's attempt and skip events in a list (keyed by the request id the handler puts in
`CURRENT_REQUEST`) and, when the request ends, its event, that list and the settings in
one tuple on a bounded deque; no row is built, nothing decoded or formatted there.  One
writer thread takes what is queued every `FLUSH_S` and writes it in one transaction with
`executemany` over a generator of rows, so it gives the GIL back between rows; it decodes
the usage, computes the cost and enforces `retention` and `max_size` (at start and every
`HOUSEKEEPING_S`).  A full queue drops its oldest rows and counts them (`dropped`, shown
in the metrics and the status page); a request is never slowed or failed by the journal.

Several worker processes share one file: WAL mode lets readers and one writer work at
once, and `busy_timeout` makes a worker wait its turn for the write lock instead of
failing.  Each batch is one short transaction, so the waits are milliseconds.

If the file cannot be opened or written (corrupt, read-only, disk full), the journal logs
one line and turns itself off; the proxy goes on serving.

The file itself (schema, connections, limits): `journal_db.py`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hydrallm.config import Config, JournalConfig, Price
from hydrallm.observe.events import CURRENT_REQUEST, AttemptEvent, Redactor, RequestEvent, Sink
from hydrallm.observe.journal_db import (
    CHUNK,
    INSERT_ATTEMPT,
    INSERT_CHUNK,
    INSERT_REQUEST,
    LAST_ROWID,
    client_api,
    housekeeping,
    journal_path,
    open_for_writing,
)
from hydrallm.observe.prices import PriceBook
from hydrallm.observe.usage import from_body

__all__ = ["JournalSink", "journal_path"]

QUEUE_LIMIT = 10_000
# Larger batches less often: one transaction and one wake-up of the writer per second.
FLUSH_S = 1.0
HOUSEKEEPING_S = 60.0
BODY_LIMIT = 64 * 1024
_PENDING_LIMIT = 10_000
_SKIPPED = "skipped_cooldown"
_NO_TOKENS = (-1, -1, -1, -1)  # not reported (NULL)


@dataclass(frozen=True, slots=True)
class _Settings:
    """What a row is written with, from the config that served its request."""

    prices: PriceBook
    model_names: dict[str, str]  # model id -> the name sent upstream
    redact: Redactor


# A finished request as queued: its event, its trail (attempt events, and tuples of the
# models left out because their circuit was open), the settings it is written with.
_Queued = tuple[RequestEvent, list[AttemptEvent | tuple[str, ...]] | None, _Settings]


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
        # Read by the writer for each row as they were when the request ended.
        self.settings = _Settings(PriceBook(prices), model_names or {}, Redactor(secrets))
        self._report = report or (lambda message: None)
        self._clock = clock
        self._queue: deque[_Queued] = deque(maxlen=QUEUE_LIMIT)
        self._pending: dict[str, list[AttemptEvent | tuple[str, ...]]] = {}
        self.dropped = 0
        self.written = 0
        self.error: str | None = None
        self.enabled = config.enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Open the file and start the writer thread (a failure disables the journal)."""
        if not self.enabled:
            return
        try:
            self._db = open_for_writing(self.path)
            self._housekeeping()
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)
            return
        self._thread = threading.Thread(target=self._run, name="hydrallm-journal", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._db is not None:
            self._db.close()
            self._db = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def _fail(self, exc: BaseException) -> None:
        self.enabled = False
        self._queue.clear()
        self._pending.clear()
        self.error = f"{type(exc).__name__}: {exc}"
        self._report(f"journal {self.path} disabled: {self.settings.redact(self.error)}")

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

    def _trail(self) -> list[AttemptEvent | tuple[str, ...]] | None:
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
            trail.append(event)

    def skipped(self, listener: str, model_ids: list[str]) -> None:
        trail = self._trail()
        if trail is not None:
            trail.append(tuple(model_ids))  # a tuple in a trail: models left out

    def reload(self, result: str, detail: str) -> None:
        """A new config serves: its prices, model names and secrets apply from now on
        (where the file is and its limits stay as they were at start)."""
        if result == "success" and self.config_source is not None:
            config = self.config_source()
            # One object swapped: a row is written with the old settings or the new, whole.
            self.settings = _Settings(
                PriceBook(config.prices),
                {mid: m.model for mid, m in config.models.items()},
                Redactor(config.secrets),
            )

    def request(self, event: RequestEvent) -> None:
        # The whole of the journal's work on the event loop: two references appended.  The
        # event is built for every sink anyway; the writer turns it into rows.
        if not self.enabled:
            return
        queue = self._queue
        if len(queue) >= QUEUE_LIMIT:
            self.dropped += 1  # the deque's bound lets the oldest go by itself
        queue.append((event, self._pending.pop(event.request_id, None), self.settings))

    # --- writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        last_housekeeping = time.monotonic()
        while True:
            stopping = self._stop.wait(FLUSH_S)
            try:
                self._flush()
                if time.monotonic() - last_housekeeping >= HOUSEKEEPING_S:
                    last_housekeeping = time.monotonic()
                    self._housekeeping()
            except (sqlite3.Error, OSError) as exc:
                self._fail(exc)
                return
            if stopping:
                return

    def _flush(self) -> None:
        db = self._db
        queue = self._queue
        if db is None or not queue:
            return
        popleft = queue.popleft
        batch = [popleft() for _ in range(len(queue))]
        attempts: list[tuple[Any, ...]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            # Rowids are given here, under the write lock no other worker holds now, so
            # that attempt rows can name their request without a lookup per row.
            (last,) = db.execute(LAST_ROWID).fetchone()
            # CHUNK rows per statement: sqlite3 lets go of the GIL around each statement
            # it runs, and every hand-over of the GIL between this thread and the event
            # loop costs both a wake-up; one per row cost more than the row.  The event
            # loop waits for at most one chunk's Python.
            rows = self._rows(batch, last, attempts)
            for _ in range(len(batch) // CHUNK):
                db.execute(INSERT_CHUNK, [v for _ in range(CHUNK) for v in next(rows)])
            db.executemany(INSERT_REQUEST, rows)  # the rest
            if attempts:
                db.executemany(INSERT_ATTEMPT, attempts)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.written += len(batch)

    def _rows(
        self, batch: list[_Queued], rowid: int, attempts: list[tuple[Any, ...]]
    ) -> Iterator[tuple[Any, ...]]:
        """The request rows of `batch` (rowids from `rowid` + 1); their attempt rows are
        added to `attempts` on the way.  No None in a row: -1 stands for NULL (see
        `journal_db.NULLABLE`)."""
        worker = self.worker
        bodies = self.config.bodies
        for event, trail, st in batch:
            rowid += 1
            retries = fallbacks = skips = 0
            key: str | int = -1
            ttft = -1.0
            served_ms = -1.0
            first = trail[0] if trail is not None and len(trail) == 1 else None
            if (
                type(first) is AttemptEvent
                and first.outcome == "success"
                and not first.waited
                and first.status == event.status
                and first.model_id == event.served_by
                and first.endpoint == event.endpoint
                and (first.model == event.served_model or first.model == "*")
            ):
                # Served by its first try: the request row tells that attempt whole.
                key = first.key or -1
                if first.ttft is not None:
                    ttft = round(first.ttft * 1000, 2)
                served_ms = round(first.latency * 1000, 2)
            elif trail:
                requested = event.requested_model or -1
                redact = st.redact
                n = 0
                for a in trail:
                    if type(a) is tuple:  # models left out: their circuit was open
                        for skipped in a:
                            n += 1
                            attempts.append(
                                (rowid, n, -1, skipped, -1, -1, _SKIPPED, -1, -1, -1, -1)
                            )
                        skips += len(a)
                        continue
                    assert isinstance(a, AttemptEvent)
                    n += 1
                    retries += a.retry
                    fallbacks += a.fallback
                    if a.outcome == "success":
                        key = a.key or -1
                        if a.ttft is not None:
                            ttft = round(a.ttft * 1000, 2)
                    status = a.status
                    error = a.error
                    attempts.append(
                        (
                            rowid,
                            n,
                            requested if a.model == "*" else a.model,
                            a.model_id,
                            a.endpoint,
                            a.key or -1,
                            a.outcome,
                            -1 if status is None else status,
                            -1 if error is None else redact(error),
                            round(a.latency * 1000, 2),
                            round(a.waited * 1000, 2),
                        )
                    )
            usage = event.usage
            if usage is None and event.usage_raw is not None:
                usage = from_body(event.usage_raw)
            served_model = event.served_model
            model_id = event.served_by
            if usage is None:
                tokens: tuple[int, ...] = _NO_TOKENS
                cost = -1.0
            else:
                tokens = (
                    _number(usage.input_tokens),
                    _number(usage.output_tokens),
                    _number(usage.cache_read_tokens),
                    _number(usage.cache_write_tokens),
                )
                found = st.prices.cost(model_id, served_model, usage)
                cost = -1.0 if found is None else found
            error = event.error
            req_body: str | int = -1
            resp_body: str | int = -1
            if bodies:
                req_body = _body(event.request_body, st)
                resp_body = _body(event.response_body, st)
            yield (
                rowid,
                event.request_id,
                event.started_at,
                worker,
                event.listener,
                event.route,
                client_api(event.path),
                event.method,
                event.path,
                event.requested_model or -1,
                served_model or -1,
                model_id or -1,
                event.endpoint or -1,
                key,
                event.status,
                event.attempts,
                retries,
                fallbacks,
                skips,
                event.recovered or -1,
                round(event.latency * 1000, 2),
                ttft,
                int(event.streamed),
                event.body_bytes,
                *tokens,
                cost,
                -1 if error is None else st.redact(error),
                event.session or -1,
                req_body,
                resp_body,
                served_ms,
            )

    def _housekeeping(self) -> None:
        if self._db is not None:
            housekeeping(
                self._db,
                cutoff=self._clock() - self.config.retention,
                max_size=self.config.max_size,
            )


def _number(value: int | None) -> int:
    return -1 if value is None else value


def _body(body: bytes | None, st: _Settings) -> str | int:
    if not body:
        return -1  # NULL
    text = body[:BODY_LIMIT].decode("utf-8", "replace")
    if len(body) > BODY_LIMIT:
        text += f"… ({len(body)} bytes)"
    return st.redact(text)
