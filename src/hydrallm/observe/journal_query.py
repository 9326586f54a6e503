"""Reading the journal: the queries behind `hydrallm log`, `hydrallm usage` and the status
page's charts.  Plain functions over a read-only sqlite3 connection; no writes, ever.

How a request's outcome is named (the charts and `usage` count these):

    recovered   a stream that broke after commit was finished on another model
    failed      the client got an error status, or a stream that broke and was not recovered
    fell_back   served by a later model of the chain
    retried     served by the first model it tried, after another try of it
    first_try   served by the first try

`rescued` = retried + fell_back + recovered: what the client would have seen fail without
hydrallm.
"""

from __future__ import annotations

import sqlite3
import statistics
from pathlib import Path
from typing import Any

from hydrallm.observe.journal_db import BUSY_TIMEOUT_MS, REQUEST_COLUMNS

OUTCOMES = ("first_try", "retried", "fell_back", "recovered", "failed")
OUTCOME_SQL = (
    "CASE WHEN recovered IN ('prefill', 'restart') THEN 'recovered'"
    " WHEN status >= 400 OR error IS NOT NULL THEN 'failed'"
    " WHEN fallbacks > 0 THEN 'fell_back'"
    " WHEN retries > 0 THEN 'retried'"
    " ELSE 'first_try' END"
)
# Every request column but the ones a reader never lists: which worker wrote the row, and
# the debugging bodies (`journal.bodies`).
LIST_FIELDS = [
    c for c in REQUEST_COLUMNS if c not in ("worker", "request_body", "response_body", "attempt_ms")
]
TRAIL_FIELDS = ["model", "endpoint", "key", "outcome", "status", "error", "latency_ms", "waited_ms"]
# name -> (bucket width in seconds, number of buckets)
WINDOWS = {"hour": (60, 60), "day": (900, 96), "week": (3600, 168)}
_PERIOD = {
    "day": "strftime('%Y-%m-%d', time, 'unixepoch', 'localtime')",
    "hour": "strftime('%Y-%m-%d %H:00', time, 'unixepoch', 'localtime')",
}
_SAMPLE_LIMIT = 20_000


class JournalMissing(Exception):
    """There is no journal file to read (yet)."""


