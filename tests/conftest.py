"""Fixtures shared by the end-to-end tests: an HTTP client and a pair of fake upstreams."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from hydrallm.testing import FakeUpstream


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
