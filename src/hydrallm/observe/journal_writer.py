"""The journal's writer: turns the proxy's flat request tuples into rows and writes them.

The proxy appends its requests to spool segments (`journal_spool.py`); this loads them.
It runs in a process of its own (`main`, started by `journal.JournalSink`), so that its
Python (usage decoding, cost, building and binding rows: ~20-30 µs a request) never holds
the proxy's GIL, and at the lowest CPU priority.  Readers in other processes (`hydrallm
log`) load pending segments with the same `Writer`.

Messages, both ways: a 4-byte little-endian length, then `marshal` data (only builtin
types cross: it is ~10x faster than pickle on the proxy's side and cannot run code).

    proxy -> writer  ("open", path, max_size)                       first, once
                     ("housekeeping", cutoff)                        retention + size
                     ("ingest",)           load every spooled segment (the proxy is quiet)
                     ("hold",)             stop loading: the proxy got busy
                     ("finish",)                                     then EOF
    writer -> proxy  ("written", n) after each transaction; ("idle", bytes, held) after
                     loading; ("failed", "Error: text") once, then it exits;
                     ("finished",) after "finish".

A segment starts with its settings frame ("settings", prices, worker): a row is priced
with the prices of the config that served its request (a reload starts a new segment).
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydrallm.config import Price
from hydrallm.observe.journal_db import (
    CHUNK,
    INSERT_ATTEMPT,
    INSERT_CHUNK,
    INSERT_REQUEST,
    LAST_ROWID,
    client_api,
    housekeeping,
    open_for_writing,
)
from hydrallm.observe.journal_spool import frame, unframe
from hydrallm.observe.prices import PriceBook
from hydrallm.observe.usage import Usage, from_body

_SKIPPED = "skipped_cooldown"
_NO_TOKENS = (-1, -1, -1, -1)  # not reported (NULL)


@dataclass(frozen=True, slots=True)
class Settings:
    """What a segment's rows are written with, from the config that served them."""

    prices: PriceBook
    worker: int


