"""The journal's SQLite file: schema, connections, and the limits kept on it.

Several worker processes share one file: WAL mode lets readers and one writer work at
once, and `busy_timeout` makes a writer wait its turn for the lock (up to
`BUSY_TIMEOUT_MS`) instead of failing.

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

import os
import sqlite3
import sys
from pathlib import Path

from hydrallm.config import JournalConfig

SCHEMA_VERSION = 1
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
INSERT_REQUEST = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})"
)
INSERT_ATTEMPT = f"INSERT INTO attempts VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})"
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
