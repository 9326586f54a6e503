"""The journal's spool: requests appended to files by the proxy, loaded into SQLite later.

Why: building rows and writing SQLite costs ~30 µs a request.  Done while the proxy is
busy, even in a process of its own on the other core, it took 15-17 % of a two-core
machine's c16 throughput and +0.2 ms of c1's p99 (measured; see `journal.py`).  The proxy
now only appends its flat request tuples, `marshal`led in batches, to a segment file (one
`write` per batch of up to 256 requests, ~1 µs a request).  The rows are built and
written when the proxy is not busy (`journal.JournalSink` decides), or when someone reads
the journal: `hydrallm log`/`usage` and the status page's charts load what is pending
first, so nothing they show is stale.

A segment: `<journal>.spool/<start>-<pid>-<seq>.open` while its process appends to it,
renamed `.seg` when closed.  It starts with the settings frame (prices) its rows are
priced with; a reload starts a new segment.  Frames as the writer's messages: a 4-byte
length, then `marshal` data.  A process that died leaves an `.open` segment: whoever
ingests next treats it as closed (its pid is gone); a torn last frame is dropped.

Loading is exactly-once without a lock of its own: each step is one SQLite transaction
(`BEGIN IMMEDIATE`, which any other loader waits for) that reads how far the segment was
loaded (table `spool`), loads the next whole frames, and records the new offset; a
closed segment loaded to its end is deleted in the same transaction.  So the proxy's
writer process, a second worker's, and a `hydrallm log` in another terminal can all load
at once, and a crash at any point loads nothing twice (a file deleted whose row was not:
the row names a missing file, harmless; never the other way round).

No secret reaches a segment: errors and bodies are redacted on the proxy's side before
they are queued, and the settings frame holds prices only.
"""

from __future__ import annotations

import io
import marshal
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from hydrallm.observe.rowcodec import encode

if TYPE_CHECKING:
    from hydrallm.config import Price
    from hydrallm.observe.journal_writer import Writer

__all__ = [
    "HEADER",
    "SpoolWriter",
    "frame",
    "frame_data",
    "ingest",
    "ingest_pending",
    "pending_bytes",
    "settings_message",
    "spool_dir",
    "unframe",
]

HEADER = struct.Struct("<I")
STEP_BYTES = 512 * 1024  # loaded per transaction: ~1,500 requests, tens of milliseconds
OPEN, CLOSED = ".open", ".seg"


def frame(message: tuple[Any, ...]) -> bytes:
    return frame_data(encode(message))  # as `marshal.dumps` writes it; `loads` reads it


def frame_data(data: bytes) -> bytes:
    """A frame of a message already encoded."""
    return HEADER.pack(len(data)) + data


def unframe(buf: bytearray) -> list[Any]:
    """The whole messages at the start of `buf`, taken out of it (a partial one stays)."""
    messages = []
    while len(buf) >= HEADER.size:
        (size,) = HEADER.unpack_from(buf)
        if len(buf) < HEADER.size + size:
            break
        messages.append(marshal.loads(buf[HEADER.size : HEADER.size + size]))
        del buf[: HEADER.size + size]
    return messages


def settings_message(prices: tuple[tuple[str, Price], ...], worker: int) -> tuple[Any, ...]:
    """The frame a segment starts with: what its rows are priced with, and whose they are."""
    flat = tuple((name, p.input, p.output, p.cache_read, p.cache_write) for name, p in prices)
    return ("settings", flat, worker)


def spool_dir(db: Path) -> Path:
    return db.with_name(db.name + ".spool")


