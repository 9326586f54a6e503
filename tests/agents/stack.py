"""A hydrallm subprocess in front of two fake upstreams (primary, fallback), on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from hydrallm.testing import FakeUpstream
from opshelp import ServeProcess, free_port


@dataclass
class Stack:
    base: str
    primary: FakeUpstream
    fallback: FakeUpstream
    proxy: ServeProcess


def config_text(types: tuple[str, str], primary: str, fallback: str, port: int) -> str:
    # One try per model and no waiting: a failure goes straight to the fallback, so the
    # agent sees the fallback's answer within its own first request.
    return f"""
[server]
shutdown_timeout = "2s"

[retry]
default_interval = "10ms"
max_cycles = 1
first_token_timeout = "10s"
stream_idle_timeout = "10s"

[cooldown]
enabled = false

[providers.primary]
url = "{primary}"
api_key = "sk-upstream-primary-0001"

[providers.fallback]
url = "{fallback}"
api_key = "sk-upstream-fallback-0002"

[models.primary]
provider = "primary"
type = "{types[0]}"
model = "primary-model"

[models.fallback]
provider = "fallback"
type = "{types[1]}"
model = "fallback-model"

[[listeners]]
name = "agents"
host = "127.0.0.1"
port = {port}
models = ["primary", "fallback"]
"""


@asynccontextmanager
async def stack(
    tmp: Path,
    api_type: str,
    primary: FakeUpstream,
    fallback: FakeUpstream,
    *,
    fallback_type: str | None = None,
) -> AsyncIterator[Stack]:
    """Start the fakes and `hydrallm serve`; stop all three on the way out.

    `fallback_type` gives the fallback another API type than the primary (a chain that
    crosses families)."""
    types = (api_type, fallback_type or api_type)
    async with primary, fallback:
        port = free_port()
        path = tmp / "hydrallm.toml"
        path.write_text(config_text(types, primary.url, fallback.url, port))
        proc = ServeProcess(path)
        base = f"http://127.0.0.1:{port}"
        try:
            await proc.wait_ready(base)
            yield Stack(base, primary, fallback, proc)
        finally:
            if proc.proc.poll() is None:
                try:
                    await proc.stop()
                except AssertionError:
                    proc.kill()
            else:
                proc.kill()
