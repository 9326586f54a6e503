"""The status page's history charts, drawn from a seeded journal, read by headless chromium."""

from __future__ import annotations

import io
import random
import re
import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from hydrallm.app.lifecycle import start
from hydrallm.config import JournalConfig
from hydrallm.config.load import parse_config
from hydrallm.observe.events import AttemptEvent, Logger, RequestEvent
from hydrallm.observe.journal import JournalSink
from hydrallm.observe.journal_query import open_readonly, usage
from hydrallm.observe.usage import Usage
from test_statuspage import CHROMIUM, HAVE_CHROMIUM, chromium, free_port

MODELS = [("primary", "claude-sonnet-4-5", 900.0), ("backup", "glm-4.6", 1500.0)]
SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"


def seed(db: Path, now: float) -> dict[str, int]:
    """A day of traffic: most served first try, some retried, fallen back, recovered, failed.
    Returns how many of each outcome were written in the last hour."""
    rng = random.Random(7)
    sink = JournalSink(JournalConfig(path=str(db)), clock=lambda: now)
    sink.start()
    last_hour = dict.fromkeys(("first_try", "retried", "fell_back", "recovered", "failed"), 0)
    for i in range(400):
        # Denser in the last hour so that the hour view has something to show; all within
        # the day view, whose first quarter-hour starts between 23.75 and 24 hours ago.
        at = now - (rng.random() * 3500 if i < 150 else rng.random() * 85000)
        kind = rng.choices(
            ["first_try", "retried", "fell_back", "recovered", "failed"], [70, 12, 10, 4, 4]
        )[0]
        rid = f"seed-{i}"
        served = MODELS[1] if kind in ("fell_back", "recovered") else MODELS[0]
        trail: list[tuple[tuple[str, str, float], str, int | None]] = []
        if kind == "retried":
            trail = [(MODELS[0], "status", 529), (MODELS[0], "success", 200)]
        elif kind == "fell_back":
            trail = [(MODELS[0], "status", 529), (MODELS[1], "success", 200)]
        elif kind == "failed":
            trail = [(MODELS[0], "status", 529), (MODELS[1], "status", 503)]
        else:
            trail = [(MODELS[0], "success", 200)]
        steps = []
        for n, (model, outcome, status) in enumerate(trail, 1):
            steps.append(
                AttemptEvent(
                    listener="claude",
                    route="default",
                    model_id=model[0],
                    endpoint=model[0],
                    model=model[1],
                    cycle=1,
                    attempt=n,
                    outcome=outcome,
                    status=status,
                    error=None,
                    latency=model[2] / 1000 * rng.uniform(0.5, 2.5),
                    ttft=model[2] / 4000 * rng.uniform(0.5, 3) if outcome == "success" else None,
                    retry=n > 1 and kind == "retried",
                    fallback=n > 1 and kind in ("fell_back", "failed"),
                ).step()
            )
        failed = kind == "failed"
        sink.request(
            RequestEvent(
                request_id=rid,
                listener="claude",
                route="default",
                method="POST",
                path="/v1/messages",
                served_by=None if failed else served[0],
                attempts=len(trail),
                status=503 if failed else 200,
                latency=served[2] / 1000 * rng.uniform(0.6, 3),
                streamed=True,
                started_at=at,
                error="upstream 503"
                if failed
                else ("stream broke" if kind == "recovered" else None),
                requested_model="claude-sonnet-4-5",
                recovered="prefill" if kind == "recovered" else None,
                served_model=None if failed else served[1],
                endpoint=served[0],
                usage=None
                if failed
                else tuple(
                    Usage(rng.randint(50, 3000), rng.randint(20, 900), rng.randint(0, 20000), 0)
                ),
                trail=steps,
            )
        )
        if now - at < 3600 - 60:
            last_hour[kind] += 1
    sink.close()
    assert sink.written == 400
    return last_hour