class SpoolWriter:
    """The proxy's side: appends frames to its current segment (blocking writes to a
    regular file, which the page cache absorbs in microseconds)."""

    def __init__(self, directory: Path, header: Callable[[], bytes]) -> None:
        self.directory = directory
        self._header = header  # the settings frame each segment starts with
        self._stamp = ""  # set by the process that first writes (workers are forked)
        self._seq = 0
        self._fd = -1
        self._path: Path | None = None
        self.size = 0  # bytes of requests in the current segment

    def append(self, data: bytes) -> None:
        if self._fd < 0:
            self._open()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(data)

    def rotate(self) -> bool:
        """Close the current segment (it can be loaded whole, then deleted); True if there
        was one."""
        fd, self._fd = self._fd, -1
        if fd < 0 or self._path is None:
            return False
        os.close(fd)
        os.replace(self._path, self._path.with_suffix(CLOSED))
        self._path = None
        self.size = 0
        return True

    def _open(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self._stamp.endswith(f"-{os.getpid()}"):
            self._stamp, self._seq = f"{time.time_ns():016x}-{os.getpid()}", 0
        self._seq += 1
        path = self.directory / f"{self._stamp}-{self._seq:08d}{OPEN}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(path, flags, 0o600)
        self._path = path
        self.size = 0
        header = self._header()
        try:
            while header:
                header = header[os.write(self._fd, header) :]
        except OSError:
            self.rotate()
            raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: alive
    return True


def _segments(directory: Path) -> list[tuple[str, Path, bool]]:
    """(name, path, closed) of every segment, oldest process first."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:  # none yet, or not a directory: the writer reports what is wrong
        return []
    found = []
    for entry in entries:
        name, dot, ext = entry.name.rpartition(".")
        if not dot or "." + ext not in (OPEN, CLOSED):
            continue
        closed = "." + ext == CLOSED
        if not closed:
            try:
                closed = not _alive(int(name.split("-")[1]))
            except (IndexError, ValueError):
                continue
        found.append((name, Path(entry.path), closed))
    return found


def _frames(f: BinaryIO, limit: int) -> tuple[list[Any], int, bool]:
    """Whole frames from `f`'s position, up to about `limit` bytes: (messages, bytes
    used, at the end).  A torn frame at the end is not used."""
    messages: list[Any] = []
    used = 0
    while used < limit:
        header = f.read(HEADER.size)
        if len(header) < HEADER.size:
            return messages, used, True
        (size,) = HEADER.unpack(header)
        data = f.read(size)
        if len(data) < size:
            return messages, used, True
        messages.append(marshal.loads(data))
        used += HEADER.size + size
    return messages, used, False


def rows_of(message: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    """The request tuples of a spooled message, in the layout `Writer._rows` reads.

    "rows" (`JournalSink._take`): the rows in that layout, as one list, each trail a list
    of steps, and after it the four values of a first try that answered when the request
    has no trail (`RequestEvent.first_key` ...).  Spools of the two previous versions have
    no such values: such a request's trail is [(key, ttft, latency, status)] of that
    attempt, or (key, ttft, latency), not in a list.
    Spools of earlier versions: "packed": what many requests share (listener, route,
    method, path, requested model, served model, model id, endpoint) once, as `shapes`,
    then each row's own `marshal` data end to end, a row naming its shape; "batch": the
    same rows as one list."""
    # Here, not at the top: the writer process does not load events.py (nor asyncio).
    from hydrallm.observe.events import first_try_step

    kind = message[0]
    rows: Iterable[tuple[Any, ...]]
    if kind == "rows":
        rows = message[1]
    elif kind in ("packed", "batch"):
        # A row: (request_id, started_at, shape, status, attempts, recovered, latency,
        # streamed, body_bytes, usage, error, session, request_body, response_body,
        # trail); its shape's eight values in its place give this version's layout.
        shapes = message[1]
        old = _unpacked(message[2]) if kind == "packed" else message[2]
        rows = ((*r[:2], *shapes[r[2]], *r[3:]) for r in old)
    else:
        return
    for row in rows:
        trail = row[21]
        if len(row) > 22:
            # Served by its first try (its latency is set): that attempt's model and
            # endpoint are the request's.
            if trail is None and row[24] is not None:
                yield (*row[:21], (first_try_step(*row[7:10], *row[22:26]),))
            else:
                yield row[:22]
        elif trail and not isinstance(trail[0], tuple):
            # (The previous version.)  Served by its first try: (key, ttft, latency) of
            # that attempt, whose model, endpoint and status are the request's.
            key, ttft, latency = trail
            yield (
                *row[:21],
                (first_try_step(row[7], row[8], row[9], key, ttft, latency, row[10]),),
            )
        elif trail and len(trail) == 1 and len(trail[0]) == 4:
            # Served by its first try: that attempt's model and endpoint are the request's.
            key, ttft, latency, status = trail[0]
            yield (*row[:21], (first_try_step(row[7], row[8], row[9], key, ttft, latency, status),))
        else:
            yield row


def _unpacked(data: bytes) -> Iterator[tuple[Any, ...]]:
    f = io.BytesIO(data)
    end = len(data)
    while f.tell() < end:
        yield marshal.load(f)


def _step(writer: Writer, name: str, path: Path, closed: bool) -> tuple[int, bool]:
    """Loads the next frames of one segment in one transaction: (requests, finished)."""
    db = writer.db
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute("SELECT loaded FROM spool WHERE name = ?", (name,)).fetchone()
        try:
            f = path.open("rb")
        except FileNotFoundError:
            try:  # closed (renamed) since it was listed, or loaded and deleted by another
                f = path.with_suffix(CLOSED).open("rb")
                closed = True
            except FileNotFoundError:
                db.execute("ROLLBACK")
                return 0, True
        with f:
            try:
                first, start, _ = _frames(f, 1)
                if not first:  # not even its settings yet
                    db.execute("ROLLBACK")
                    return 0, True
                writer.use_settings(first[0])
                offset = start if row is None else int(row[0])
                f.seek(offset)
                messages, used, end = _frames(f, STEP_BYTES)
                rows = [r for m in messages for r in rows_of(m)]
                if rows:
                    writer.insert(rows)
            except (ValueError, EOFError, TypeError, IndexError, KeyError):
                # Not what a proxy writes (a damaged disk, another program): nothing of it
                # is loaded; it is kept aside for a person to look at, out of the way.
                db.execute("ROLLBACK")
                os.replace(f.name, Path(f.name).with_suffix(".bad"))
                db.execute("DELETE FROM spool WHERE name = ?", (name,))
                return 0, True
        finished = end and closed
        if finished:
            os.unlink(f.name)
            db.execute("DELETE FROM spool WHERE name = ?", (name,))
        elif used:
            db.execute("INSERT OR REPLACE INTO spool VALUES (?, ?)", (name, offset + used))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return len(rows), finished or end


def ingest(
    writer: Writer,
    directory: Path,
    *,
    stop: Callable[[], bool] = lambda: False,
    written: Callable[[int], None] = lambda n: None,
) -> bool:
    """Loads every segment's whole frames into `writer`'s file; False if `stop` said so
    before the end."""
    for name, path, closed in _segments(directory):
        while True:
            n, done = _step(writer, name, path, closed)
            if n:
                written(n)
            if done:
                break
            if stop():
                return False
    return True


def pending_bytes(directory: Path) -> int:
    """About how much is not loaded yet (segments' sizes; loaded parts are not subtracted
    for a segment still open)."""
    total = 0
    for _, path, _ in _segments(directory):
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total


def ingest_pending(db: Path) -> None:
    """For a reader: load what the proxies have spooled, so that what it shows is current.
    A journal this process cannot write (read-only, locked past the busy timeout) is read
    as it is."""
    directory = spool_dir(db)
    if not directory.is_dir():
        return
    import sqlite3

    from hydrallm.observe.journal_writer import Writer

    try:
        writer = Writer(str(db))
    except (sqlite3.Error, OSError):
        return
    try:
        ingest(writer, directory)
    except (sqlite3.Error, OSError, ValueError, EOFError):
        pass
    finally:
        writer.close()
