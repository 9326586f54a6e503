"""SIGTERM with 100 streams in flight, in a real `hydrallm serve` process (issue 8).

New connections are refused at once; streams that end within `server.shutdown_timeout`
end normally; the rest are ended with a protocol-correct error event; the process exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
from tests.opshelp import free_port

from hydrallm.testing import FakeUpstream, faults

GRACE = 2.0
SHORT = "short answer ends soon"  # 4 chunks, 0.15s apart: done well within the grace
LONG = " ".join(["long"] * 60)  # 60 chunks, 0.3s apart: still going when the grace ends


def write_config(path: Path, upstream: str, port: int) -> None:
    path.write_text(
        f"""
[server]
port = {port}
shutdown_timeout = "{GRACE}s"
[log]
level = "info"
[retry]
max_cycles = 1
stream_idle_timeout = "30s"
[endpoints.up]
url = "{upstream}"
api_key = "sk-shutdown-0001"
[[models]]
endpoint = "up"
type = "openai"
model = "m"
"""
    )


async def wait_ready(url: str, proc: asyncio.subprocess.Process, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert proc.returncode is None, "hydrallm serve exited early"
            try:
                async with s.get(url + "/_hydrallm/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("hydrallm serve did not become ready")


async def refused(port: int) -> bool:
    try:
        _r, w = await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionRefusedError, ConnectionResetError):
        # A reset, too: a connection that raced into the backlog as the listener closed.
        return True
    w.close()
    return False


async def test_sigterm_with_100_streams_in_flight(tmp_path: Path) -> None:
    short = dataclasses.replace(faults.slow_chunks(0.15), text=SHORT)
    long = dataclasses.replace(faults.slow_chunks(0.3), text=LONG)
    async with FakeUpstream(chunk_words=1) as up:
        up.script(*[short, long] * 50)
        port = free_port()
        cfg = tmp_path / "hydrallm.toml"
        write_config(cfg, up.url, port)
        log = (tmp_path / "serve.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "hydrallm", "serve", "--config", str(cfg)],
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
        )
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_ready(url, proc)
            first_bytes = asyncio.Semaphore(0)

            async def stream(s: aiohttp.ClientSession) -> str:
                body = {"model": "x", "messages": [], "stream": True}
                async with s.post(url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
                    parts = [await r.content.readany()]
                    first_bytes.release()
                    try:
                        while chunk := await r.content.readany():
                            parts.append(chunk)
                    except aiohttp.ClientPayloadError:
                        parts.append(b"<cut>")
                    return b"".join(parts).decode()

            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn) as s:
                tasks = [asyncio.create_task(stream(s)) for _ in range(100)]
                async with asyncio.timeout(15):
                    for _ in range(100):
                        await first_bytes.acquire()
                signalled = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                # New connections are refused almost at once.
                async with asyncio.timeout(2):
                    while not await refused(port):
                        await asyncio.sleep(0.02)
                texts = await asyncio.gather(*tasks)
            async with asyncio.timeout(GRACE + 10):
                code = await proc.wait()
            took = time.monotonic() - signalled
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            log.close()
        output = (tmp_path / "serve.log").read_text()
        assert code == 0, output[-2000:]
        assert took < GRACE + 1.5, took  # the rest are ended when the grace is over
        finished = [t for t in texts if "[DONE]" in t]
        ended = [t for t in texts if "the proxy is shutting down" in t]
        assert len(finished) == 50 and all("short" in t for t in finished)
        assert len(ended) == 50 and all("long" in t and "[DONE]" not in t for t in ended)
        assert not any("<cut>" in t for t in texts)  # ended in-band, not cut
        assert "shutdown" in output and "stopped" in output
        assert "Traceback" not in output
