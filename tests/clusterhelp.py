"""Helpers for the cluster tests: a real redis-server on a free loopback port, configs,
and polling the instances' health."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from opshelp import ServeProcess, free_port

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """`redis-server` without persistence on 127.0.0.1:<port>; `kill()` and `start()` again
    keep the port, so instances reconnect to the same URL."""

    def __init__(self, tmp: Path) -> None:
        assert REDIS_SERVER is not None
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError("redis-server did not start")

    def require_password(self, password: str) -> str:
        """Turn on AUTH; returns the URL with the password in it."""
        with socket.create_connection(("127.0.0.1", self.port)) as conn:
            conn.sendall(f"CONFIG SET requirepass {password}\r\n".encode())
            assert conn.recv(16).startswith(b"+OK")
        return f"redis://:{password}@127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def config_text(
    primary: str,
    backup: str,
    port: int,
    *,
    redis: str | None,
    prefix: str | None = None,
    duration: str = "30s",
    failures: int = 1,
    keys: tuple[str, str] | None = None,
    primary_attempts: int | None = None,
    extra: str = "",
) -> str:
    """Two OpenAI-type models, primary then backup, on listener "main"; a `[cluster]` on
    `redis` under `prefix` (instances of one group share it; default: this port's own)."""
    cluster = f'[cluster]\nredis = "{redis}"\nprefix = "{prefix or f"t{port}"}"\n' if redis else ""
    key_a, key_b = (f'api_key = "{k}"\n' for k in keys) if keys else ("", "")
    attempts = f"attempts = {primary_attempts}\n" if primary_attempts is not None else ""
    return f"""
[server]
shutdown_timeout = "2s"
[retry]
max_cycles = 1
[cooldown]
failures = {failures}
duration = "{duration}"
max_duration = "60s"
{cluster}
[providers.a]
url = "{primary}"
{key_a}[providers.b]
url = "{backup}"
{key_b}[models.primary]
provider = "a"
type = "openai"
model = "m"
{attempts}[models.backup]
provider = "b"
type = "openai"
model = "m"
[[listeners]]
name = "main"
port = {port}
models = ["primary", "backup"]
{extra}
"""


@asynccontextmanager
async def started(
    tmp_path: Path, texts: list[tuple[int, str]], procs: list[ServeProcess] | None = None
) -> AsyncIterator[list[str]]:
    """A `hydrallm serve` process per (port, config text), all ready; yields their base
    URLs and stops them after (`procs` is filled for a test that kills one itself)."""
    procs = [] if procs is None else procs
    try:
        for i, (_, text) in enumerate(texts):
            path = tmp_path / f"node{i}.toml"
            path.write_text(text)
            procs.append(ServeProcess(path))
        bases = [f"http://127.0.0.1:{port}" for port, _ in texts]
        for proc, base in zip(procs, bases, strict=True):
            await proc.wait_ready(base, timeout=20)
        yield bases
    finally:
        for proc in procs:
            with contextlib.suppress(AssertionError):
                await proc.stop()
            proc.kill()


async def health(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(base + "/_hydrallm/health") as resp:
        doc: dict[str, Any] = await resp.json()
    return doc


async def wait_for(
    check: Callable[[], Any], timeout: float, what: str, interval: float = 0.01
) -> float:
    """Poll the async `check()` until it is true; returns the seconds it took."""
    started = time.monotonic()
    last: Any = None
    while True:
        last = await check()
        if last:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)
