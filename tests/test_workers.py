"""`--workers N`: several processes share each listener; signals reach all of them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from hydrallm.testing import FakeUpstream
from opshelp import HYDRALLM, ServeProcess, chat, free_port, one_model_config, post_chat

# The [server] lines of every config here: two worker processes.
SERVER = 'shutdown_timeout = "2s"\nworkers = 2'


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def status_by_pid(base: str, want: int = 2, tries: int = 400) -> dict[int, dict]:
    """status.json from each worker, over fresh connections, until `want` pids answered."""
    seen: dict[int, dict] = {}
    # A new connection for each request: the kernel spreads connections, not requests.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(tries):
            async with session.get(base + "/_hydrallm/status.json") as resp:
                body = await resp.json()
            seen[body["pid"]] = body
            if len(seen) >= want:
                break
    return seen


async def test_two_workers_serve_reload_together_and_stop_cleanly(tmp_path: Path) -> None:
    async with FakeUpstream(name="a") as a, FakeUpstream(name="b") as b:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        path = tmp_path / "config.toml"
        path.write_text(one_model_config(a.url, port, "model-a", server=SERVER))
        proc = ServeProcess(path)
        try:
            await proc.wait_ready(base)
            workers = await status_by_pid(base)
            assert len(workers) == 2, "only one worker answered"
            assert sorted(w["worker"] for w in workers.values()) == [0, 1]
            assert proc.proc.pid not in workers  # the parent only supervises
            async with aiohttp.ClientSession() as session:
                code, headers, _ = await post_chat(session, base, chat("x"))
            assert (code, headers["x-hydrallm-model"]) == (200, "model-a")

            # SIGHUP to the parent reaches every worker.
            tmp = path.with_suffix(".tmp")
            tmp.write_text(one_model_config(b.url, port, "model-b", server=SERVER))
            os.replace(tmp, path)
            proc.signal(signal.SIGHUP)
            await proc.wait_log("reloaded", count=2)
            after = await status_by_pid(base)
            assert {w["generation"] for w in after.values()} == {2}
            assert set(after) == set(workers)  # the same two processes, reloaded in place

            assert await proc.stop() == 0
            deadline = time.monotonic() + 2
            while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not any(alive(pid) for pid in workers), "a worker outlived the parent"
            assert proc.log().count("stopped") == 2
            # Each worker's lines say which worker wrote them.
            reloaded = [ln for ln in proc.log().splitlines() if " reloaded" in ln]
            assert sorted(ln.split(" worker=")[1].split()[0] for ln in reloaded) == ["0", "1"]
        finally:
            proc.kill()


@pytest.mark.parametrize(
    "form",
    [["serve", "--workers", "3"], ["--workers", "3"]],
    ids=["serve --workers", "--workers without serve"],
)
def test_a_port_in_use_stops_every_worker_with_exit_1(tmp_path: Path, form: list[str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = tmp_path / "config.toml"
        path.write_text(one_model_config("http://127.0.0.1:9", port, "m", server=SERVER))
        result = subprocess.run(
            [HYDRALLM, *form, "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert result.returncode == 1
    assert "already in use" in result.stderr
