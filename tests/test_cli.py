"""The `hydrallm` command, run as a real subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tests.opshelp import free_port

from hydrallm import __version__

FIXTURES = Path(__file__).parent / "fixtures"


def hydrallm(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRALLM")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hydrallm", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


GOOD = """
[server]
port = {port}
[endpoints.main]
url = "http://127.0.0.1:9"
api_key = "sk-never-printed-123"
[[models]]
endpoint = "main"
type = "openai"
model = "gpt-4o"
attempts = 3
timeout = "45s"
"""


def test_version() -> None:
    out = hydrallm("version")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0] == f"hydrallm {__version__}"
    assert lines[1].startswith("commit: ") and lines[2].startswith("built: ")


def test_help_everywhere() -> None:
    for args in ([], ["serve"], ["check"], ["edit"], ["version"]):
        out = hydrallm(*args, "--help")
        assert out.returncode == 0, out.stderr
        assert "--config" in out.stdout


def test_check_prints_the_chain_without_secrets(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, GOOD.format(port=8123))
    out = hydrallm("check", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "127.0.0.1:8123" in out.stdout
    assert "main / gpt-4o [openai] attempts=3 timeout=45s interval=100ms" in out.stdout
    assert "sk-never-printed-123" not in out.stdout + out.stderr


def test_global_flags_before_or_after_the_subcommand(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, GOOD.format(port=8123))
    before = hydrallm("-c", str(cfg), "--port", "9001", "check")
    after = hydrallm("check", "--config", str(cfg), "-p", "9002", "--host", "127.0.0.2")
    assert before.returncode == 0 and after.returncode == 0, before.stderr + after.stderr
    assert "127.0.0.1:9001" in before.stdout
    assert "127.0.0.2:9002" in after.stdout


def test_config_from_environment_variable(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, GOOD.format(port=8124))
    out = hydrallm("check", env={"HYDRALLM_CONFIG": str(cfg)})
    assert out.returncode == 0 and "8124" in out.stdout


def test_missing_config_names_the_path_and_suggests_edit(tmp_path: Path) -> None:
    out = hydrallm("check", "-c", str(tmp_path / "nope.toml"))
    assert out.returncode == 1
    assert str(tmp_path / "nope.toml") in out.stderr
    assert "hydrallm edit" in out.stderr
    assert "Traceback" not in out.stderr


def test_default_path_is_under_home(tmp_path: Path) -> None:
    out = hydrallm("check", env={"HOME": str(tmp_path), "USERPROFILE": str(tmp_path)})
    assert out.returncode == 1
    assert str(tmp_path / ".config" / "hydrallm" / "config.toml") in out.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[server]\nport = 8080\n",
            "config validation failed: at least one model must be configured",
        ),
        (
            '[endpoints.a]\nurl = "http://x"\n[[models]]\nendpoint = "a"\ntype = "openai"\nmodel = "m"\n'
            '[[models]]\nendpoint = "a"\ntype = "openai"\nmodel = "m"\n[[models]]\nendpoint = "foo"\ntype = "openai"\nmodel = "m"\n',
            'model 2: endpoint "foo" not found',
        ),
        (
            '[endpoints.a]\nurl = "http://x"\n[[models]]\nendpoint = "a"\ntype = "vertex"\nmodel = "m"\n',
            'model 0: unsupported type "vertex" (supported: openai, anthropic, bedrock, gemini)',
        ),
        (
            '[endpoints.a]\nurl = "http://x"\n[[models]]\nendpoint = "a"\ntype = "openai"\nmodel = "m"\natempts = 2\n',
            'unknown key "atempts" (did you mean "attempts"?)',
        ),
        ("[server\nport = 1\n", "line 1"),
    ],
)
def test_validation_errors_exit_1_without_traceback(
    tmp_path: Path, text: str, message: str
) -> None:
    out = hydrallm("check", "-c", str(write_config(tmp_path, text)))
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_usage_error_exits_2() -> None:
    assert hydrallm("--port", "notaport", "check").returncode == 2


def _wait_http(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


def test_serve_starts_answers_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, GOOD.format(port=port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hydrallm", "serve", "-c", str(cfg), "-l", "debug"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/_hydrallm/health")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert f"address=http://127.0.0.1:{port}" in err
    assert "model=gpt-4o" in err
    assert "sk-never-printed-123" not in err


def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write_config(tmp_path, GOOD.format(port=port))
        out = hydrallm("serve", "-c", str(cfg))
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if "already in use" in line]
    assert errors and str(port) in errors[0]
    assert "Traceback" not in out.stderr


def test_edit_creates_from_template_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nexit 0\n")
    editor.chmod(0o755)
    out = hydrallm("edit", "-c", str(path), env={"EDITOR": str(editor), "ANTHROPIC_API_KEY": "x"})
    assert out.returncode == 0, out.stderr
    assert path.exists() and "[[models]]" in path.read_text()
    # An editor that saves an invalid file: the problems are printed, exit 1.
    bad = tmp_path / "bad-editor.sh"
    bad.write_text('#!/bin/sh\nprintf "[retry]\\nmax_cycles = \\"x\\"\\n" > "$1"\n')
    bad.chmod(0o755)
    out = hydrallm("edit", "-c", str(path), env={"EDITOR": str(bad)})
    assert out.returncode == 1
    assert "max_cycles" in out.stderr


def test_showcase_configs_check(tmp_path: Path) -> None:
    for name in (
        "glm-5-coding-plan-openai.toml",
        "glm-5-coding-plan-anthropic.toml",
        "v2-glm-coding-plan.toml",
    ):
        out = hydrallm("check", "-c", str(FIXTURES / name), env={"ZAI_API_KEY": "zk-showcase-1"})
        assert out.returncode == 0, out.stderr
        assert "zk-showcase-1" not in out.stdout
