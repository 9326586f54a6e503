"""Hot reload of a real `hydrallm serve` process: SIGHUP, file changes, bad files, streams."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hydrallm.testing import CANONICAL_TEXT, FakeUpstream, slow_chunks
from hydrallm.testing import status as fault_status
from opshelp import ServeProcess, chat, free_port, one_model_config, post_chat


def write(path: Path, text: str) -> None:
    # Replace the file as editors do (new inode), so a change is always visible.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    async with FakeUpstream(name="a") as a, FakeUpstream(name="b") as b:
        yield a, b


async def served_by(base: str) -> str:
    async with aiohttp.ClientSession() as session:
        code, headers, _ = await post_chat(session, base, chat("client-model"))
    assert code == 200
    return headers["x-hydrallm-model"]


async def start(tmp_path: Path, text: str, port: int) -> ServeProcess:
    path = tmp_path / "config.toml"
    write(path, text)
    proc = ServeProcess(path)
    try:
        await proc.wait_ready(f"http://127.0.0.1:{port}")
    except BaseException:
        proc.kill()
        raise
    return proc


async def test_sighup_reloads_and_a_bad_file_is_kept_out(
    tmp_path: Path, fakes: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = fakes
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await start(tmp_path, one_model_config(a.url, port, "model-a"), port)
    try:
        assert await served_by(base) == "model-a"

        # Invalid: the listener names a model that does not exist, and a bad duration.
        bad = one_model_config(b.url, port, "model-b").replace(
            'models = ["model-b"]', 'models = ["nope"]'
        )
        write(proc.config_path, bad.replace('"3s"', '"soon"'))
        proc.signal(signal.SIGHUP)
        log = await proc.wait_log("reload_failed")
        rejected = [line for line in log.splitlines() if "reload_rejected" in line]
        assert len(rejected) == 2, log
        assert any("nope" in line for line in rejected)
        assert any("soon" in line for line in rejected)
        assert await served_by(base) == "model-a"  # still the old config

        write(proc.config_path, one_model_config(b.url, port, "model-b"))
        proc.signal(signal.SIGHUP)
        await proc.wait_log("reloaded")
        assert await served_by(base) == "model-b"
        assert "reload reason=SIGHUP" in proc.log()

        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/_hydrallm/status.json") as resp:
                status = await resp.json()
            async with session.get(base + "/_hydrallm/metrics") as resp:
                scrape = await resp.text()
        assert [r["result"] for r in status["reloads"]][:2] == ["success", "failure"]
        assert status["generation"] == 2
        reloads = {
            s.labels["result"]: s.value
            for f in text_string_to_metric_families(scrape)
            for s in f.samples
            if s.name == "hydrallm_config_reloads_total"
        }
        assert reloads["success"] >= 1 and reloads["failure"] >= 1
        assert [r.model for r in a.requests] == ["model-a", "model-a"]
        assert [r.model for r in b.requests] == ["model-b"]
        assert await proc.stop() == 0
    finally:
        proc.kill()


async def test_a_file_change_reloads_adds_moves_and_removes_listeners(
    tmp_path: Path, fakes: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = fakes
    port, second, moved = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await start(tmp_path, one_model_config(a.url, port, "model-a"), port)
    try:
        extra = f'[[listeners]]\nname = "second"\nport = {second}\nmodels = ["model-b"]\n'
        write(proc.config_path, one_model_config(b.url, port, "model-b", extra=extra))
        await proc.wait_log("reloaded")
        assert 'reload reason="file changed"' in proc.log()
        assert await served_by(base) == "model-b"
        assert await served_by(f"http://127.0.0.1:{second}") == "model-b"

        extra = f'[[listeners]]\nname = "second"\nport = {moved}\nmodels = ["model-b"]\n'
        write(proc.config_path, one_model_config(b.url, port, "model-b", extra=extra))
        await proc.wait_log("reloaded", count=2)
        assert await served_by(f"http://127.0.0.1:{moved}") == "model-b"
        with pytest.raises(aiohttp.ClientConnectionError):
            await served_by(f"http://127.0.0.1:{second}")

        write(proc.config_path, one_model_config(a.url, port, "model-a"))
        await proc.wait_log("reloaded", count=3)
        with pytest.raises(aiohttp.ClientConnectionError):
            await served_by(f"http://127.0.0.1:{moved}")
        assert await served_by(base) == "model-a"
        assert await proc.stop() == 0
    finally:
        proc.kill()


async def test_a_stream_in_flight_survives_a_reload_to_another_chain(
    tmp_path: Path, fakes: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = fakes
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await start(tmp_path, one_model_config(a.url, port, "model-a"), port)
    try:
        a.script(slow_chunks(0.05))  # about 1.5 s of stream
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                base + "/v1/chat/completions", data=json.dumps(chat("x", stream=True)).encode()
            ) as resp,
        ):
            assert resp.status == 200
            assert resp.headers["x-hydrallm-model"] == "model-a"
            received = [await resp.content.readany()]
            write(proc.config_path, one_model_config(b.url, port, "model-b"))
            proc.signal(signal.SIGHUP)
            await proc.wait_log("reloaded")
            # New requests go to the new chain while the old stream is still running.
            assert await served_by(base) == "model-b"
            received.append(await resp.content.read())
        raw = b"".join(received).decode()
        events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(
            chunk["choices"][0]["delta"].get("content") or ""
            for chunk in map(json.loads, events[:-1])
            if chunk.get("choices")
        )
        assert text == CANONICAL_TEXT
        assert "error" not in raw
        assert await proc.stop() == 0
    finally:
        proc.kill()


async def test_reload_keeps_cooldown_for_unchanged_models(
    tmp_path: Path, fakes: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, _ = fakes
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    text = one_model_config(a.url, port, "model-a").replace(
        "[providers.up]",
        '[cooldown]\nfailures = 1\nduration = "60s"\n[retry]\nmax_cycles = 1\n[providers.up]',
    )
    proc = await start(tmp_path, text, port)
    try:
        a.script(fault_status(503))
        async with aiohttp.ClientSession() as session:
            code, _, _ = await post_chat(session, base, chat("x"))
            assert code == 503
            write(
                proc.config_path, text.replace('shutdown_timeout = "3s"', 'shutdown_timeout = "2s"')
            )
            await proc.wait_log("reloaded")
            async with session.get(base + "/_hydrallm/health") as resp:
                health = await resp.json()
        assert health["models"]["model-a"]["state"] == "open"
        assert await proc.stop() == 0
    finally:
        proc.kill()
