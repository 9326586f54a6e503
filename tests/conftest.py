"""Keeps the test run off the user's own state: the journal's default file lives under
the state directory, which every test (and every hydrallm subprocess) gets fresh."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


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