class Writer:
    """One open journal file and the settings of the segment being loaded."""

    def __init__(self, path: str, max_size: int = 0) -> None:
        self.max_size = max_size
        self.settings = _DEFAULT
        self.db: sqlite3.Connection = open_for_writing(Path(path))

    def close(self) -> None:
        self.db.close()

    def use_settings(self, message: tuple[Any, ...]) -> None:
        _, prices, worker = message
        self.settings = Settings(PriceBook(tuple((p[0], Price(*p[1:])) for p in prices)), worker)

    def housekeeping(self, cutoff: float) -> None:
        housekeeping(self.db, cutoff=cutoff, max_size=self.max_size)

    def write(self, batch: list[tuple[Any, ...]]) -> int:
        """`insert` in a transaction of its own."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.insert(batch)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return len(batch)

    def insert(self, batch: list[tuple[Any, ...]]) -> None:
        """Writes `batch`, inside the caller's transaction (`BEGIN IMMEDIATE`)."""
        db = self.db
        attempts: list[tuple[Any, ...]] = []
        # Rowids are given here, under the write lock no other worker holds now, so
        # that attempt rows can name their request without a lookup per row.
        (last,) = db.execute(LAST_ROWID).fetchone()
        # CHUNK rows per statement: fewer trips through sqlite3's statement machinery.
        rows = self._rows(batch, last, attempts)
        for _ in range(len(batch) // CHUNK):
            db.execute(INSERT_CHUNK, [v for _ in range(CHUNK) for v in next(rows)])
        db.executemany(INSERT_REQUEST, rows)  # the rest
        if attempts:
            db.executemany(INSERT_ATTEMPT, attempts)

    def _rows(
        self, batch: list[tuple[Any, ...]], rowid: int, attempts: list[tuple[Any, ...]]
    ) -> Iterator[tuple[Any, ...]]:
        """The request rows of `batch` (rowids from `rowid` + 1); their attempt rows are
        added to `attempts` on the way.  No None in a row: -1 stands for NULL (see
        `journal_db.NULLABLE`).  The tuples' layout: `journal_spool.rows_of`."""
        st = self.settings
        worker = st.worker
        prices = st.prices
        for (
            request_id,
            started_at,
            listener,
            route,
            method,
            path,
            requested_model,
            served_model,
            model_id,
            endpoint,
            status,
            n_attempts,
            recovered,
            latency,
            streamed,
            body_bytes,
            usage_in,
            error,
            session,
            request_body,
            response_body,
            trail,
        ) in batch:
            rowid += 1
            retries = fallbacks = skips = 0
            key: str | int = -1
            ttft = -1.0
            served_ms = -1.0
            first = trail[0] if trail is not None and len(trail) == 1 else None
            # An attempt: (model, model_id, endpoint, key, outcome, status, error, latency,
            # waited, ttft, retry, fallback); (None, ids): models left out (circuit open).
            if (
                first is not None
                and first[0] is not None
                and first[4] == "success"
                and not first[8]
                and first[5] == status
                and first[1] == model_id
                and first[2] == endpoint
                and (first[0] == served_model or first[0] == "*")
            ):
                # Served by its first try: the request row tells that attempt whole.
                key = first[3] or -1
                if first[9] is not None:
                    ttft = round(first[9] * 1000, 2)
                served_ms = round(first[7] * 1000, 2)
            elif trail:
                requested = requested_model or -1
                n = 0
                for a in trail:
                    if a[0] is None:
                        for skipped in a[1]:
                            n += 1
                            attempts.append(
                                (rowid, n, -1, skipped, -1, -1, _SKIPPED, -1, -1, -1, -1)
                            )
                        skips += len(a[1])
                        continue
                    model, a_id, a_endpoint, a_key, outcome, a_status, a_error = a[:7]
                    a_latency, waited, a_ttft, retry, fallback = a[7:]
                    n += 1
                    retries += retry
                    fallbacks += fallback
                    if outcome == "success":
                        key = a_key or -1
                        if a_ttft is not None:
                            ttft = round(a_ttft * 1000, 2)
                    attempts.append(
                        (
                            rowid,
                            n,
                            requested if model == "*" else model,
                            a_id,
                            a_endpoint,
                            a_key or -1,
                            outcome,
                            -1 if a_status is None else a_status,
                            -1 if a_error is None else a_error,
                            round(a_latency * 1000, 2),
                            round(waited * 1000, 2),
                        )
                    )
            usage: Usage | None = None
            if type(usage_in) is tuple:
                usage = Usage(*usage_in)
            elif usage_in is not None:
                usage = from_body(usage_in)
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
                found = prices.cost(model_id, served_model, usage)
                cost = -1.0 if found is None else found
            yield (
                rowid,
                request_id,
                started_at,
                worker,
                listener,
                route,
                client_api(path),
                method,
                path,
                requested_model or -1,
                served_model or -1,
                model_id or -1,
                endpoint or -1,
                key,
                status,
                n_attempts,
                retries,
                fallbacks,
                skips,
                recovered or -1,
                round(latency * 1000, 2),
                ttft,
                int(streamed),
                body_bytes,
                *tokens,
                cost,
                -1 if error is None else error,
                session or -1,
                request_body or -1,
                response_body or -1,
                served_ms,
            )


_DEFAULT = Settings(PriceBook(), 0)


def _number(value: int | None) -> int:
    return -1 if value is None else value


class Messages:
    """The proxy's messages from a pipe, read without blocking when asked."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._ready: deque[tuple[Any, ...]] = deque()
        self.closed = False

    def poll(self, timeout: float | None) -> None:
        """Read what the pipe has (waiting up to `timeout`; None: until something)."""
        if self.closed or not select.select([self._fd], [], [], timeout)[0]:
            return
        data = os.read(self._fd, 1 << 20)
        if not data:
            self.closed = True
            return
        self._buf += data
        self._ready.extend(unframe(self._buf))

    def next(self) -> tuple[Any, ...] | None:
        """The next message, waiting for it; None when the proxy closed its end."""
        while not self._ready and not self.closed:
            self.poll(None)
        return self._ready.popleft() if self._ready else None

    def holding(self) -> bool:
        """Without waiting: did the proxy say "hold"?  (Other messages wait their turn.)"""
        self.poll(0)
        for i, message in enumerate(self._ready):
            if message[0] == "hold":
                del self._ready[i]
                return True
        return False


def _background() -> None:
    """Runs this process only on a core nothing else wants (Linux's SCHED_IDLE; a low
    priority elsewhere).  As a nice-10 process it still held a core a few milliseconds
    when a proxy's request woke on a busy two-core machine: +2-5 ms at c1's p99."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except (AttributeError, OSError):
            pass


def main() -> None:
    """The writer process: messages on stdin, replies on stdout (see the docstring)."""
    from hydrallm.observe.journal_spool import ingest, pending_bytes

    # The proxy decides when this ends (it sends "finish" or closes the pipe): a Ctrl-C
    # or a service manager's SIGTERM to the whole group must not lose the last batches.
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)):
        signal.signal(sig, signal.SIG_IGN)
    _background()
    replies = os.dup(1)
    # Nothing else may write into the replies' pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    messages = Messages(0)

    def reply(*message: Any) -> None:
        data = frame(message)
        while data:
            data = data[os.write(replies, data) :]

    writer: Writer | None = None
    spool: Path | None = None
    try:
        while (message := messages.next()) is not None:
            kind = message[0]
            if kind == "open":
                _, path, max_size, spool_path = message
                writer, spool = Writer(path, max_size), Path(spool_path)
            elif kind == "finish":
                reply("finished")
                break
            elif writer is None or spool is None:
                continue
            elif kind == "ingest":
                done = ingest(
                    writer,
                    spool,
                    stop=messages.holding,
                    written=lambda n: reply("written", n),
                )
                reply("idle", pending_bytes(spool), not done)
            elif kind == "housekeeping":
                writer.housekeeping(message[1])
    except Exception as exc:  # any: reported to the proxy, which logs one line
        reply("failed", f"{type(exc).__name__}: {exc}")
    finally:
        if writer is not None:
            writer.close()


if __name__ == "__main__":
    main()
