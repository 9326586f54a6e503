"""The journal's writer: turns the proxy's flat request tuples into rows and writes them.

It runs in a process of its own (`main`, started by `journal.JournalSink`), so that its
Python (usage decoding, cost, redaction, building and binding rows: ~20 µs a request)
runs on another core and never holds the proxy's GIL.  A proxy that stops before it
started the process (a run shorter than a second) feeds the same `Writer` in-process
while closing.

Messages, both ways: a 4-byte little-endian length, then `marshal` data (only builtin
types cross: it is ~10x faster than pickle on the proxy's side and cannot run code).

    proxy -> writer  ("open", path, worker, bodies, max_size)       first, once
                     ("settings", generation, prices, model_names, secrets)
                     ("housekeeping", cutoff)                        retention + size
                     ("rows", [request tuple, ...])                  see `journal.py`
                     ("finish",)                                     then EOF
    writer -> proxy  ("written", n) after each transaction; ("failed", "Error: text")
                     once, then it exits; ("finished",) after "finish".

A row is written with the settings (prices, secrets) of the config that served its
request: each request tuple names its settings generation, and the writer keeps the
last few.
"""

from __future__ import annotations

import marshal
import os
import signal
import sqlite3
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from hydrallm.config import Price
from hydrallm.observe.events import Redactor
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
from hydrallm.observe.prices import PriceBook
from hydrallm.observe.usage import Usage, from_body

HEADER = struct.Struct("<I")
BODY_LIMIT = 64 * 1024
_GENERATIONS_KEPT = 8
_SKIPPED = "skipped_cooldown"
_NO_TOKENS = (-1, -1, -1, -1)  # not reported (NULL)


def frame(message: tuple[Any, ...]) -> bytes:
    data = marshal.dumps(message)
    return HEADER.pack(len(data)) + data


@dataclass(frozen=True, slots=True)
class Settings:
    """What a row is written with, from the config that served its request."""

    prices: PriceBook
    model_names: dict[str, str]  # model id -> the name sent upstream
    redact: Redactor


def settings_message(
    generation: int,
    prices: tuple[tuple[str, Price], ...],
    model_names: dict[str, str],
    secrets: frozenset[str],
) -> tuple[Any, ...]:
    flat = tuple((name, p.input, p.output, p.cache_read, p.cache_write) for name, p in prices)
    return ("settings", generation, flat, dict(model_names), sorted(secrets))


class Writer:
    """One open journal file and the settings rows are written with."""

    def __init__(self, path: str, worker: int, bodies: bool, max_size: int) -> None:
        self.worker = worker
        self.bodies = bodies
        self.max_size = max_size
        self.settings: dict[int, Settings] = {}
        self.db: sqlite3.Connection = open_for_writing(Path(path))

    def close(self) -> None:
        self.db.close()

    def apply(self, message: tuple[Any, ...]) -> int:
        """Acts on one message from the proxy; returns the requests written."""
        kind = message[0]
        if kind == "rows":
            return self.write(message[1])
        if kind == "settings":
            _, generation, prices, model_names, secrets = message
            self.settings[generation] = Settings(
                PriceBook(tuple((p[0], Price(*p[1:])) for p in prices)),
                model_names,
                Redactor(secrets),
            )
            for old in sorted(self.settings)[:-_GENERATIONS_KEPT]:
                del self.settings[old]
        elif kind == "housekeeping":
            housekeeping(self.db, cutoff=message[1], max_size=self.max_size)
        return 0

    def write(self, batch: list[tuple[Any, ...]]) -> int:
        db = self.db
        attempts: list[tuple[Any, ...]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
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
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(batch)

    def _settings(self, generation: int) -> Settings:
        found = self.settings.get(generation)
        if found is None:  # older than the generations kept: the oldest kept
            found = self.settings[min(self.settings)] if self.settings else _DEFAULT
        return found

    def _rows(
        self, batch: list[tuple[Any, ...]], rowid: int, attempts: list[tuple[Any, ...]]
    ) -> Iterator[tuple[Any, ...]]:
        """The request rows of `batch` (rowids from `rowid` + 1); their attempt rows are
        added to `attempts` on the way.  No None in a row: -1 stands for NULL (see
        `journal_db.NULLABLE`).  The tuples' layout: `journal.JournalSink.request`."""
        worker = self.worker
        bodies = self.bodies
        last_generation = -1
        st = _DEFAULT
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
            generation,
            trail,
        ) in batch:
            if generation != last_generation:  # the same for long runs of rows
                last_generation, st = generation, self._settings(generation)
            rowid += 1
            retries = fallbacks = skips = 0
            key: str | int = -1
            ttft = -1.0
            served_ms = -1.0
            first = trail[0] if trail is not None and len(trail) == 1 else None
            # An attempt: (model, model_id, endpoint, key, outcome, status, error, latency,
            # waited, ttft, retry, fallback); a list: models left out (circuit open).
            if (
                type(first) is tuple
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
                redact = st.redact
                n = 0
                for a in trail:
                    if type(a) is list:
                        for skipped in a:
                            n += 1
                            attempts.append(
                                (rowid, n, -1, skipped, -1, -1, _SKIPPED, -1, -1, -1, -1)
                            )
                        skips += len(a)
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
                            -1 if a_error is None else redact(a_error),
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
                found = st.prices.cost(model_id, served_model, usage)
                cost = -1.0 if found is None else found
            req_body: str | int = -1
            resp_body: str | int = -1
            if bodies:
                req_body = _body(request_body, st)
                resp_body = _body(response_body, st)
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
                -1 if error is None else st.redact(error),
                session or -1,
                req_body,
                resp_body,
                served_ms,
            )


