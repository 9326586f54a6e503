"""Key pools and held requests on the status page, in status.json and in `hydrallm status`
(issue 15): each key by masked label with its state, the prompt-cache hit ratio per model
and key, and a request held by `retry.hold` visible while it waits and gone once its
client leaves.  A real proxy in-process, fakes that limit each key with the provider's own
signals, the page read by a real headless chromium, the CLI run as a real process."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.test_statuspage import CHROMIUM, HAVE_CHROMIUM, chromium

import hydrallm.observe
from hydrallm.testing import CANONICAL_TEXT
from hydrallm.testing.faults import Fault
from hydrallm.testing.harness import ProxyHarness
from hydrallm.testing.limits import LimitedUpstream
from test_keys_e2e import config

HYDRALLM = str(Path(sys.executable).with_name("hydrallm"))
KEYS = {
    "KEY_A": "sk-team-key-aaaa1111",
    "KEY_B": "sk-team-key-bbbb2222",
    "KEY_C": "sk-team-key-cccc3333",
    "KEY_D": "sk-team-key-dddd4444",
}
A, B, C, D = KEYS.values()
HI = [{"role": "user", "content": "hi"}]


def pool_config(url: str, *, kind: str = "openai", keys: str, extra: str = "") -> str:
    """The pool with the default key strategy and attempts."""
    return config(url, kind=kind, keys=keys, strategy=None, attempts=None, extra=extra)


def cached_answer(prompt: int, cached: int) -> Fault:
    """An OpenAI chat completion whose usage says `cached` of `prompt` input tokens were
    read from the prompt cache (`prompt_tokens_details.cached_tokens`)."""
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": CANONICAL_TEXT},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": 3,
            "total_tokens": prompt + 3,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }
    return Fault(body=json.dumps(body).encode())


async def get(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


async def four_states(up: LimitedUpstream, px: ProxyHarness) -> None:
    """One request walks the pool: A refused (invalid), B out of quota for an hour
    (exhausted), C throttled for 2 minutes, longer than max_retry_after (throttled), and D
    answers, with 600 of 800 input tokens from the prompt cache."""
    up.revoke(A)
    up.exhaust(B, reset_in=3600)
    up.throttle(C, wait=120)
    up.script(cached_answer(800, 600))
    body = {"model": "x", "messages": HI}
    async with aiohttp.ClientSession() as http:
        async with http.post(px.url() + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
    assert up.asked[A] == up.asked[B] == up.asked[C] == 1 and up.served[D] == 1


POOL_KEYS = '["$KEY_A", "$KEY_B", "$KEY_C", "$KEY_D"]'


async def test_status_json_shows_each_key_by_label_with_state_until_and_cache_ratio() -> None:
    async with (
        LimitedUpstream() as up,
        ProxyHarness(pool_config(up.url + "/v1", keys=POOL_KEYS), env=KEYS) as px,
    ):
        await four_states(up, px)
        async with aiohttp.ClientSession() as http:
            raw = await get(http, px.url() + "/_hydrallm/status.json")
            metrics = await get(http, px.url() + "/_hydrallm/metrics")
            health = await get(http, px.url() + "/_hydrallm/health")
    doc = json.loads(raw)
    keys = doc["endpoints"]["team"]["keys"]
    assert [(k["label"], k["state"]) for k in keys] == [
        ("…1111", "invalid"),
        ("…2222", "exhausted"),
        ("…3333", "throttled"),
        ("…4444", "ready"),
    ]
    now = doc["now"]
    left = {
        k["label"]: datetime.fromisoformat(k["until"].replace("Z", "+00:00")).timestamp() - now
        for k in keys
        if k["until"] is not None
    }
    assert set(left) == {"…2222", "…3333"}  # invalid and ready keys have no until
    assert 800 < left["…2222"] <= 901 and 100 < left["…3333"] <= 121
    assert keys[3]["cache_hit_ratio"] == {"main": 0.75}
    assert doc["held"] == {"count": 0, "earliest_reset": None, "requests": []}
    assert 'hydrallm_key_state{endpoint="team",key="…3333"} 1.0' in metrics
    for text in (raw, metrics, health):
        for secret in KEYS.values():
            assert secret not in text and secret[-8:] not in text


@pytest.mark.browser
@pytest.mark.skipif(not HAVE_CHROMIUM, reason=f"{CHROMIUM} is not installed")
async def test_chromium_shows_the_key_pool(tmp_path: Path) -> None:
    async with (
        LimitedUpstream() as up,
        ProxyHarness(pool_config(up.url + "/v1", keys=POOL_KEYS), env=KEYS) as px,
    ):
        await four_states(up, px)
        page = px.url() + "/_hydrallm/"
        dom = (
            await chromium(f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", page)
        ).decode()
        shot = tmp_path / "keys.png"
        await chromium(
            f"--user-data-dir={tmp_path / 'profile-shot'}",
            "--window-size=1280,900",
            f"--screenshot={shot}",
            page,
        )
    assert 'data-loaded="true"' in dom, "the page never rendered status.json"
    rows = re.findall(r'<tr data-endpoint="team" data-key="([^"]+)" data-key-state="(\w+)"', dom)
    assert rows == [
        ("…1111", "invalid"),
        ("…2222", "exhausted"),
        ("…3333", "throttled"),
        ("…4444", "ready"),
    ]
    row = {label: _row(dom, label) for label, _ in rows}
    assert re.search(r'data-field="key-state"[^>]*>exhausted<', row["…2222"])
    # Until: a clock time and how long from now (an hour; two minutes).
    assert re.search(r">\d\d:\d\d:\d\d<.*> · in (14m \d+s|15m 0s)<", row["…2222"])
    assert re.search(r">\d\d:\d\d:\d\d<.*> · in (1m \d+s|2m 0s)<", row["…3333"])
    assert "until the config is reloaded" in row["…1111"]
    assert re.search(r'data-cache-model="main" data-ratio="0.75".*>75\.0%<', row["…4444"])
    assert "no usage read yet" in row["…1111"]
    # Nothing held: the count is 0 and the held box is hidden.
    assert re.search(r'id="hl-held-count" data-held="0">0<', dom)
    assert re.search(r'<div id="hl-held" class="held" data-held="0" hidden=""', dom)
    for secret in KEYS.values():
        assert secret not in dom and secret[-8:] not in dom
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def _row(dom: str, label: str) -> str:
    found = re.search(rf'<tr data-endpoint="team" data-key="{label}".*?</tr>', dom)
    assert found is not None, label
    return found[0]


async def status_json(http: aiohttp.ClientSession, px: ProxyHarness) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(await get(http, px.url() + "/_hydrallm/status.json"))
    return doc


async def wait_for(
    http: aiohttp.ClientSession, px: ProxyHarness, ready: Any, what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        doc = await status_json(http, px)
        if ready(doc):
            return doc
        assert time.monotonic() < deadline, f"status.json never showed {what}: {doc['held']}"
        await asyncio.sleep(0.05)


HOLD = 'hold = "2m"'


async def held_request(px: ProxyHarness) -> None:
    body = {"model": "x", "max_tokens": 8, "messages": HI}
    async with aiohttp.ClientSession() as http:
        async with http.post(px.url() + "/v1/messages", json=body) as resp:
            await resp.read()


@pytest.mark.browser
@pytest.mark.skipif(not HAVE_CHROMIUM, reason=f"{CHROMIUM} is not installed")
async def test_a_held_request_shows_while_it_waits_and_ends_when_its_client_leaves(
    tmp_path: Path,
) -> None:
    """Every key limited for a minute, `retry.hold` of two: the request waits.  The page
    and status.json show it; the client gives up; the hold ends at once, with nothing more
    sent upstream and nothing left in flight."""
    async with (
        LimitedUpstream(provider="anthropic") as up,
        ProxyHarness(
            pool_config(up.url, kind="anthropic", keys='["$KEY_A"]', extra=HOLD), env=KEYS
        ) as px,
    ):
        up.exhaust(A, reset_in=60)
        client = asyncio.create_task(held_request(px))
        async with aiohttp.ClientSession() as http:
            doc = await wait_for(http, px, lambda d: d["held"]["count"] == 1, "the held request")
            held = doc["held"]
            assert doc["in_flight"] == 1
            assert held["requests"][0]["listener"] == "default"
            assert 50 < held["earliest_reset"] - doc["now"] <= 61
            assert held["requests"][0]["until"] == held["earliest_reset"]
            assert doc["endpoints"]["team"]["keys"][0]["state"] == "exhausted"

            dom = (
                await chromium(
                    f"--user-data-dir={tmp_path / 'profile'}",
                    "--dump-dom",
                    px.url() + "/_hydrallm/",
                )
            ).decode()
            assert re.search(
                r'id="hl-held-count" data-held="1">1 · next reset in (\d+s|1m 0s)<', dom
            )
            assert '<div id="hl-held" class="held" data-held="1">' in dom  # not hidden
            assert re.search(r'<li data-held-listener="default">', dom)
            assert "1 request is held" in dom

            client.cancel()  # the client leaves: its connection closes
            with pytest.raises(asyncio.CancelledError):
                await client
            doc = await wait_for(
                http,
                px,
                lambda d: d["held"]["count"] == 0 and d["in_flight"] == 0,
                "the hold ended",
            )
            assert doc["held"] == {"count": 0, "earliest_reset": None, "requests": []}
        assert up.asked[A] == 1  # learnt once; nothing sent after the client left
        logs = px.logs()
        assert "held listener=default" in logs and "Traceback" not in logs
        assert "hold_cancelled listener=default" in logs
        for secret in KEYS.values():
            assert secret not in dom and secret not in json.dumps(doc)


async def test_hydrallm_status_shows_the_pool_and_a_held_request() -> None:
    """`hydrallm status` (a real process) against a proxy with a key pool and a held
    request: each key by label and state, the cache ratio, the held count; no key."""
    pool = '["$KEY_A", "$KEY_B", "$KEY_C", "$KEY_D"]'
    async with (
        LimitedUpstream() as up,
        ProxyHarness(pool_config(up.url + "/v1", keys=pool, extra=HOLD), env=KEYS) as px,
    ):
        await four_states(up, px)
        # D is now throttled for a minute (OpenAI states no reset for a quota): the next
        # request finds every key limited, and is held.
        up.throttle(D, wait=60)
        body = {"model": "x", "messages": HI}

        async def ask() -> None:
            async with aiohttp.ClientSession() as http:
                async with http.post(px.url() + "/v1/chat/completions", json=body) as resp:
                    await resp.read()

        client = asyncio.create_task(ask())
        async with aiohttp.ClientSession() as http:
            await wait_for(http, px, lambda d: d["held"]["count"] == 1, "the held request")
            proc = await asyncio.create_subprocess_exec(
                HYDRALLM,
                "status",
                "--url",
                px.url(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "COLUMNS": "160", "NO_COLOR": "1", "TERM": "dumb"},
            )
            out_b, err_b = await asyncio.wait_for(proc.communicate(), timeout=60)
            client.cancel()
            with pytest.raises(asyncio.CancelledError):
                await client
            await wait_for(http, px, lambda d: d["held"]["count"] == 0, "the hold ended")
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, err
    assert re.search(r"held 1 \(next reset in (\d+s|1m 0s)\)", out)
    assert "Key pools" in out
    lines = {label: _line(out, label) for label in ("…1111", "…2222", "…3333", "…4444")}
    assert "invalid" in lines["…1111"] and "until the config is reloaded" in lines["…1111"]
    assert re.search(r"exhausted until \d\d:\d\d:\d\d \(in (14m \d+s|15m 0s)\)", lines["…2222"])
    assert re.search(r"throttled until \d\d:\d\d:\d\d \(in (1m \d+s|2m 0s)\)", lines["…3333"])
    assert re.search(r"throttled until \d\d:\d\d:\d\d \(in (\d+s|1m 0s)\)", lines["…4444"])
    assert "main 75.0%" in lines["…4444"]
    assert lines["…1111"].split("│")[1].strip() == "team"
    for secret in KEYS.values():
        assert secret not in out and secret[-8:] not in out


def _line(out: str, label: str) -> str:
    found = [line for line in out.splitlines() if f" {label} " in line]
    assert len(found) == 1, (label, out)
    return found[0]


def test_observe_never_imports_the_process_state() -> None:
    """observe/ renders from `observe.snapshot.ProcessView`; it imports nothing of app/
    (not even for type checking), so the data path runs one way (issue 12)."""
    package = Path(hydrallm.observe.__file__).parent
    offenders = []
    for source in sorted(package.glob("*.py")):
        tree = ast.parse(source.read_text("utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                names = [node.module]
            offenders += [
                f"{source.name}: {n}"
                for n in names
                if n == "hydrallm.app" or n.startswith(("hydrallm.app.", "hydrallm.proxy"))
            ]
    assert not offenders, offenders
