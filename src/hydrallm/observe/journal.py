"""The request journal: one SQLite row per request and per attempt, written off the hot path.

`JournalSink` is a telemetry `Sink`.  On the event loop it only gathers a request's
attempt, skip and recovery events (keyed by the request id the handler puts in
`CURRENT_REQUEST`) and, when the request ends, appends one tuple to a bounded deque.  One
writer thread takes what is queued every `FLUSH_S` and writes it in one transaction; it
also computes the cost and enforces `retention` and `max_size` (at start and every
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hydrallm.config import Config, JournalConfig, Price
from hydrallm.observe.events import CURRENT_REQUEST, AttemptEvent, Redactor, RequestEvent, Sink
from hydrallm.observe.journal_db import (
    INSERT_ATTEMPT,
    INSERT_REQUEST,
    client_api,
    housekeeping,
    journal_path,
    open_for_writing,
)
from hydrallm.observe.prices import PriceBook
from hydrallm.observe.usage import from_body

__all__ = ["JournalSink", "journal_path"]

QUEUE_LIMIT = 10_000
FLUSH_S = 0.2
HOUSEKEEPING_S = 60.0
BODY_LIMIT = 64 * 1024
_PENDING_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class _Settings:
    """What a row is written with, from the config that served its request."""

    prices: PriceBook
    model_names: dict[str, str]  # model id -> the name sent upstream
    redact: Redactor


class _Pending:
    """A request's events gathered on the event loop until it ends."""

    __slots__ = ("attempts", "skips")

    def __init__(self) -> None:
        self.attempts: list[AttemptEvent] = []
        self.skips: list[str] = []


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
        self._queue: deque[tuple[_Pending | None, RequestEvent, _Settings]] = deque()
        self._pending: dict[str, _Pending] = {}
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

    def _entry(self) -> _Pending | None:
        if not self.enabled:
            return None
        rid = CURRENT_REQUEST.get()
        if rid is None:
            return None
        entry = self._pending.get(rid)
        if entry is None:
            if len(self._pending) >= _PENDING_LIMIT:
                # Requests whose end never came (should not happen): forget the oldest.
                del self._pending[next(iter(self._pending))]
            entry = self._pending[rid] = _Pending()
        return entry

    def attempt(self, event: AttemptEvent) -> None:
        entry = self._entry()
        if entry is not None:
            entry.attempts.append(event)

    def skipped(self, listener: str, model_ids: list[str]) -> None:
        entry = self._entry()
        if entry is not None:
            entry.skips.extend(model_ids)

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
        if not self.enabled:
            return
        entry = self._pending.pop(event.request_id, None)
        if len(self._queue) >= QUEUE_LIMIT:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((entry, event, self.settings))  # the writer builds the rows

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
        if db is None or not self._queue:
            return
        batch = []
        while self._queue:
            try:
                batch.append(self._queue.popleft())
            except IndexError:
                break
        db.execute("BEGIN IMMEDIATE")
        try:
            for entry, event, st in batch:
                trail = _trail(entry)
                cur = db.execute(INSERT_REQUEST, self._row(trail, event, st))
                rowid = cur.lastrowid
                db.executemany(
                    INSERT_ATTEMPT, [_attempt_row(rowid, a, event, st) for a in trail[0]]
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.written += len(batch)

    def _row(self, trail: tuple[Any, ...], event: RequestEvent, st: _Settings) -> tuple[Any, ...]:
        # The request event names the model that finished the answer (after a recovery,
        # the fallback that did) and how the answer was recovered.
        _, retries, fallbacks, skips, key, ttft = trail
        served_model = event.served_model
        model_id = event.served_by
        recovered = event.recovered
        usage = event.usage
        if usage is None and event.usage_raw is not None:
            usage = from_body(event.usage_raw)
        cost = st.prices.cost(model_id, served_model, usage)
        error = None if event.error is None else st.redact(event.error)
        req_body = resp_body = None
        if self.config.bodies:
            req_body = _body(event.request_body, st)
            resp_body = _body(event.response_body, st)
        return (
            event.request_id,
            event.started_at,
            self.worker,
            event.listener,
            event.route,
            client_api(event.path),
            event.method,
            event.path,
            event.requested_model,
            served_model,
            model_id,
            event.endpoint,
            key,
            event.status,
            event.attempts,
            retries,
            fallbacks,
            skips,
            recovered,
            round(event.latency * 1000, 2),
            None if ttft is None else round(ttft * 1000, 2),
            int(event.streamed),
            event.body_bytes,
            None if usage is None else usage.input,
            None if usage is None else usage.output,
            None if usage is None else usage.cache_read,
            None if usage is None else usage.cache_write,
            cost,
            error,
            event.session,
            req_body,
            resp_body,
        )

    def _housekeeping(self) -> None:
        if self._db is not None:
            housekeeping(
                self._db,
                cutoff=self._clock() - self.config.retention,
                max_size=self.config.max_size,
            )


def _attempt_row(
    rowid: int | None, a: tuple[Any, ...], event: RequestEvent, st: _Settings
) -> tuple[Any, ...]:
    n, model, model_id, endpoint, key, outcome, status, error, latency, waited = a
    if model == "*":
        model = event.requested_model
    if error is not None:
        error = st.redact(error)
    return (rowid, n, model, model_id, endpoint, key, outcome, status, error, latency, waited)


def _body(body: bytes | None, st: _Settings) -> str | None:
    if not body:
        return None
    text = body[:BODY_LIMIT].decode("utf-8", "replace")
    if len(body) > BODY_LIMIT:
        text += f"… ({len(body)} bytes)"
    return st.redact(text)


def _trail(entry: _Pending | None) -> tuple[Any, ...]:
    """(attempt rows, retries, fallbacks, skips, key label of the serving attempt, ttft)."""
    if entry is None:
        return ([], 0, 0, 0, None, None)
    rows: list[tuple[Any, ...]] = []
    retries = fallbacks = 0
    ttft: float | None = None
    key: str | None = None
    for model_id in entry.skips:
        rows.append((0, None, model_id, None, None, "skipped_cooldown", None, None, None, None))
    for a in entry.attempts:
        retries += a.retry
        fallbacks += a.fallback
        if a.outcome == "success":
            ttft, key = a.ttft, a.key
        rows.append(
            (
                a.attempt,
                a.model,
                a.model_id,
                a.endpoint,
                a.key,
                a.outcome,
                a.status,
                a.error,
                round(a.latency * 1000, 2),
                round(a.waited * 1000, 2),
            )
        )
    return (rows, retries, fallbacks, len(entry.skips), key, ttft)