def open_readonly(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise JournalMissing(f"no journal at {path} (has hydrallm served a request yet?)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.row_factory = sqlite3.Row
    try:
        db.execute("SELECT 1 FROM requests LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        db.close()
        raise JournalMissing(f"cannot read the journal at {path}: {exc}") from exc
    return db


def _glob_sql(glob: str) -> tuple[str, list[Any]]:
    # fnmatch semantics, case-insensitive, against the requested or the served model.
    return (
        "(lower(coalesce(requested_model, '')) GLOB ? OR lower(coalesce(served_model, '')) GLOB ?"
        " OR lower(coalesce(model_id, '')) GLOB ?)",
        [glob.lower()] * 3,
    )


def requests(
    db: sqlite3.Connection,
    *,
    since: float | None = None,
    model: str | None = None,
    failed: bool = False,
    recovered: bool = False,
    limit: int = 20,
    after: int | None = None,
) -> list[dict[str, Any]]:
    """Newest first (oldest first with `after`, a rowid: what --follow prints next)."""
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("time >= ?")
        args.append(since)
    if model:
        sql, extra = _glob_sql(model)
        where.append(sql)
        args += extra
    if failed:
        where.append(f"({OUTCOME_SQL}) = 'failed'")
    if recovered:
        where.append("recovered IS NOT NULL")
    if after is not None:
        where.append("rowid > ?")
        args.append(after)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    order = "ASC" if after is not None else "DESC"
    rows = db.execute(
        f"SELECT rowid, {', '.join(LIST_FIELDS)}, {OUTCOME_SQL} AS outcome FROM requests"
        f" {clause} ORDER BY rowid {order} LIMIT ?",
        [*args, limit],
    ).fetchall()
    return [dict(row) for row in rows]


def one(db: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    """The newest request with this id, with its `attempt_trail`."""
    row = db.execute(
        f"SELECT rowid, {', '.join(REQUEST_COLUMNS)}, {OUTCOME_SQL} AS outcome FROM requests"
        " WHERE id = ? ORDER BY rowid DESC LIMIT 1",
        (request_id,),
    ).fetchone()
    if row is None:
        return None
    out = dict(row)
    for absent in ("request_body", "response_body"):
        if out.get(absent) is None:
            out.pop(absent, None)
    trail = db.execute(
        f"SELECT {', '.join(TRAIL_FIELDS)} FROM attempts WHERE request = ? ORDER BY n",
        (row["rowid"],),
    ).fetchall()
    out["attempt_trail"] = [dict(t) for t in trail]
    served_ms = out.pop("attempt_ms", None)
    if not trail and served_ms is not None:
        # Served by its first try: that attempt was not written apart (see journal_db).
        out["attempt_trail"] = [
            {
                "model": out["served_model"],
                "endpoint": out["endpoint"],
                "key": out["key"],
                "outcome": "success",
                "status": out["status"],
                "error": None,
                "latency_ms": served_ms,
                "waited_ms": 0.0,
            }
        ]
    return out


def usage(
    db: sqlite3.Connection, *, since: float | None = None, by: str = "model"
) -> list[dict[str, Any]]:
    """One object per model (or day, or hour), biggest spenders / newest periods first."""
    key = _PERIOD.get(by, "coalesce(served_model, requested_model, model_id, '-')")
    clause = "WHERE time >= ?" if since is not None else ""
    args = [since] if since is not None else []
    # `grp`, not `key`: requests has a column named key (the API key's label).
    order = "grp DESC" if by in _PERIOD else "coalesce(sum(cost_usd), 0) DESC, requests DESC"
    rows = db.execute(
        f"SELECT {key} AS grp, count(*) AS requests,"
        f" sum(({OUTCOME_SQL}) = 'failed') AS failed,"
        f" sum(({OUTCOME_SQL}) IN ('retried', 'fell_back', 'recovered')) AS rescued,"
        " coalesce(sum(input_tokens), 0) AS input_tokens,"
        " coalesce(sum(output_tokens), 0) AS output_tokens,"
        " coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,"
        " coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,"
        " sum(cost_usd) AS cost_usd"
        f" FROM requests {clause} GROUP BY grp ORDER BY {order}",
        args,
    ).fetchall()
    out = []
    for row in rows:
        group = dict(row)
        out.append({"key": group.pop("grp"), **group})
    for r in out:
        if r["cost_usd"] is not None:
            r["cost_usd"] = round(r["cost_usd"], 8)
    return out


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


def charts(db: sqlite3.Connection, *, now: float, window: str = "hour") -> dict[str, Any]:
    """The status page's chart data for the last hour, day or week."""
    width, count = WINDOWS.get(window, WINDOWS["hour"])
    start = (now // width + 1) * width - width * count
    series = {o: [0] * count for o in OUTCOMES}
    for bucket, outcome, n in db.execute(
        f"SELECT CAST((time - ?) / ? AS INTEGER) AS b, {OUTCOME_SQL} AS o, count(*)"
        " FROM requests WHERE time >= ? GROUP BY b, o",
        (start, width, start),
    ):
        if 0 <= bucket < count:
            series[outcome][bucket] += n
    per_minute = {o: [round(v * 60 / width, 3) for v in vals] for o, vals in series.items()}
    totals = {o: sum(vals) for o, vals in series.items()}
    total = sum(totals.values())
    rescued = totals["retried"] + totals["fell_back"] + totals["recovered"]

    samples: dict[str, tuple[list[float], list[float]]] = {}
    for model, latency, ttft in db.execute(
        "SELECT coalesce(served_model, model_id, '-'), latency_ms, ttft_ms FROM requests"
        " WHERE time >= ? AND status < 400 ORDER BY rowid DESC LIMIT ?",
        (start, _SAMPLE_LIMIT),
    ):
        lat, tt = samples.setdefault(model, ([], []))
        lat.append(latency)
        if ttft is not None:
            tt.append(ttft)
    latency = [
        {
            "model": model,
            "count": len(lat),
            **{f"p{q}_ms": _pct(lat, q) for q in (50, 90, 99)},
            **{f"p{q}_ttft_ms": _pct(tt, q) for q in (50, 90, 99)},
        }
        for model, (lat, tt) in sorted(samples.items())
    ]
    daily = [
        dict(r)
        for r in db.execute(
            "SELECT strftime('%Y-%m-%d', time, 'unixepoch', 'localtime') AS day,"
            " coalesce(served_model, requested_model, model_id, '-') AS model,"
            " count(*) AS requests,"
            " coalesce(sum(input_tokens), 0) + coalesce(sum(cache_read_tokens), 0)"
            " + coalesce(sum(cache_write_tokens), 0) AS input_tokens,"
            " coalesce(sum(output_tokens), 0) AS output_tokens, sum(cost_usd) AS cost_usd"
            " FROM requests WHERE time >= ? GROUP BY day, model ORDER BY day, model",
            (max(start, now - 14 * 86400),),
        )
    ]
    return {
        "window": window if window in WINDOWS else "hour",
        "bucket_s": width,
        "start": start,
        "requests_per_minute": per_minute,
        "totals": totals,
        "requests": total,
        "rescued": rescued,
        "rescue_rate": round(rescued / total, 4) if total else None,
        "failure_rate": round(totals["failed"] / total, 4) if total else None,
        "latency": latency,
        "daily": daily,
    }
