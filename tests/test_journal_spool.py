"""The journal's spool: requests a proxy appended and no writer has loaded yet are what
a reader sees (`hydrallm log` loads them first), are loaded exactly once however many
loaders run at once, and survive a proxy that died."""

from __future__ import annotations

import json
import marshal
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hydrallm.config import JournalConfig
from hydrallm.observe import journal
from hydrallm.observe.events import AttemptEvent, RequestEvent
from hydrallm.observe.journal import JournalSink
from hydrallm.observe.journal_spool import (
    SpoolWriter,
    frame,
    ingest_pending,
    settings_message,
    spool_dir,
)
from test_journal_store import cli
from test_journal_store import event as store_event


def event(i: int) -> RequestEvent:
    return store_event(i, time.time())


def ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM requests ORDER BY rowid")]


def spooling_sink(db: Path) -> JournalSink:
    """A started sink without an event loop: it spools every `BATCH_ROWS` requests and
    asks its writer to load only when it closes, as a proxy that stays busy does."""
    sink = JournalSink(JournalConfig(path=str(db)))
    sink.start()
    return sink


def log_json(db: Path) -> list[dict[str, object]]:
    config = db.parent / "c.toml"
    config.write_text(
        f'[journal]\npath = "{db}"\n[endpoints.e]\nurl = "http://127.0.0.1:9"\n'
        '[[models]]\nendpoint = "e"\ntype = "openai"\nmodel = "m"\n'
    )
    done = cli("log", "-c", str(config), "--json", "-n", "100000")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_log_shows_what_a_busy_proxy_spooled_and_nothing_is_loaded_twice(
    tmp_path: Path,
) -> None:
    db = tmp_path / "j.db"
    sink = spooling_sink(db)
    try:
        n = 3 * journal.BATCH_ROWS
        for i in range(n):
            sink.request(event(i))
        assert ids(db) == []  # spooled, not loaded
        shown = log_json(db)
        assert sorted(r["id"] for r in shown) == sorted(f"r-{i}" for i in range(n))
        for i in range(n, n + journal.BATCH_ROWS):  # more after the reader loaded
            sink.request(event(i))
    finally:
        sink.close()  # the writer loads the rest from where the reader stopped
    assert ids(db) == [f"r-{i}" for i in range(n + journal.BATCH_ROWS)]
    assert list(spool_dir(db).iterdir()) == []  # closed and loaded: deleted


def write_segment(db: Path, rows: int, *, start: int = 0) -> Path:
    spool = SpoolWriter(spool_dir(db), lambda: frame(settings_message((), 0)))
    sink = JournalSink(JournalConfig(path=str(db)))  # not started: it only queues
    for i in range(start, start + rows):
        sink.request(event(i))
        if len(sink._rows) == 500:
            spool.append(frame(sink._take()))  # the frame a proxy spools
    if sink._rows:
        spool.append(frame(sink._take()))
    [path] = [p for p in spool_dir(db).glob("*.open")]
    spool.rotate()
    return path.with_suffix(".seg")


