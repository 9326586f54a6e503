"""Fixtures shared by the tests: an HTTP client and a pair of fake upstreams; and a state
directory of the run's own, so that the journal's default file (under the state directory)
never lands in the user's home, for a test or for any hydrallm subprocess it starts."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from clusterhelp import RedisServer
from hydrallm.testing import FakeUpstream


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir() -> Iterator[None]:
    with tempfile.TemporaryDirectory(prefix="hydrallm-state-") as path:
        old = os.environ.get("XDG_STATE_HOME")
        os.environ["XDG_STATE_HOME"] = path
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("XDG_STATE_HOME", None)
            else:
                os.environ["XDG_STATE_HOME"] = old


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def primary() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(name="primary") as fake:
        yield fake


@pytest.fixture
async def fallback() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(name="fallback") as fake:
        yield fake


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port (the cluster tests), killed after."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
