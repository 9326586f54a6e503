"""The journal file: nothing secret and no prompt in it, limits kept, a bad file never
breaks a request, two worker processes writing into it at once; and the commands that
read it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from hydrallm.config import JournalConfig
from hydrallm.observe.events import RequestEvent
from hydrallm.observe.journal import JournalSink
from hydrallm.observe.journal_query import open_readonly, requests
from hydrallm.observe.journal_spool import spool_dir
from hydrallm.testing import FakeUpstream, faults
from hydrallm.testing.harness import ProxyHarness
from opshelp import HYDRALLM, two_workers

PROMPT = "PROMPT-CANARY-7f3a the launch codes are in the drawer"
UPSTREAM_KEY = "sk-upstream-secret-abcdef123456"
PROXY_KEY = "proxy-secret-key-987654"


def secret_config(db: Path, url: str, *, bodies: bool) -> str:
    return f"""
[server]
auth_keys = ["{PROXY_KEY}"]
[retry]
default_interval = "1ms"
max_cycles = 1
[journal]
path = "{db}"
bodies = {"true" if bodies else "false"}
[endpoints.bad]
url = "{url}/v1"
api_key = "{UPSTREAM_KEY}"
[endpoints.good]
url = "{url}/v1"
api_key = "{UPSTREAM_KEY}"
[[models]]
endpoint = "bad"
type = "openai"
model = "first"
[[models]]
endpoint = "good"
type = "openai"
model = "second"
"""


def file_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.rglob(db.name + "*") if p.is_file())


async def run_secret_scenario(db: Path, *, bodies: bool) -> bytes:
    async with FakeUpstream() as up:
        up.script(faults.status(500, {"error": {"message": f"bad key {UPSTREAM_KEY}"}}))
        async with ProxyHarness(secret_config(db, up.url, bodies=bodies), level="info") as px:
            async with openai.AsyncOpenAI(
                base_url=px.url() + "/v1", api_key=PROXY_KEY, max_retries=0
            ) as client:
                # A user who pastes a key into the prompt: with bodies on it is redacted too.
                content = f"{PROMPT} {UPSTREAM_KEY}"
                await client.chat.completions.create(
                    model="x", messages=[{"role": "user", "content": content}]
                )
                stream = await client.chat.completions.create(
                    model="x", messages=[{"role": "user", "content": content}], stream=True
                )
                _ = [c async for c in stream]
            # What the proxy spools before the writer loads it (and deletes it) is
            # scanned too.
            sink = next(x for x in px.proxy.state.telemetry.sinks if isinstance(x, JournalSink))
            sink.flush()
            spooled = b"".join(p.read_bytes() for p in spool_dir(db).iterdir())
            assert b"second" in spooled  # the served model: the requests are in it
    conn = open_readonly(db)
    try:
        assert len(requests(conn)) == 2  # the rows are there: the scan below means something
    finally:
        conn.close()
    return file_bytes(db) + spooled


async def test_no_secret_and_no_prompt_in_the_file(tmp_path: Path) -> None:
    data = await run_secret_scenario(tmp_path / "j.db", bodies=False)
    for secret in (UPSTREAM_KEY, PROXY_KEY, "PROMPT-CANARY", "launch codes"):
        assert secret.encode() not in data, secret


async def test_bodies_on_keeps_the_prompt_but_still_no_secret(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    data = await run_secret_scenario(db, bodies=True)
    assert b"PROMPT-CANARY-7f3a" in data
    for secret in (UPSTREAM_KEY, PROXY_KEY):
        assert secret.encode() not in data, secret


# --- limits -------------------------------------------------------------------------------


def event(i: int, at: float) -> RequestEvent:
    return RequestEvent(
        request_id=f"r-{i}",
        listener="default",
        route="default",
        method="POST",
        path="/v1/messages",
        served_by="m",
        attempts=1,
        status=200,
        latency=0.5,
        streamed=True,
        started_at=at,
        error="x" * 200,  # a few hundred bytes a row, to reach a size limit quickly
        served_model="claude-sonnet-4-5",
    )


def fill(db: Path, events: list[RequestEvent]) -> None:
    sink = JournalSink(JournalConfig(path=str(db), retention=1e9, max_size=1 << 40))
    sink.start()
    for e in events:
        sink.request(e)
    sink.close()
    assert sink.written == len(events) and sink.error is None


def ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM requests ORDER BY rowid")]


def test_what_was_not_known_is_null_and_a_trail_keeps_its_order(tmp_path: Path) -> None:
    # The writer binds "" and -1 for "not known" (cheaper than None in sqlite3); a reader
    # must still see NULL, and the attempt trail in the order it happened.
    from hydrallm.observe.events import AttemptEvent, TrailStep
    from hydrallm.observe.journal_query import one

    db = tmp_path / "j.db"
    sink = JournalSink(JournalConfig(path=str(db)))
    sink.start()
    steps: list[TrailStep] = [(None, ("cold-a", "cold-b"))]
    for n, (outcome, status) in enumerate((("connect_error", None), ("success", 200)), 1):
        steps.append(
            AttemptEvent("default", "default", "m", "up", "*", 0, n, outcome, status,
                         None if status else "refused", 0.01, None, False, n == 2).step()
        )  # fmt: skip
    plain = event(1, time.time())._replace(error=None, requested_model="asked-for", trail=steps)
    sink.request(plain)
    sink.close()
    conn = open_readonly(db)
    try:
        row = one(conn, "r-1")
    finally:
        conn.close()
    assert row is not None
    for column in (
        "key",
        "recovered",
        "ttft_ms",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "cache_read_tokens",
        "cache_write_tokens",
        "error",
        "session",
        "endpoint",
    ):
        assert row[column] is None, column  # fmt: skip
    assert (row["skips"], row["fallbacks"], row["requested_model"]) == (2, 1, "asked-for")
    trail = [(t["outcome"], t["model"], t["status"], t["error"]) for t in row["attempt_trail"]]
    assert trail == [
        ("skipped_cooldown", None, None, None),
        ("skipped_cooldown", None, None, None),
        ("connect_error", "asked-for", None, "refused"),  # "*": the model the client asked for
        ("success", "asked-for", 200, None),
    ]


def test_a_first_try_success_has_the_same_trail_without_an_attempt_row(tmp_path: Path) -> None:
    from hydrallm.observe.events import AttemptEvent
    from hydrallm.observe.journal_query import one

    db = tmp_path / "j.db"
    sink = JournalSink(JournalConfig(path=str(db)))
    sink.start()
    for rid, waited in (("plain", 0.0), ("held", 0.25)):  # a wait first: written apart
        first = AttemptEvent("default", "default", "m", "up", "claude-sonnet-4-5", 0, 1,
                             "success", 200, None, 0.0123, 0.004, False, False, waited=waited,
                             key="…0001").step()  # fmt: skip
        e = event(0, time.time())._replace(request_id=rid, error=None, endpoint="up", trail=[first])
        sink.request(e)
    sink.close()
    conn = open_readonly(db)
    try:
        plain, held = one(conn, "plain"), one(conn, "held")
        (rows,) = conn.execute("SELECT count(*) FROM attempts").fetchone()
    finally:
        conn.close()
    assert plain is not None and held is not None and rows == 1  # only the held one's
    expected = {"model": "claude-sonnet-4-5", "endpoint": "up", "key": "…0001",
                "outcome": "success", "status": 200, "error": None, "latency_ms": 12.3}  # fmt: skip
    assert plain["attempt_trail"] == [expected | {"waited_ms": 0.0}]
    assert held["attempt_trail"] == [expected | {"waited_ms": 250.0}]
    assert plain["ttft_ms"] == 4.0 and plain["key"] == "…0001" and "attempt_ms" not in plain


def test_a_version_1_file_is_moved_to_version_2_with_its_trails(tmp_path: Path) -> None:
    from hydrallm.observe.journal_db import ATTEMPT_COLUMNS, REQUEST_COLUMNS
    from hydrallm.observe.journal_query import one

    v1_columns = [c for c in REQUEST_COLUMNS if c != "attempt_ms"]

    db = tmp_path / "j.db"
    at = time.time() - 60
    with sqlite3.connect(db) as conn:  # the version 1 schema, as the first release wrote it
        conn.executescript(f"""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
            INSERT INTO meta VALUES ('schema_version', '1');
            CREATE TABLE requests (rowid INTEGER PRIMARY KEY, {", ".join(v1_columns)});
            CREATE INDEX requests_time ON requests(time);
            CREATE INDEX requests_id ON requests(id);
            CREATE TABLE attempts ({", ".join(ATTEMPT_COLUMNS)});
            CREATE INDEX attempts_request ON attempts(request);
            INSERT INTO requests (rowid, id, time, status) VALUES (1, 'old-1', {at}, 200);
            INSERT INTO attempts (request, n, model, outcome) VALUES (1, 0, NULL, 'skipped_cooldown');
            INSERT INTO attempts (request, n, model, outcome) VALUES (1, 1, 'a', 'status');
            INSERT INTO attempts (request, n, model, outcome) VALUES (1, 2, 'b', 'success');
        """)  # fmt: skip
    fill(db, [event(2, time.time())])
    conn2 = open_readonly(db)
    try:
        old, new = one(conn2, "old-1"), one(conn2, "r-2")
        (version,) = conn2.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    finally:
        conn2.close()
    assert version == "2"
    assert old is not None and new is not None and new["rowid"] == 2
    assert [t["outcome"] for t in old["attempt_trail"]] == ["skipped_cooldown", "status", "success"]


def test_retention_drops_old_rows_at_startup(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    now = time.time()
    fill(db, [event(0, now - 3 * 86400), event(1, now - 2 * 86400), event(2, now - 60)])
    sink = JournalSink(JournalConfig(path=str(db), retention=86400.0))
    sink.start()
    sink.close()
    assert ids(db) == ["r-2"]


def test_size_limit_drops_the_oldest_rows_and_shrinks_the_file(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    now = time.time()
    fill(db, [event(i, now - 1000 + i * 0.1) for i in range(3000)])
    limit = 128 * 1024
    assert db.stat().st_size > 4 * limit
    sink = JournalSink(JournalConfig(path=str(db), max_size=limit))
    sink.start()
    sink.close()
    kept = ids(db)
    assert 0 < len(kept) < 3000
    assert kept[-1] == "r-2999" and kept == [f"r-{i}" for i in range(3000 - len(kept), 3000)]
    assert db.stat().st_size <= limit
    with sqlite3.connect(db) as conn:
        (orphans,) = conn.execute(
            "SELECT count(*) FROM attempts WHERE request NOT IN (SELECT rowid FROM requests)"
        ).fetchone()
    assert orphans == 0


def test_a_full_queue_drops_the_oldest_rows_and_counts_them(tmp_path: Path) -> None:
    sink = JournalSink(JournalConfig(path=str(tmp_path / "j.db")))  # not started: no writer
    from hydrallm.observe import journal

    for i in range(journal.QUEUE_LIMIT + 5):
        sink.request(event(i, 0.0))
    assert sink.dropped == 5 and sink.status()["dropped"] == 5
    # The same for rows queued as they are (a first try that answered, no error).
    sink = JournalSink(JournalConfig(path=str(tmp_path / "j.db")))
    first_try = event(0, 0.0)._replace(error=None, first_latency=0.1, first_status=200)
    for i in range(journal.QUEUE_LIMIT + 7):
        sink.request(first_try._replace(request_id=f"r-{i}"))
    assert sink.dropped == 7 and sink.status()["queued"] == journal.QUEUE_LIMIT


def test_a_secret_in_an_attempts_error_is_redacted_before_it_is_spooled(tmp_path: Path) -> None:
    # An attempt's error (a connect error naming a URL with credentials, an upstream that
    # echoes the key) is redacted in the trail, in the spool and in the file, and the
    # rest of the error is kept.
    from hydrallm.observe.events import AttemptEvent
    from hydrallm.observe.journal_query import one

    db = tmp_path / "j.db"
    sink = JournalSink(JournalConfig(path=str(db)), secrets=frozenset({UPSTREAM_KEY}))
    sink.start()
    failed = AttemptEvent("default", "default", "m", "up", "model-0", 1, 1, "connect_error",
                          None, f"cannot connect to https://u:{UPSTREAM_KEY}@up.example/v1",
                          0.01, None, False, False)  # fmt: skip
    sink.request(event(0, time.time())._replace(error=None, trail=[failed.step()]))
    # A first try's four values, with an error (redacting keeps them).
    sink.request(event(1, time.time())._replace(first_latency=0.02, first_status=200))
    sink.flush()
    spooled = b"".join(p.read_bytes() for p in spool_dir(db).iterdir())
    assert b"cannot connect to" in spooled and UPSTREAM_KEY.encode() not in spooled
    sink.close()
    assert UPSTREAM_KEY.encode() not in file_bytes(db)
    conn = open_readonly(db)
    try:
        row = one(conn, "r-0")
    finally:
        conn.close()
    assert row is not None
    [step] = row["attempt_trail"]
    assert step["outcome"] == "connect_error" and step["error"].startswith("cannot connect to")
    assert ids(db) == ["r-0", "r-1"]


def test_a_request_with_neither_trail_nor_error_is_written(tmp_path: Path) -> None:
    # Whatever path ends a request without attempts, its row is written, never an
    # exception in the handler that ends it.
    db = tmp_path / "j.db"
    sink = JournalSink(JournalConfig(path=str(db)))
    sink.start()
    sink.request(event(0, time.time())._replace(error=None))
    sink.close()
    assert ids(db) == ["r-0"] and sink.error is None


def test_the_first_request_after_a_busy_time_tells_a_catching_up_writer_to_hold(
    tmp_path: Path,
) -> None:
    # The writer was handed a busy time's backlog; the next request tells it to stop after
    # its transaction (the proxy has work again), once, and its row is queued as any other.
    sink = JournalSink(JournalConfig(path=str(tmp_path / "j.db")))  # not started: no writer
    first_try = event(0, 0.0)._replace(error=None, first_latency=0.1, first_status=200)
    sink._load(catch_up=True)
    sent = sink._writer._control
    assert ("hold",) not in sent
    sink.request(first_try)
    sink.request(first_try._replace(request_id="r-1"))
    assert sent.count(("hold",)) == 1
    assert sink.status()["queued"] == 2
    sink._load(catch_up=False)  # a quiet proxy's load: nobody holds it
    sink.request(first_try._replace(request_id="r-2"))
    assert sent.count(("hold",)) == 1


def test_a_spool_the_writer_cannot_keep_up_with_drops_new_rows_and_counts_them(
    tmp_path: Path,
) -> None:
    from hydrallm.observe import journal

    # No event loop: the writer is asked to load only when the sink closes, so the spool
    # fills up; it may hold no more than the journal file may (`max_size`).
    limit = 64 * 1024
    sink = JournalSink(JournalConfig(path=str(tmp_path / "j.db"), max_size=limit))
    sink.start()
    n = 16 * journal.BATCH_ROWS
    for i in range(n):
        sink.request(event(i, time.time()))
    spooled = n - sink.dropped
    assert 0 < spooled < n and spooled % journal.BATCH_ROWS == 0  # whole batches, then none
    assert sink.status()["dropped"] == sink.dropped
    assert sink.status()["spooled_bytes"] > limit  # what made it drop
    sink.close()
    assert sink.written == spooled and sink.error is None
    kept = ids(tmp_path / "j.db")  # then the size limit keeps the newest of them
    assert kept and kept == [f"r-{i}" for i in range(spooled - len(kept), spooled)]


# --- a bad file never breaks a request ------------------------------------------------------


def one_model(db: Path, url: str) -> str:
    return f"""