def test_loaders_at_once_load_every_request_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    for k in range(3):
        write_segment(db, 3000, start=k * 3000)
    code = (
        "import sys; from pathlib import Path; "
        "from hydrallm.observe.journal_spool import ingest_pending; "
        "ingest_pending(Path(sys.argv[1]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db)], env=env) for _ in range(3)]
    ingest_pending(db)  # and this process too
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert sorted(ids(db)) == sorted(f"r-{i}" for i in range(9000))
    assert list(spool_dir(db).iterdir()) == []


def test_a_dead_proxys_open_segment_is_loaded_and_a_torn_last_frame_dropped(
    tmp_path: Path,
) -> None:
    db = tmp_path / "j.db"
    path = write_segment(db, 700)
    # As a proxy killed in the middle of a write leaves it: still `.open`, named after a
    # process that is gone, its last frame cut short.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(gone.stdout)
    stamp, _, seq = path.stem.split("-")
    dead = path.with_name(f"{stamp}-{pid}-{seq}.open")
    data = path.read_bytes()
    torn = frame(("rows", [("x",) * 22]))
    dead.write_bytes(data + torn[: len(torn) // 2])
    path.unlink()
    ingest_pending(db)
    assert ids(db) == [f"r-{i}" for i in range(700)]
    assert list(spool_dir(db).iterdir()) == []


def test_a_damaged_segment_is_set_aside_and_the_others_load(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    good = write_segment(db, 50)
    bad = write_segment(db, 50, start=50)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # inside a frame of rows
    bad.write_bytes(bytes(data))
    ingest_pending(db)
    assert ids(db) == [f"r-{i}" for i in range(50)]
    assert not good.exists() and bad.with_suffix(".bad").exists()


def test_a_spool_of_the_previous_layout_loads_the_same_rows(tmp_path: Path) -> None:
    """Segments proxies of earlier versions left ("rows" whose first-try trails were
    [(key, ttft, latency, status)], or three values not in a list; "packed": shapes, then
    each row's own `marshal` data; "batch": shapes and the rows as one list) load into the
    same request and attempt rows as this version's ("rows": the rows in full, as one
    list, a first try's four values after the trail)."""

    def load(db: Path, layout: str) -> list[tuple[object, ...]]:
        spool = SpoolWriter(spool_dir(db), lambda: frame(settings_message((), 0)))
        sink = JournalSink(JournalConfig(path=str(db)))  # not started: it only queues
        for i in range(300):
            # a first try; a retry; a fallback after a model a cooldown left out
            steps = [attempt(n, last=n == i % 3).step() for n in range(1 + i % 3)]
            e = store_event(i, 1_700_000_000.0 + i)._replace(endpoint="e", trail=steps)
            if i % 3 == 0:  # a first try that answered, as the proxy hands it over
                first = steps[0]
                e = e._replace(trail=None, first_key=first[3], first_ttft=first[9])
                e = e._replace(first_latency=first[7], first_status=first[5])
            if i % 3 == 2:
                steps.insert(2, (None, ("cold",)))
            sink.request(e)
        kind, rows = sink._take()
        assert kind == "rows"
        if layout == "rows":
            spool.append(frame((kind, rows)))
            assert sum(1 for row in rows if row[21] is None) == 100
        else:  # as the earlier versions wrote them
            rows = [listed(row) for row in rows]
        if layout == "listed":
            spool.append(frame((kind, rows)))
        elif layout != "rows":
            # A first try's trail was three values of its attempt (read back into the whole).
            rows = [compact(row) for row in rows]
            assert sum(1 for row in rows if not isinstance(row[21][0], tuple)) == 100
        if layout == "compact":
            spool.append(frame((kind, rows)))
        elif layout in ("batch", "packed"):
            shapes: dict[tuple[object, ...], int] = {}
            old = []
            for row in rows:
                at = shapes.setdefault(row[2:10], len(shapes))
                old.append((*row[:2], at, *row[10:21], row[21]))
            if layout == "batch":
                spool.append(frame(("batch", list(shapes), old)))
            else:
                packed = b"".join(marshal.dumps(row, 2) for row in old)
                spool.append(frame(("packed", list(shapes), packed)))
        spool.rotate()
        ingest_pending(db)
        with sqlite3.connect(db) as conn:
            found = conn.execute("SELECT * FROM requests ORDER BY id").fetchall()
            found += conn.execute("SELECT * FROM attempts ORDER BY 1, 2").fetchall()
        return found

    def listed(row: tuple[Any, ...]) -> tuple[Any, ...]:
        if row[21] is None:  # a first try's four values: [(key, ttft, latency, status)]
            return (*row[:21], [tuple(row[22:26])])
        return row[:22]

    def compact(row: tuple[Any, ...]) -> tuple[Any, ...]:
        trail = row[21]
        if len(trail[0]) == 4:  # (key, ttft, latency, status): (key, ttft, latency)
            return (*row[:21], trail[0][:3])
        return (*row[:21], tuple(trail))

    def attempt(n: int, *, last: bool) -> AttemptEvent:
        return AttemptEvent(
            listener="default",
            route="default",
            model_id="m" if n < 2 else "fallback",
            endpoint="e",
            model="claude-sonnet-4-5",
            cycle=1,
            attempt=n + 1,
            outcome="success" if last else "http_error",
            status=200 if last else 529,
            error=None if last else "overloaded",
            latency=0.25,
            ttft=0.1,
            retry=n == 1,
            fallback=n == 2,
            waited=0.5 * n,
            key="sk-…abcd",
        )

    now = load(tmp_path / "now.db", "rows")
    assert len(now) == 300 + 600  # every request, the attempts and skips of 200
    assert now == load(tmp_path / "listed.db", "listed")
    assert now == load(tmp_path / "compact.db", "compact")
    assert now == load(tmp_path / "packed.db", "packed")
    assert now == load(tmp_path / "batch.db", "batch")
