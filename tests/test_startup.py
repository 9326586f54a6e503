"""Startup stays lean: `hydrallm --help` and `hydrallm serve` load only what they use.

`hydrallm serve` is a service that starts at login and `--help` is typed by people: neither
should pay for the demo, the terminal views, the journal readers, botocore or test tools.
Each case runs the real command under `python -X importtime`, which names every module as
it is imported, and fails when a module of its list was loaded (for `serve`: before the
proxy logged that it listens).  No timing is asserted: `python -m bench` measures it.

To forbid another module, add its name to a tuple below: one line.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tests.opshelp import free_port

# Loaded by neither `hydrallm --help` nor `hydrallm serve` (a config without Bedrock).
NEVER_AT_STARTUP: tuple[str, ...] = (
    "rich",
    "botocore",
    "boto3",
    "hypothesis",
    "pytest",
    "hydrallm.testing",
    "hydrallm.cli.demo",
    "hydrallm.cli.statusview",
    "hydrallm.cli.service",
    "hydrallm.providers.aws",
    "hydrallm.providers.bedrock",
)

# Not loaded by `hydrallm --help` either: it needs click and the command table, no more.
NOT_FOR_HELP: tuple[str, ...] = (
    *NEVER_AT_STARTUP,
    "aiohttp",
    "asyncio",
    "prometheus_client",
    "sqlite3",
    "statistics",
    "subprocess",
    "hydrallm.observe.journal_query",  # the `log` / `usage` commands' reader
    "hydrallm.config",
    "hydrallm.app",
    "hydrallm.proxy",
)

# Not loaded by `hydrallm serve` before it is ready: the serve path's own list.  (Not
# difflib: click imports it to parse any short option such as `-c`.)
NOT_FOR_SERVE: tuple[str, ...] = (
    *NEVER_AT_STARTUP,
    "redis",  # only with [cluster] redis
    "hydrallm.app.redisstore",
    "hydrallm.providers.gemini",  # only the configured families' providers
    "aiohttp",  # the server and the upstream client are our own (httptools)
    "prometheus_client",  # loaded by the first /metrics scrape
    "hydrallm.observe.journal_query",  # loaded by the first status-page chart
    "statistics",
    "email",
    # Cross-family translation: loaded at the first request a chain translates (the config
    # here has one family; `formats.translate` itself, the path tests, is light).
    "hydrallm.formats.translate.translator",
    "hydrallm.formats.translate.ir",
    "hydrallm.formats.translate.errors",
    "hydrallm.formats.translate.anthropic",
    "hydrallm.formats.translate.chat",
    "hydrallm.formats.translate.gemini",
    "hydrallm.formats.translate.responses",
    "hydrallm.formats.translate.bedrock",
    "mimetypes",
    "hydrallm.observe.snapshot",  # the status views: loaded by the first scrape or status read
    "encodings.idna",  # the listen address goes to the loop as bytes (no IDNA codec)
    # Shared state: only with [cluster] redis or --workers.
    "hydrallm.app.cluster",
    "hydrallm.app.workers",
    "hydrallm.app.workershare",
    # A plain `serve` line is read by `hydrallm.launch`, not by click.
    "click",
    "hydrallm.cli",
    "hydrallm.observe.journal_writer",  # the writer process's; the proxy only spools
    "hydrallm.routing.shared",
)

_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$")


def _loaded(lines: list[str]) -> set[str]:
    return {m[1] for line in lines if (m := _IMPORT_LINE.match(line))}


def _forbidden(loaded: set[str], names: tuple[str, ...]) -> list[str]:
    """Names of `names` loaded, a package counting when any of its modules was."""
    return sorted(
        {n for n in names for mod in loaded if mod == n or mod.startswith(n + ".")},
    )


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HYDRALLM")}


def _config(tmp_path: Path, *, journal: bool) -> tuple[Path, int]:
    port = free_port()
    upstream = free_port()  # starting contacts no upstream: nothing needs to listen there
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}

[journal]
enabled = {"true" if journal else "false"}
path = "{tmp_path / "journal.db"}"

[endpoints.up]
url = "http://127.0.0.1:{upstream}"

[[models]]
endpoint = "up"
type = "openai"
model = "gpt-x"
"""
    )
    return config, port


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def test_help_loads_only_the_command_table() -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hydrallm", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    # Every command is still listed (the journal commands are registered as before).
    for command in ("serve", "check", "status", "demo", "log", "usage", "service"):
        assert re.search(rf"^\s+{command}\s", out.stdout, re.M), out.stdout
    loaded = _loaded(out.stderr.splitlines())
    assert "hydrallm.cli.main" in loaded  # the importtime listing is really there
    assert _forbidden(loaded, NOT_FOR_HELP) == []


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """Lines of `proc`'s merged output up to (without) the first one containing `marker`.

    Read from the descriptor as bytes arrive, not with `readline`: a text pipe's buffer
    takes in several lines at a read, and a select on the descriptor then waits for more
    while the marker sits in that buffer (a loaded machine writes them in one burst)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    lines: list[str] = []
    pending = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.5):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *whole, pending = (pending + chunk).split(b"\n")
            for raw in whole:
                line = raw.decode("utf-8", "replace") + "\n"
                if marker in line:
                    return lines
                lines.append(line)
    raise AssertionError(f"no {marker!r} line; output:\n" + "".join(lines[-40:]))


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
def test_serve_loads_only_the_serve_path(tmp_path: Path, journal: bool) -> None:
    config, _ = _config(tmp_path, journal=journal)
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "hydrallm", "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    try:
        before_ready = _read_until(proc, " listening ", timeout=60)
    finally:
        _stop(proc)
    loaded = _loaded(before_ready)
    # The listing covers the real serve path (not a process that failed early).
    assert {"hydrallm.launch", "hydrallm.app.lifecycle", "hydrallm.proxy.engine"} <= loaded
    assert _forbidden(loaded, NOT_FOR_SERVE) == []


def test_what_loads_on_first_use_still_answers_right(tmp_path: Path) -> None:
    """The metrics exposition and the status p50s, loaded at the first scrape or read of a
    fresh process, are what scrapers and the status page expect."""
    from prometheus_client import CONTENT_TYPE_LATEST
    from prometheus_client.parser import text_string_to_metric_families

    config, port = _config(tmp_path, journal=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hydrallm", "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    try:
        _read_until(proc, " listening ", timeout=60)
        base = f"http://127.0.0.1:{port}/_hydrallm"
        with urllib.request.urlopen(base + "/metrics", timeout=20) as resp:
            content_type = resp.headers["Content-Type"]
            text = resp.read().decode()
        with urllib.request.urlopen(base + "/status.json", timeout=20) as resp:
            status = resp.read()
    finally:
        _stop(proc)
    assert content_type == CONTENT_TYPE_LATEST
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"hydrallm_requests", "hydrallm_circuit_state", "hydrallm_worker_info"} <= families
    assert b'"models"' in status


# Run in a fresh interpreter through the console script's entry point: once the port
# accepts, wait (bounded) for the collector to be on, say so, and stop the server.
_COLLECTOR_PROBE = """
import gc, os, signal, socket, sys, threading, time
from hydrallm.cli import main