def config_text(db: Path, port: int) -> str:
    return f"""
[journal]
path = "{db}"
[providers.primary]
url = "http://127.0.0.1:9"
api_key = "key-primary-1234"
[providers.backup]
url = "http://127.0.0.1:9"
api_key = "key-backup-1234"
[models.primary]
provider = "primary"
type = "anthropic"
model = "claude-sonnet-4-5"
[models.backup]
provider = "backup"
type = "anthropic"
model = "glm-4.6"
[[listeners]]
name = "claude"
port = {port}
models = ["primary", "backup"]
"""


async def test_journal_json_has_the_chart_data(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    now = time.time()
    last_hour = seed(db, now)
    proxy = await start(
        parse_config(config_text(db, free_port()), env={}),
        logger=Logger("error", stream=io.StringIO()),
    )
    try:
        host, port = proxy.addresses()["claude"]
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://{host}:{port}/_hydrallm/journal.json?window=day") as r:
                day = await r.json()
            async with s.get(f"http://{host}:{port}/_hydrallm/journal.json") as r:
                hour = await r.json()
    finally:
        await proxy.close()
    assert day["journal"]["enabled"] is True
    charts = day["charts"]
    assert charts["requests"] == 400 and len(charts["requests_per_minute"]["failed"]) == 96
    totals = charts["totals"]
    assert charts["rescued"] == totals["retried"] + totals["fell_back"] + totals["recovered"]
    assert charts["rescue_rate"] == pytest.approx(charts["rescued"] / 400, abs=1e-4)
    assert {row["model"] for row in charts["latency"]} == {"claude-sonnet-4-5", "glm-4.6"}
    for row in charts["latency"]:
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert sum(d["requests"] for d in charts["daily"]) == 400
    assert all(d["cost_usd"] > 0 for d in charts["daily"] if d["model"] != "-")
    conn = open_readonly(db)
    try:
        by_model = {g["key"]: g for g in usage(conn)}
        by_hour = usage(conn, by="hour")
    finally:
        conn.close()
    assert set(by_model) == {"claude-sonnet-4-5", "glm-4.6"}
    # Every answer of the second model was a rescue (a fallback or a recovery).
    assert by_model["glm-4.6"]["rescued"] == by_model["glm-4.6"]["requests"] > 0
    assert len(by_hour) > 12 and sum(g["requests"] for g in by_hour) == 400
    assert [g["key"] for g in by_hour] == sorted((g["key"] for g in by_hour), reverse=True)
    # The hour view counts the last hour's requests, per outcome.
    got = hour["charts"]["totals"]
    for kind, n in last_hour.items():
        assert got[kind] >= n


@pytest.mark.browser
@pytest.mark.skipif(not HAVE_CHROMIUM, reason=f"{CHROMIUM} is not installed")
async def test_chromium_draws_the_history_charts(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    seed(db, time.time())
    proxy = await start(
        parse_config(config_text(db, free_port()), env={}),
        logger=Logger("error", stream=io.StringIO()),
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        host, port = proxy.addresses()["claude"]
        page = f"http://{host}:{port}/_hydrallm/?window=day"
        dom = (await chromium(f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", page)).decode()
        shot = tmp_path / "history.png"
        await chromium(
            f"--user-data-dir={tmp_path / 'p2'}",
            "--window-size=1280,1500",
            f"--screenshot={shot}",
            page,
        )
        shutil.copy(shot, SHOTS / "statuspage-history-day.png")
    finally:
        await proxy.close()
    assert re.search(r'id="hl-history" data-window="day" data-loaded="true"', dom), dom[:2000]
    outcomes = re.search(r'<svg[^>]*data-chart="outcomes"[^>]*data-total="([0-9.]+)"', dom)
    assert outcomes is not None
    # 400 requests over 96 quarter-hours, drawn as requests per minute: 400 / 15.
    assert float(outcomes.group(1)) == pytest.approx(400 / 15, abs=0.05)
    for kind in ("first_try", "retried", "fell_back", "recovered", "failed"):
        assert f'data-series="{kind}"' in dom
    assert dom.count('<g data-model="') == 2
    assert 'data-chart="tokens"' in dom and 'data-chart="cost"' in dom
    assert 'data-legend-model="glm-4.6"' in dom
    assert re.search(r'data-kpi="rescue-rate"><b>\d+\.\d%</b>', dom)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000