_DEFAULT = Settings(PriceBook(), {}, Redactor(()))


def _number(value: int | None) -> int:
    return -1 if value is None else value


def _body(body: tuple[bytes, int] | None, st: Settings) -> str | int:
    """A body as the proxy sent it: its first `BODY_LIMIT` bytes and its whole length."""
    if not body or not body[0]:
        return -1  # NULL
    data, size = body
    text = data[:BODY_LIMIT].decode("utf-8", "replace")
    if size > BODY_LIMIT:
        text += f"… ({size} bytes)"
    return st.redact(text)


def _read(stream: BinaryIO) -> tuple[Any, ...] | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None  # the proxy closed its end (or died)
    (size,) = HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    message: tuple[Any, ...] = marshal.loads(data)
    return message


def _background() -> None:
    """Runs this process only on a core nothing else wants (Linux's SCHED_IDLE; a low
    priority elsewhere).  As a nice-10 process it still held a core a few milliseconds
    when a proxy's request woke on a busy two-core machine: +2-5 ms at c1's p99.  The
    writer catches up in the gaps (measured: no row dropped at c16 with the load
    generator and the upstream on the same two cores); if it ever cannot, the pipe and
    then the proxy's deque hold the rows, and a full deque drops and counts them."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except (AttributeError, OSError):
            pass


def main() -> None:
    """The writer process: messages on stdin, replies on stdout (see the docstring)."""
    # The proxy decides when this ends (it sends "finish" or closes the pipe): a Ctrl-C
    # or a service manager's SIGTERM to the whole group must not lose the last batches.
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)):
        signal.signal(sig, signal.SIG_IGN)
    _background()
    replies = os.dup(1)
    # Nothing else may write into the replies' pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    stream = sys.stdin.buffer

    def reply(*message: Any) -> None:
        data = frame(message)
        while data:
            data = data[os.write(replies, data) :]

    writer: Writer | None = None
    try:
        while (message := _read(stream)) is not None:
            if message[0] == "open":
                writer = Writer(*message[1:])
            elif message[0] == "finish":
                reply("finished")
                break
            elif writer is not None:
                written = writer.apply(message)
                if written:
                    reply("written", written)
    except Exception as exc:  # any: reported to the proxy, which logs one line
        reply("failed", f"{type(exc).__name__}: {exc}")
    finally:
        if writer is not None:
            writer.close()


if __name__ == "__main__":
    main()