port = int(sys.argv[1])

def probe():
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.005)
    deadline = time.monotonic() + 10
    while not gc.isenabled() and time.monotonic() < deadline:
        time.sleep(0.01)
    state = "on" if gc.isenabled() else "off"
    print("collector", state, "frozen", gc.get_freeze_count() > 0, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, daemon=True).start()
main(["serve", "-c", sys.argv[2]])
"""


def test_a_started_proxy_collects_garbage_again(tmp_path: Path) -> None:
    """Starting runs without the cyclic garbage collector (it would find nothing to free);
    a proxy that stayed without it would grow with every request that leaves a cycle.  What
    starting made is frozen out of its view (its full passes would walk it for nothing)."""
    out = _probe(tmp_path, _COLLECTOR_PROBE, journal=False)
    assert "collector on frozen True" in out


def _probe(tmp_path: Path, probe: str, *, journal: bool) -> str:
    """`probe` run in a fresh interpreter with a proxy's config and port; its output."""
    config, port = _config(tmp_path, journal=journal)
    out = subprocess.run(
        [sys.executable, "-c", probe, str(port), str(config)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


# Once the port accepts, wait (bounded) until no dataclass of the loaded modules still has
# its `__init__` to compile, say how many are left, and stop the server.
_PENDING_PROBE = """
import os, signal, socket, sys, threading, time
from hydrallm.launch import run

port = int(sys.argv[1])

def pending():
    left = []
    for name, module in list(sys.modules.items()):
        if name.startswith("hydrallm."):
            for value in list(vars(module).values()):
                init = value.__dict__.get("__init__") if isinstance(value, type) else None
                if hasattr(init, "__dataclass_build__"):
                    left.append(f"{name}.{value.__qualname__}")
    return left

def probe():
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.005)
    deadline = time.monotonic() + 10
    while pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    print("pending", pending(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, daemon=True).start()
run(["serve", "-c", sys.argv[2]])
"""


def test_a_started_proxy_compiles_what_it_left_for_later(tmp_path: Path) -> None:
    """`hydrallm.dataclass` compiles a dataclass's `__init__` at its first use so that the
    proxy listens sooner; once it listens, it compiles the rest (one module a turn of the
    loop), so that the first requests do not pay for it."""
    out = _probe(tmp_path, _PENDING_PROBE, journal=True)
    assert "pending []" in out, out


def test_a_serve_that_fails_leaves_the_collector_on(tmp_path: Path) -> None:
    """`serve` called in a process that goes on (an embedding, a test runner): a config
    error still ends with the collector on."""
    import gc

    from click.testing import CliRunner

    from hydrallm.cli.main import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 0\n")
    assert gc.isenabled()
    result = CliRunner().invoke(main, ["serve", "-c", str(bad)])
    assert result.exit_code == 1, result.output
    assert "port 0 is out of range" in result.output
    assert gc.isenabled()
