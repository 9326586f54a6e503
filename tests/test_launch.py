"""`hydrallm serve` is read without click (`hydrallm.launch`, to start sooner): every line
it reads, it reads as click does; every line it does not, click gets and reports as
always.  And the real console script serves through it, without loading click."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.opshelp import free_port

from hydrallm.cli.main import main
from hydrallm.launch import serve_args


def click_reads(argv: list[str]) -> dict[str, Any]:
    """The flags click hands `serve` for this line: the group's, then the command's
    (a value given to the command wins), as `cli.main` merges them."""
    ctx = main.make_context("hydrallm", list(argv))
    rest = [*ctx._protected_args, *ctx.args]
    found = {k: v for k, v in ctx.params.items() if v is not None}
    if rest:
        assert rest[0] == "serve"
        command = main.get_command(ctx, "serve")
        assert command is not None
        sub = command.make_context("serve", rest[1:], parent=ctx)
        found.update({k: v for k, v in sub.params.items() if v is not None})
    return found


READ_ALIKE = [
    [],
    ["serve"],
    ["serve", "-c", "/etc/h.toml"],
    ["-c", "/etc/h.toml", "serve"],
    ["--config=/etc/h.toml", "serve", "--port", "9000"],
    ["serve", "--host", "0.0.0.0", "-p", "8081", "--log-level", "DEBUG"],
    ["-l", "warn", "serve", "-l", "error"],  # the command's value wins
    ["--port=1", "serve", "--port=65535"],
    ["serve", "--workers", "4"],
    ["--workers=2", "serve"],
    ["--workers", "2", "serve", "--workers", "3"],
    ["-c", "a.toml", "--host", "::1"],
]


@pytest.mark.parametrize("argv", READ_ALIKE, ids=[" ".join(a) or "(none)" for a in READ_ALIKE])
def test_a_plain_serve_line_is_read_as_click_reads_it(argv: list[str]) -> None:
    assert serve_args(argv) == click_reads(argv)


LEFT_TO_CLICK = [
    ["--help"],
    ["serve", "--help"],
    ["check"],
    ["-c", "x.toml", "check"],
    ["serve", "--port", "0"],
    ["serve", "--port", "65536"],
    ["serve", "--port", "http"],
    ["serve", "--workers", "0"],
    ["serve", "--workers", "257"],
    ["serve", "--log-level", "loud"],
    ["serve", "--nope"],
    ["serve", "-c"],
    ["serve", "serve"],
    ["serve", "-cfile.toml"],  # click's short-option forms: click reads them
    ["serve", "-p=80"],
]


@pytest.mark.parametrize("argv", LEFT_TO_CLICK, ids=[" ".join(a) for a in LEFT_TO_CLICK])
def test_any_other_line_goes_to_click(argv: list[str]) -> None:
    assert serve_args(argv) is None


def test_click_still_reports_a_bad_serve_line() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("hydrallm")), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "0 is not in the range 1<=x<=65535" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_config_problem_reads_the_same_on_both_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 0\n")
    hydrallm = str(Path(sys.executable).with_name("hydrallm"))
    quick, slow = (
        subprocess.run([hydrallm, *argv], capture_output=True, text=True, timeout=60)
        for argv in (["serve", "-c", str(bad)], ["serve", f"-c{bad}"])  # the second: click
    )
    assert quick.returncode == slow.returncode == 1
    assert quick.stderr == slow.stderr
    assert "port 0 is out of range" in quick.stderr and "Traceback" not in quick.stderr


def test_serve_through_the_console_script_loads_no_click(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(
        f"[server]\nport = {port}\n[journal]\nenabled = false\n[endpoints.e]\n"
        'url = "http://127.0.0.1:9"\n[[models]]\nendpoint = "e"\ntype = "openai"\nmodel = "m"\n'
    )
    probe = (
        "import sys, threading, time, socket, os, signal\n"
        "from hydrallm.launch import run\n"
        "def probe():\n"
        "    while socket.socket().connect_ex(('127.0.0.1', int(sys.argv[1]))):\n"
        "        time.sleep(0.01)\n"
        "    print('click' in sys.modules, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "threading.Thread(target=probe, daemon=True).start()\n"
        "run(['serve', '-c', sys.argv[2]])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(port), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "False", out.stdout + out.stderr
    assert out.returncode == 0, out.stderr
