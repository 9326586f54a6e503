"""The status page: served self-contained, and read by a real headless chromium."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
from importlib import resources
from pathlib import Path

import aiohttp
import pytest
from tests.opshelp import free_port

from hydrallm.app.lifecycle import Proxy, start
from hydrallm.config.load import parse_config
from hydrallm.observe.events import Logger
from hydrallm.testing import FakeUpstream, ok, overloaded

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()


def config_text(primary: str, fallback: str, port: int) -> str:
    return f"""
[retry]
default_interval = "1ms"
max_cycles = 1
[cooldown]
failures = 2
duration = "5m"
[providers.primary]
url = "{primary}"
api_key = "key-primary"
[providers.fallback]
url = "{fallback}"
api_key = "key-fallback"
[models.primary]
provider = "primary"
type = "anthropic"
model = "big"
[models.fallback]
provider = "fallback"
type = "anthropic"
model = "small"
[[listeners]]
name = "claude"
port = {port}
models = ["primary", "fallback"]
routes = {{ "*haiku*" = ["fallback"] }}
"""


async def scripted_run(primary: FakeUpstream, fallback: FakeUpstream) -> Proxy:
    """1 request served by the primary, 2 by the fallback after a 529 each (which opens the
    primary's circuit), 1 more by the fallback with the primary left out."""
    primary.script(ok(), overloaded(), overloaded())
    config = parse_config(config_text(primary.url, fallback.url, free_port()), env={})
    proxy = await start(config, logger=Logger("error", stream=io.StringIO()))
    host, port = proxy.addresses()["claude"]
    body = json.dumps(
        {"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            async with session.post(f"http://{host}:{port}/v1/messages", data=body) as resp:
                assert resp.status == 200
                await resp.read()
    return proxy


def base(proxy: Proxy) -> str:
    host, port = proxy.addresses()["claude"]
    return f"http://{host}:{port}"


def test_the_page_is_self_contained() -> None:
    page = resources.files("hydrallm.observe").joinpath("statuspage.html").read_text("utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page
    assert "prefers-color-scheme: dark" in page
    assert "/_hydrallm/status.json" in page


async def test_the_page_and_its_json_are_served() -> None:
    async with FakeUpstream(name="p") as primary, FakeUpstream(name="f") as fallback:
        proxy = await scripted_run(primary, fallback)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(base(proxy) + "/_hydrallm/") as resp:
                    assert resp.status == 200
                    assert resp.content_type == "text/html"
                    assert 'id="hl-models"' in await resp.text()
                async with session.get(base(proxy) + "/_hydrallm/status.json") as resp:
                    doc = await resp.json()
            states = {
                m["id"]: (m["state"], m["successes_5m"], m["requests_5m"]) for m in doc["models"]
            }
            assert states == {"primary": ("open", 1, 3), "fallback": ("closed", 3, 3)}
        finally:
            await proxy.close()


async def chromium(*args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--virtual-time-budget=3000",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0
    return out


@pytest.mark.browser
@pytest.mark.skipif(
    not HAVE_CHROMIUM, reason="chromium is not installed (apt-get install chromium)"
)
async def test_chromium_shows_model_states_counts_and_requests(tmp_path: Path) -> None:
    async with FakeUpstream(name="p") as primary, FakeUpstream(name="f") as fallback:
        proxy = await scripted_run(primary, fallback)
        try:
            page = base(proxy) + "/_hydrallm/"
            dom = (
                await chromium(f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", page)
            ).decode()
            shot = tmp_path / "statuspage.png"
            await chromium(
                f"--user-data-dir={tmp_path / 'profile-shot'}",
                "--window-size=1280,900",
                f"--screenshot={shot}",
                page,
            )
        finally:
            await proxy.close()

    assert 'data-loaded="true"' in dom, "the page never rendered status.json"
    rows = dict(re.findall(r'<tr data-model="([^"]+)"( [^>]*)>', dom))
    assert set(rows) == {"primary", "fallback"}
    assert 'data-state="open"' in rows["primary"]
    assert 'data-requests="3"' in rows["primary"] and 'data-successes="1"' in rows["primary"]
    assert 'data-state="closed"' in rows["fallback"]
    assert 'data-requests="3"' in rows["fallback"] and 'data-successes="3"' in rows["fallback"]
    assert re.search(r'data-field="state"[^>]*>open · \d+m \d+s left<', dom)
    assert re.search(r'data-field="counts"[^>]*>1 / 3<', dom)
    assert "529" in dom  # the primary's last error
    # The listener with its route and chain.
    assert 'data-listener="claude"' in dom and 'data-route="*haiku*"' in dom
    # Four recent requests, all 200; three served by the fallback.
    assert len(re.findall(r'<tr data-request-id="[^"]+" data-status="200"', dom)) == 4
    assert len(re.findall(r'data-field="served-by"[^>]*>fallback<', dom)) == 3

    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_the_page_has_no_duplicate_element_ids() -> None:
    import re
    from importlib import resources

    html = resources.files("hydrallm.observe").joinpath("statuspage.html").read_text()
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert ids and len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
