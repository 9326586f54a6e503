"""Helpers shared by the operations tests: free ports, proxies in-process and as a process."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from hydrallm.app.lifecycle import Proxy, log_startup, start
from hydrallm.config import Config
from hydrallm.config.load import parse_config
from hydrallm.observe.events import Logger

HYDRALLM = str(Path(sys.executable).with_name("hydrallm"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(text, path=None, env=env or {})


def one_model_config(
    upstream: str,
    port: int,
    model: str,
    *,
    server: str = 'shutdown_timeout = "3s"',
    extra: str = "",
) -> str:
    """One OpenAI-type model named `model` on provider "up", served on listener "main";
    `server`: the lines of `[server]`; `extra`: more sections."""
    return f"""
[server]
{server}
[providers.up]
url = "{upstream}"
[models.{model}]
provider = "up"
type = "openai"
model = "{model}"
[[listeners]]
name = "main"
port = {port}
models = ["{model}"]
{extra}
"""


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[Proxy, io.StringIO]]:
    """The proxy started in this process; yields it and its log."""
    log = io.StringIO()
    proxy = await start(config, logger=Logger("info", stream=log, secrets=config.secrets))
    log_startup(proxy)
    try:
        yield proxy, log
    finally:
        await proxy.close()


def url(proxy: Proxy, listener: str = "default") -> str:
    host, port = proxy.addresses()[listener]
    return f"http://{host}:{port}"


def chat(model: str | None = "gpt-x", stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body["model"] = model
    if stream:
        body["stream"] = True
    return body


async def post_chat(
    session: aiohttp.ClientSession,
    base: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    async with session.post(
        base + "/v1/chat/completions", data=json.dumps(body).encode(), headers=headers
    ) as resp:
        return resp.status, dict(resp.headers), await resp.read()


class ServeProcess:
    """`hydrallm serve -c PATH` as a real subprocess; stderr goes to a file."""

    def __init__(self, config_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.log_path = config_path.with_suffix(".log")
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRALLM")} | (env or {})
        self.proc = subprocess.Popen(
            [HYDRALLM, "serve", "-c", str(config_path), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_log(self, needle: str, timeout: float = 5.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if text.count(needle) >= count:
                return text
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in the log:\n{text}")
            await asyncio.sleep(0.05)

    async def wait_ready(self, base: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(base + "/_hydrallm/health") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"proxy did not start:\n{self.log()}")
                await asyncio.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"proxy did not stop on SIGTERM:\n{self.log()}")
            await asyncio.sleep(0.05)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@asynccontextmanager
async def two_workers(tmp_path: Path, text: str) -> AsyncIterator[tuple[ServeProcess, str]]:
    """`hydrallm serve --workers 2` (from `[server]`) of `text` on a free port, ready;
    yields the process and its base URL, killed after unless the test stopped it."""
    port = free_port()
    path = tmp_path / "config.toml"
    path.write_text(text + f'[server]\nworkers = 2\nport = {port}\nshutdown_timeout = "2s"\n')
    proc = ServeProcess(path)
    try:
        base = f"http://127.0.0.1:{port}"
        await proc.wait_ready(base)
        yield proc, base
    finally:
        proc.kill()