[journal]
path = "{db}"
[endpoints.up]
url = "{url}/v1"
api_key = "sk-any-0001"
[[models]]
endpoint = "up"
type = "openai"
model = "m"
"""


async def serve_three(db: Path) -> tuple[str, dict[str, Any]]:
    async with FakeUpstream() as up, ProxyHarness(one_model(db, up.url), level="info") as px:
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                body = {"model": "m", "messages": []}
                async with s.post(px.url() + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
            async with s.get(px.url() + "/_hydrallm/status.json") as r:
                status = await r.json()
        return px.logs(), status


async def test_a_corrupt_file_is_reported_once_and_requests_go_on(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    db.write_bytes(b"this is not a database\n" * 400)
    logs, status = await serve_three(db)
    lines = [ln for ln in logs.splitlines() if " journal " in ln]
    assert len(lines) == 1 and "disabled" in lines[0], logs
    assert status["journal"]["enabled"] is False and status["journal"]["error"]
    assert db.read_bytes() == b"this is not a database\n" * 400  # left as it was


async def test_an_unwritable_place_is_reported_once_and_requests_go_on(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    logs, status = await serve_three(blocker / "journal.db")
    lines = [ln for ln in logs.splitlines() if " journal " in ln]
    assert len(lines) == 1 and "disabled" in lines[0], logs
    assert status["journal"]["enabled"] is False


async def test_a_file_that_turns_read_only_mid_run(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with FakeUpstream() as up, ProxyHarness(one_model(db, up.url), level="info") as px:
        async with aiohttp.ClientSession() as s:
            body = {"model": "m", "messages": []}
            async with s.post(px.url() + "/v1/chat/completions", json=body) as r:
                assert r.status == 200
            sink = next(x for x in px.proxy.state.telemetry.sinks if isinstance(x, JournalSink))
            for _ in range(100):
                if sink.written:
                    break
                await asyncio.sleep(0.05)
            # Another program takes the write lock and keeps it: writes fail after the
            # busy timeout; the proxy must not care.
            holder = sqlite3.connect(db, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            try:
                for _ in range(5):
                    async with s.post(px.url() + "/v1/chat/completions", json=body) as r:
                        assert r.status == 200
                for _ in range(200):
                    if not sink.enabled:
                        break
                    await asyncio.sleep(0.05)
                async with s.post(px.url() + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
            finally:
                holder.execute("ROLLBACK")
                holder.close()
        logs = px.logs()
    assert [ln for ln in logs.splitlines() if " journal " in ln].__len__() == 1, logs
    assert "locked" in logs


# --- two workers --------------------------------------------------------------------------


async def test_two_worker_processes_write_into_one_file(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with FakeUpstream() as up, two_workers(tmp_path, one_model(db, up.url)) as (proc, base):
        connector = aiohttp.TCPConnector(force_close=True, limit=16)
        async with aiohttp.ClientSession(connector=connector) as s:

            async def one(i: int) -> str:
                body = {"model": "m", "messages": [], "stream": i % 2 == 0}
                async with s.post(base + "/v1/chat/completions", json=body) as r:
                    await r.read()
                    assert r.status == 200
                    return r.headers["x-hydrallm-request-id"]

            sent = await asyncio.gather(*(one(i) for i in range(200)))
        assert await proc.stop() == 0
    conn = open_readonly(db)
    try:
        got = conn.execute("SELECT id, worker FROM requests").fetchall()
    finally:
        conn.close()
    assert sorted(r["id"] for r in got) == sorted(sent)
    assert {r["worker"] for r in got} == {0, 1}, "both workers wrote"


# --- the commands ---------------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    """The environment a user's `hydrallm log` runs in: none of the test's HYDRALLM_*."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HYDRALLM")}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**cli_env(), "COLUMNS": "200"}
    return subprocess.run(
        [HYDRALLM, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


async def ask(s: aiohttp.ClientSession, url: str, model: str) -> None:
    async with s.post(url + "/v1/chat/completions", json={"model": model, "messages": []}) as r:
        assert r.status == 200


async def test_log_and_usage_commands(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    cfg = tmp_path / "config.toml"
    extra = "[cooldown]\nenabled = false\n"
    async with (
        FakeUpstream(default=faults.status(503)) as bad,
        FakeUpstream() as good,
    ):
        text = (
            f'[retry]\ndefault_interval = "1ms"\nmax_cycles = 1\n{extra}'
            f'[journal]\npath = "{db}"\n'
            f'[endpoints.a]\nurl = "{bad.url}/v1"\napi_key = "sk-a-00001"\n'
            f'[endpoints.b]\nurl = "{good.url}/v1"\napi_key = "sk-b-00001"\n'
            '[[models]]\nendpoint = "a"\ntype = "openai"\nmodel = "gpt-4o"\n'
            '[[models]]\nendpoint = "b"\ntype = "openai"\nmodel = "gpt-4o-mini"\n'
        )
        cfg.write_text(text)
        async with ProxyHarness(text) as px, aiohttp.ClientSession() as s:
            rid = ""
            for model in ("alpha", "beta", "gamma"):
                body = {"model": model, "messages": []}
                async with s.post(px.url() + "/v1/chat/completions", json=body) as r:
                    rid = r.headers["x-hydrallm-request-id"]
    lines = cli("log", "--json", "-c", str(cfg)).stdout.splitlines()
    rows = [json.loads(ln) for ln in lines]
    assert [r["requested_model"] for r in rows] == ["gamma", "beta", "alpha"]  # newest first
    needed = [
        "id",
        "time",
        "listener",
        "requested_model",
        "served_model",
        "endpoint",
        "status",
        "attempts",
        "latency_ms",
        "ttft_ms",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost_usd",
        "recovered",
        "error",
    ]
    assert all(set(needed) <= set(r) for r in rows)
    assert {r["served_model"] for r in rows} == {"gpt-4o-mini"}
    assert all(r["cost_usd"] is not None and r["cost_usd"] > 0 for r in rows)
    assert len(cli("log", "--json", "-n", "2", "-c", str(cfg)).stdout.splitlines()) == 2
    assert cli("log", "--json", "--model", "be*", "-c", str(cfg)).stdout.count('"beta"') == 1
    assert cli("log", "--json", "--failed", "-c", str(cfg)).stdout == ""

    detail = json.loads(cli("log", rid, "--json", "-c", str(cfg)).stdout)
    trail = [(a["model"], a["outcome"], a["status"]) for a in detail["attempt_trail"]]
    assert trail == [("gpt-4o", "status", 503), ("gpt-4o-mini", "success", 200)]
    assert set(detail["attempt_trail"][0]) >= {
        "endpoint",
        "key",
        "error",
        "latency_ms",
        "waited_ms",
    }
    human = cli("log", rid, "-c", str(cfg)).stdout
    assert "gpt-4o-mini" in human and "503" in human and "fell_back" in human
    missing = cli("log", "nope", "-c", str(cfg))
    assert missing.returncode == 1 and "no request 'nope'" in missing.stderr

    [group] = [json.loads(ln) for ln in cli("usage", "--json", "-c", str(cfg)).stdout.splitlines()]
    assert group["key"] == "gpt-4o-mini"
    assert (group["requests"], group["failed"], group["rescued"]) == (3, 0, 3)
    assert group["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    by_day = cli("usage", "--json", "--by", "day", "--since", "2d", "-c", str(cfg)).stdout
    assert json.loads(by_day)["key"] == time.strftime("%Y-%m-%d")
    table = cli("usage", "-c", str(cfg)).stdout
    assert "gpt-4o-mini" in table and "$" in table
    chart = cli("usage", "--chart", "-c", str(cfg)).stdout
    assert "█" in chart and "gpt-4o-mini" in chart
    bad = cli("log", "--since", "yesterday", "-c", str(cfg))
    assert bad.returncode == 2 and "yesterday" in bad.stderr


@asynccontextmanager
async def following(
    tmp_path: Path, *launcher: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Callable[[str], Awaitable[None]]]]:
    """A proxy that served one request ("first"), and `hydrallm log --follow --json`
    started (through `launcher`, if given) once that request's row was shown; yields the
    follower and a way to send the next request.  The follower is stopped after."""
    db = tmp_path / "j.db"
    async with FakeUpstream() as up:
        cfg = tmp_path / "config.toml"
        cfg.write_text(one_model(db, up.url))
        async with ProxyHarness(cfg.read_text()) as px, aiohttp.ClientSession() as s:
            await ask(s, px.url(), "first")
            await asyncio.sleep(0.6)  # the writer's turn
            follower = await asyncio.create_subprocess_exec(
                *launcher, HYDRALLM, "log", "--follow", "--json", "-c", str(cfg),
                stdout=asyncio.subprocess.PIPE, env=cli_env(),
            )  # fmt: skip
            try:
                assert follower.stdout is not None
                first = await asyncio.wait_for(follower.stdout.readline(), 20)
                assert json.loads(first)["requested_model"] == "first"
                yield follower, lambda model: ask(s, px.url(), model)
            finally:
                if follower.returncode is None:
                    follower.kill()
                    await follower.wait()


async def test_log_follow_prints_new_requests(tmp_path: Path) -> None:
    async with following(tmp_path) as (follower, send):
        assert follower.stdout is not None
        await send("second")
        second = await asyncio.wait_for(follower.stdout.readline(), 20)
        assert json.loads(second)["requested_model"] == "second"


async def test_log_follow_ends_on_ctrl_c_even_when_started_with_sigint_ignored(
    tmp_path: Path,
) -> None:
    # A background job of a non-interactive shell inherits SIGINT ignored (Python keeps
    # it); `log --follow`, which ends only by Ctrl-C or a signal, once followed on through.
    ignored = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    async with following(tmp_path, sys.executable, "-c", ignored) as (follower, _):
        follower.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(follower.wait(), 30) == 130


def test_a_row_that_cannot_be_written_costs_its_batch_and_is_reported_once(
    tmp_path: Path,
) -> None:
    """A value in a row that the spool cannot hold (a bug upstream of the journal) drops
    that batch, counted and reported; the journal stays on and the next rows are written."""
    db = tmp_path / "j.db"
    reports: list[str] = []
    sink = JournalSink(JournalConfig(path=str(db)), report=reports.append)
    sink.start()
    sink.request(event(0, time.time())._replace(requested_model=object()))  # type: ignore[arg-type]
    sink.request(event(1, time.time()))
    sink.flush()
    assert sink.dropped == 2 and sink.enabled and len(reports) == 1
    assert "2 requests not written" in reports[0]
    sink.request(event(2, time.time()))
    sink.close()
    assert ids(db) == ["r-2"]
