"""`hydrallm service install/uninstall/status` under a temporary HOME."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HYDRALLM = str(Path(sys.executable).with_name("hydrallm"))

CONFIG = """
[providers.zai]
url = "https://api.z.ai/api/anthropic"
api_key = "$ZAI_API_KEY"

[providers.backup]
url = "https://api.anthropic.com"
api_key = "sk-ant-written-in-the-file"

[models.glm]
provider = "zai"
type = "anthropic"
model = "glm-5"

[models.claude]
provider = "backup"
type = "anthropic"
model = "claude-sonnet-4-5"

[[listeners]]
name = "main"
port = 18123
models = ["glm", "claude"]
"""


def run(
    home: Path, *args: str, cwd: Path | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ZAI_API_KEY", "HYDRALLM_CONFIG")}
    env.update({"HOME": str(home), "NO_COLOR": "1", **(extra_env or {})})
    return subprocess.run(
        [HYDRALLM, *args], capture_output=True, text=True, timeout=30, cwd=cwd, env=env, check=False
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "hydrallm.toml").write_text(CONFIG)
    return tmp_path / "home"


def unit_path(home: Path) -> Path:
    return home / ".config" / "systemd" / "user" / "hydrallm.service"


def test_systemd_unit_runs_this_hydrallm_with_the_absolute_config(home: Path) -> None:
    work = home.parent / "work"
    done = run(
        home, "service", "install", "--manager", "systemd", "--config", "hydrallm.toml", cwd=work
    )
    assert done.returncode == 0, done.stderr
    unit = unit_path(home)
    assert f"wrote {unit}" in done.stdout
    assert "systemctl --user enable --now hydrallm" in done.stdout
    text = unit.read_text()
    exec_start = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    assert exec_start == (f'ExecStart="{HYDRALLM}" "serve" "--config" "{work / "hydrallm.toml"}"')
    assert "WantedBy=default.target" in text
    # The $ZAI_API_KEY reference is reported; the literal key is not.
    assert "providers.zai.api_key refers to $ZAI_API_KEY" in done.stderr
    assert "backup" not in done.stderr
    assert "sk-ant" not in done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_analyze_accepts_the_unit(home: Path) -> None:
    work = home.parent / "work"
    assert (
        run(
            home, "service", "install", "--manager", "systemd", "-c", str(work / "hydrallm.toml")
        ).returncode
        == 0
    )
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit_path(home))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [x for x in verify.stderr.splitlines() if "hydrallm.service" in x]
    assert verify.returncode == 0 and not problems, verify.stderr


def test_launchd_plist(home: Path) -> None:
    work = home.parent / "work"
    done = run(
        home, "service", "install", "--manager", "launchd", "-c", str(work / "hydrallm.toml")
    )
    assert done.returncode == 0, done.stderr
    path = home / "Library" / "LaunchAgents" / "dev.hydrallm.plist"
    plist = plistlib.loads(path.read_bytes())
    assert plist["Label"] == "dev.hydrallm"
    assert plist["ProgramArguments"] == [HYDRALLM, "serve", "--config", str(work / "hydrallm.toml")]
    assert plist["RunAtLoad"] is True
    assert f"launchctl load -w {path}" in done.stdout
    assert "$ZAI_API_KEY" in done.stderr


def test_status_and_uninstall(home: Path) -> None:
    work = home.parent / "work"
    before = run(home, "service", "status", "--manager", "systemd")
    assert before.returncode == 0
    assert "installed: no" in before.stdout
    run(home, "service", "install", "--manager", "systemd", "-c", str(work / "hydrallm.toml"))
    during = run(home, "service", "status", "--manager", "systemd")
    assert during.returncode == 0, during.stderr
    assert f"installed: yes ({unit_path(home)})" in during.stdout
    assert f"config: {work / 'hydrallm.toml'}" in during.stdout
    assert "answering: no (http://127.0.0.1:18123)" in during.stdout
    gone = run(home, "service", "uninstall", "--manager", "systemd")
    assert gone.returncode == 0
    assert f"removed {unit_path(home)}" in gone.stdout
    assert not unit_path(home).exists()
    again = run(home, "service", "uninstall", "--manager", "systemd")
    assert again.returncode == 0 and "not installed" in again.stdout


def test_an_invalid_config_is_refused_and_nothing_is_written(home: Path) -> None:
    bad = home.parent / "work" / "bad.toml"
    bad.write_text("[[models]]\nendpoint = 'nowhere'\ntype = 'openai'\nmodel = 'x'\n")
    done = run(home, "service", "install", "--manager", "systemd", "-c", str(bad))
    assert done.returncode == 1
    assert 'endpoint "nowhere" not found' in done.stderr
    assert not unit_path(home).exists()


def test_a_missing_config_is_refused(home: Path) -> None:
    done = run(home, "service", "install", "--manager", "systemd")
    assert done.returncode == 1
    assert "no config file at" in done.stderr
