"""Every config under examples/ loads, with a made-up environment for its $VARS."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hydrallm.config.load import load_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))
HYDRALLM = str(Path(sys.executable).with_name("hydrallm"))


def fake_env(path: Path) -> dict[str, str]:
    names = re.findall(r'"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?"', path.read_text())
    return {name: f"fake-{name.lower()}" for name in names}


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "anthropic-fallback.toml",
        "openai-compatible.toml",
        "claude-code-routes.toml",
        "bedrock.toml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_without_warnings(path: Path) -> None:
    config = load_config(path, fake_env(path))
    assert config.listeners and config.models
    assert config.warnings == ()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_hydrallm_check_accepts_example(path: Path) -> None:
    env = {**os.environ, **fake_env(path)}
    done = subprocess.run(
        [HYDRALLM, "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "(valid)" in done.stdout


def test_routes_example_sends_haiku_to_its_own_chain() -> None:
    path = next(p for p in EXAMPLES if p.name == "claude-code-routes.toml")
    config = load_config(path, fake_env(path))
    claude = next(lc for lc in config.listeners if lc.name == "claude-code")
    assert claude.routes[0].pattern == "*haiku*"
    assert claude.routes[0].models == ("haiku", "glm-air")
    assert claude.auth_keys == ("fake-hydrallm_key",)


def test_openai_example_strips_the_version_prefix() -> None:
    path = next(p for p in EXAMPLES if p.name == "openai-compatible.toml")
    config = load_config(path, fake_env(path))
    assert config.endpoints["zai"].strip_version_prefix is True
    assert config.endpoints["local"].api_key == "-"
    assert list(config.models) == ["zai/glm-5", "zai/glm-4.7", "local-qwen"]
