"""The journal's SQLite file: schema, connections, and the limits kept on it.

Several worker processes share one file: WAL mode lets readers and one writer work at
once, and `busy_timeout` makes a writer wait its turn for the lock (up to
`BUSY_TIMEOUT_MS`) instead of failing.

Schema (version 2; `meta.schema_version`):

    requests(rowid, id, time, worker, listener, route, client_api, method, path,
             requested_model, served_model, model_id, endpoint, key, status, attempts,
             retries, fallbacks, skips, recovered, latency_ms, ttft_ms, stream, bytes,
             input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd,
             error, session, request_body, response_body, attempt_ms)
    attempts(request, n, model, model_id, endpoint, key, outcome, status, error,
             latency_ms, waited_ms)          -- request = requests.rowid, n = place in
                                             -- the trail; WITHOUT ROWID, keyed by both
    spool(name, loaded)                      -- how far each spool segment is loaded
                                             -- (`journal_spool.py`)

Most requests are served by their first try.  Such a request has no attempt row: its one
attempt is its own row (model, endpoint, key, status, no wait), and `attempt_ms` keeps
that attempt's latency; the readers show the same trail (`journal_query.one`).  It saves
the writer a third of its SQLite work.  `attempt_ms` is NULL for every other request.

Every index costs the writer on every row, so there are only the ones a reader needs:
`requests(time)` (every chart, `--since` and retention read a time range).  `requests.id`
has none: `hydrallm log ID` walks the rows newest first and stops at the match, which is
at once for the recent requests people look up.  Rowids are given by the writer in the
order requests ended (see `journal.py`), so `--follow` and the size limit use them.
Version 1 files (attempts with a rowid and an index of their own, an index on id) are
moved to version 2 when opened for writing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hydrallm.config import JournalConfig

if TYPE_CHECKING:
    import sqlite3

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 5000

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
    "attempt_ms",
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
_ATTEMPTS = f"attempts ({', '.join(ATTEMPT_COLUMNS)}, PRIMARY KEY (request, n)) WITHOUT ROWID"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests (rowid INTEGER PRIMARY KEY, {", ".join(REQUEST_COLUMNS)});
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
CREATE TABLE IF NOT EXISTS {_ATTEMPTS};
CREATE TABLE IF NOT EXISTS spool (name TEXT PRIMARY KEY, loaded INTEGER);
"""
# Version 1 -> 2: the attempts of each request numbered by their place in its trail.
_MIGRATE_1 = f"""
DROP INDEX IF EXISTS requests_id;
ALTER TABLE requests ADD COLUMN attempt_ms;
ALTER TABLE attempts RENAME TO attempts_v1;
CREATE TABLE {_ATTEMPTS};
INSERT INTO attempts SELECT request,
    row_number() OVER (PARTITION BY request ORDER BY n, rowid),
    {", ".join(ATTEMPT_COLUMNS[2:])} FROM attempts_v1;
DROP TABLE attempts_v1;
"""
# A column that may be NULL is written as -1, which the INSERT turns into NULL (never a
# real value of any of them; a text "-1" is not equal to the integer).  Python's sqlite3
# binds None through its adapter lookup, which raises and clears an exception per value:
# about 0.8 µs each, a dozen per row; an integer binds in 0.1 µs, and, unlike an empty
# text, without a copy (a text bind costs SQLite a malloc under its mutex).
NULLABLE = frozenset(
    {"requested_model", "served_model", "model_id", "endpoint", "key", "recovered", "error"}
    | {"session", "request_body", "response_body", "model", "status", "ttft_ms"}
    | {"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd"}
    | {"latency_ms", "waited_ms", "attempt_ms"}
)


def _values(columns: list[str]) -> str:
    return ", ".join("nullif(?, -1)" if c in NULLABLE else "?" for c in columns)


INSERT_REQUEST = (
    f"INSERT INTO requests (rowid, {', '.join(REQUEST_COLUMNS)})"
    f" VALUES (?, {_values(REQUEST_COLUMNS)})"
)
# Rows written by one statement (see `journal_writer.Writer.write`): 16 x 34 values, far below SQLite's
# limit of 32766 bound values.
CHUNK = 16
INSERT_CHUNK = f"INSERT INTO requests (rowid, {', '.join(REQUEST_COLUMNS)}) VALUES " + ", ".join(
    [f"(?, {_values(REQUEST_COLUMNS)})"] * CHUNK
)
INSERT_ATTEMPT = f"INSERT INTO attempts VALUES ({_values(ATTEMPT_COLUMNS)})"
LAST_ROWID = "SELECT coalesce(max(rowid), 0) FROM requests"
# Attempts of requests already deleted (rowids only grow, so "older than the oldest").
_DELETE_ORPHANS = (
    "DELETE FROM attempts WHERE request < coalesce((SELECT min(rowid) FROM requests),"
    " (SELECT max(request) + 1 FROM attempts))"
)


# Recovery actions as the recovery code names them -> the journal's words.
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
    import sqlite3  # not before the proxy is ready: sqlite3 (and datetime) cost ~5 ms

    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    else:
        # Used by one thread at a time (the writer process's; or, for a proxy that stops
        # before it started one, the thread that closes it), which sqlite3's same-thread
        # check cannot see.
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
        # A crash of the machine may lose the last batches, never the file: fsync at
        # checkpoints only, not at every commit.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("BEGIN IMMEDIATE")  # one worker sets up or moves the file at a time
        try:
            _set_up(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("SELECT count(*) FROM requests").fetchone()  # a corrupt file fails here
    except BaseException:
        db.close()
        raise
    return db


def _set_up(db: sqlite3.Connection) -> None:
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = None if row is None else int(row[0])
    if version is not None and version > SCHEMA_VERSION:
        import sqlite3

        raise sqlite3.DatabaseError(
            f"journal schema version {version} is newer than this hydrallm ({SCHEMA_VERSION})"
        )
    if version == 1:
        for statement in _MIGRATE_1.split(";"):
            if statement.strip():
                db.execute(statement)
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


def housekeeping(db: sqlite3.Connection, *, cutoff: float, max_size: int) -> None:
    """Retention (rows older than `cutoff` go), then the size limit (oldest rows first)."""
    db.execute("BEGIN IMMEDIATE")
    db.execute("DELETE FROM requests WHERE time < ?", (cutoff,))
    db.execute(_DELETE_ORPHANS)
    db.execute("COMMIT")
    for _ in range(50):
        if _size(db) <= max_size:
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
