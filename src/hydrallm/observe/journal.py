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

Schema (version 1; `meta.schema_version`):

    requests(rowid, id, time, worker, listener, route, client_api, method, path,
             requested_model, served_model, model_id, endpoint, key, status, attempts,
             retries, fallbacks, skips, recovered, latency_ms, ttft_ms, stream, bytes,
             input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd,
             error, session, request_body, response_body)
    attempts(request, n, model, model_id, endpoint, key, outcome, status, error,
             latency_ms, waited_ms)          -- request = requests.rowid
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydrallm.config import Config, JournalConfig, Price
from hydrallm.observe.events import CURRENT_REQUEST, AttemptEvent, Redactor, RequestEvent, Sink
from hydrallm.observe.prices import PriceBook

SCHEMA_VERSION = 1
QUEUE_LIMIT = 10_000
FLUSH_S = 0.2
HOUSEKEEPING_S = 60.0
BUSY_TIMEOUT_MS = 5000
BODY_LIMIT = 64 * 1024
_PENDING_LIMIT = 10_000

REQUEST_COLUMNS = [
    "id",
    "time",
    "worker",
    "listener",
    "route",
    "client_api",
    "method",
    "path",
    "requested_model",
    "served_model",
    "model_id",
    "endpoint",
    "key",
    "status",
    "attempts",
    "retries",
    "fallbacks",
    "skips",
    "recovered",
    "latency_ms",
    "ttft_ms",
    "stream",
    "bytes",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "error",
    "session",
    "request_body",
    "response_body",
]
ATTEMPT_COLUMNS = [
    "request",
    "n",
    "model",
    "model_id",
    "endpoint",
    "key",
    "outcome",
    "status",
    "error",
    "latency_ms",
    "waited_ms",
]
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS requests (rowid INTEGER PRIMARY KEY, {", ".join(REQUEST_COLUMNS)});
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
CREATE INDEX IF NOT EXISTS requests_id ON requests(id);
CREATE TABLE IF NOT EXISTS attempts ({", ".join(ATTEMPT_COLUMNS)});
CREATE INDEX IF NOT EXISTS attempts_request ON attempts(request);
"""
_INSERT_REQUEST = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})"
)
_INSERT_ATTEMPT = f"INSERT INTO attempts VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})"
# Attempts of requests already deleted (rowids only grow, so "older than the oldest").
_DELETE_ORPHANS = (
    "DELETE FROM attempts WHERE request < coalesce((SELECT min(rowid) FROM requests),"
    " (SELECT max(request) + 1 FROM attempts))"
)
# Recovery actions as the recovery code names them -> the journal's words.
_RECOVERED = {
    "continued": "prefill",
    "prefill": "prefill",
    "restarted-matched": "restart",
    "restart": "restart",
    "gave-up": "gave_up",
    "gave_up": "gave_up",
}


def default_path() -> Path:
    """`<state dir>/hydrallm/journal.db` for this platform."""
    home = Path.home()
    if sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state")
    return base / "hydrallm" / "journal.db"


def journal_path(config: JournalConfig) -> Path:
    return Path(config.path).expanduser() if config.path else default_path()


def client_api(path: str) -> str:
    if path.endswith("/chat/completions"):
        return "openai-chat"
    if "/responses" in path:
        return "openai-responses"
    if path.endswith("/messages"):
        return "anthropic"
    if path.startswith("/model/"):
        return "bedrock"
    return "other"


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection set up for sharing the file between processes."""
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    else:
        # Used by one thread at a time (opened before the writer starts, closed after it
        # stopped), which sqlite3's same-thread check cannot see.
        db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return db


def open_for_writing(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = connect(path)
    try:
        # Set before the first table: lets `incremental_vacuum` give freed pages back.
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"journal schema version {row[0]} is newer than this hydrallm ({SCHEMA_VERSION})"
            )
        db.execute("SELECT count(*) FROM requests").fetchone()  # a corrupt file fails here
    except BaseException:
        db.close()
        raise
    return db


@dataclass(frozen=True, slots=True)
class _Settings:
    """What a row is written with, from the config that served its request."""

    prices: PriceBook
    model_names: dict[str, str]  # model id -> the name sent upstream
    redact: Redactor


class _Pending:
    """A request's events gathered on the event loop until it ends."""

    __slots__ = ("attempts", "recovered", "recovered_by", "skips")

    def __init__(self) -> None:
        self.attempts: list[AttemptEvent] = []
        self.skips: list[str] = []
        self.recovered: str | None = None
        self.recovered_by: str | None = None


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

    def recovery(self, listener: str, model_id: str, action: str) -> None:
        entry = self._entry()
        if entry is not None:
            entry.recovered = _RECOVERED.get(action, action)
            if entry.recovered != "gave_up":
                entry.recovered_by = model_id

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
                cur = db.execute(_INSERT_REQUEST, self._row(trail, event, st))
                rowid = cur.lastrowid
                db.executemany(
                    _INSERT_ATTEMPT, [_attempt_row(rowid, a, event, st) for a in trail[0]]
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.written += len(batch)

    def _row(self, trail: tuple[Any, ...], event: RequestEvent, st: _Settings) -> tuple[Any, ...]:
        _, retries, fallbacks, skips, recovered, recovered_by, ttft = trail
        served_model = event.served_model
        model_id = event.served_by
        if recovered_by is not None and recovered_by != model_id:
            model_id = recovered_by
            name = st.model_names.get(recovered_by)
            served_model = event.requested_model if name in (None, "*") else name
        usage = event.usage
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
            None,  # key label: key pools
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
        """Retention, then the size limit (oldest rows go first)."""
        db = self._db
        if db is None:
            return
        cutoff = self._clock() - self.config.retention
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM requests WHERE time < ?", (cutoff,))
        db.execute(_DELETE_ORPHANS)
        db.execute("COMMIT")
        for _ in range(50):
            if _size(db) <= self.config.max_size:
                break
            (count,) = db.execute("SELECT count(*) FROM requests").fetchone()
            if not count:
                break
            cut = max(50, count // 10)
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "DELETE FROM requests WHERE rowid IN"
                " (SELECT rowid FROM requests ORDER BY rowid LIMIT ?)",
                (cut,),
            )
            db.execute(_DELETE_ORPHANS)
            db.execute("COMMIT")
            _vacuum(db)
        if db.execute("PRAGMA freelist_count").fetchone()[0]:
            _vacuum(db)


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


def _vacuum(db: sqlite3.Connection) -> None:
    """Give free pages back to the file system.  `executescript`, because `execute` steps
    `incremental_vacuum` once, which frees one page."""
    db.executescript("PRAGMA incremental_vacuum;")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def _size(db: sqlite3.Connection) -> int:
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    (free,) = db.execute("PRAGMA freelist_count").fetchone()
    (size,) = db.execute("PRAGMA page_size").fetchone()
    return int((pages - free) * size)


def _trail(entry: _Pending | None) -> tuple[Any, ...]:
    """(attempt rows, retries, fallbacks, skips, recovered, recovered_by, ttft)."""
    if entry is None:
        return ([], 0, 0, 0, None, None, None)
    rows: list[tuple[Any, ...]] = []
    retries = fallbacks = 0
    ttft: float | None = None
    for model_id in entry.skips:
        rows.append((0, None, model_id, None, None, "skipped_cooldown", None, None, None, None))
    for a in entry.attempts:
        retries += a.retry
        fallbacks += a.fallback
        if a.outcome == "success":
            ttft = a.ttft
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
    return (rows, retries, fallbacks, len(entry.skips), entry.recovered, entry.recovered_by, ttft)
