"""`hydrallm status` against a running proxy (the demo's, as a real process)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from tests.opshelp import free_port

from hydrallm.cli.statusview import StatusUnavailable, fetch_status

HYDRALLM = str(Path(sys.executable).with_name("hydrallm"))
FRAME = "Models (last 5 minutes)"
# Generous: the first frame of a fresh `hydrallm` on a loaded two-core machine (imports,
# bytecode compiled anew under PYTHONDONTWRITEBYTECODE) has taken more than 2.5 s.
FRAMES_WITHIN_S = 60.0


def env() -> dict[str, str]:
    """Built per call, not at import: collection runs before conftest's session fixture
    points XDG_STATE_HOME at a private directory, and the demo's journal must land there,
    not in the user's home."""
    return {**os.environ, "COLUMNS": "140", "NO_COLOR": "1", "TERM": "dumb"}


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [
            HYDRALLM,
            "demo",
            "--requests",
            "12",
            "--concurrency",
            "4",
            "--failure-rate",
            "0",
            "--keep-running",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env(),
    )
    assert proc.stdout is not None
    found = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and found is None:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"running at (http://[0-9.:]+)", line)
    try:
        assert found is not None, "the demo did not print its address"
        yield found[1]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        proc.stdout.close()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HYDRALLM, *args], capture_output=True, text=True, timeout=30, env=env(), check=False
    )


def test_status_shows_models_chains_and_requests(demo_url: str) -> None:
    done = run("status", "--url", demo_url)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"hydrallm ok  {demo_url}" in out
    primary = next(x for x in out.splitlines() if "│ primary" in x)
    # No failures injected: every request was served by the primary at once.
    assert "closed" in primary and "100%" in primary and "12 / 12" in primary
    fallback = next(x for x in out.splitlines() if "│ fallback" in x)
    assert "0 / 0" in fallback
    assert "primary → fallback" in out
    assert "POST /v1/messages" in out
    assert out.count("│ demo") >= 10  # recent requests (10 shown) plus the listener row


class Watch:
    """`hydrallm status --watch` as a process, its output read as it comes."""

    def __init__(self, url: str, *, prefix: tuple[str, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [*prefix, HYDRALLM, "status", "--url", url, "--watch"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        self.out: list[str] = []
        self.err = ""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.out.append(line)
                self._changed.notify_all()

    def text(self) -> str:
        with self._changed:
            return "".join(self.out)

    def wait_for(self, needle: str, count: int, within: float = FRAMES_WITHIN_S) -> None:
        """Until `needle` was printed `count` times (the process keeps running)."""
        with self._changed:
            done = self._changed.wait_for(lambda: "".join(self.out).count(needle) >= count, within)
        assert done, f"{count} x {needle!r} not printed within {within:g} s: {self.text()[-2000:]}"

    def interrupt(self) -> int:
        """SIGINT, as Ctrl-C does; the exit status (the process is killed if it ignores it)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"still running 30 s after SIGINT: {self.text()[-2000:]}"
            ) from None
        finally:
            self._reader.join(timeout=10)
            assert self.proc.stderr is not None and self.proc.stdout is not None
            self.err = self.proc.stderr.read()
            self.proc.stderr.close()
            self.proc.stdout.close()
        return code


def test_status_watch_refreshes_until_interrupted(demo_url: str) -> None:
    watch = Watch(demo_url)
    watch.wait_for(FRAME, 2)
    assert watch.interrupt() == 130, watch.err
    assert watch.text().count(FRAME) >= 2
    assert "Traceback" not in watch.err


def test_ctrl_c_ends_a_watch_started_with_sigint_ignored_and_blocked(demo_url: str) -> None:
    # What a background job of a non-interactive shell (`bash .ci/run > log &`) hands down:
    # SIGINT ignored (Python keeps an inherited SIG_IGN); a parent may also leave it blocked.
    # Started so, the watch once refreshed on through every SIGINT.
    handed_down = (
        sys.executable,
        "-c",
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); "
        "os.execv(sys.argv[1], sys.argv[1:])",
    )
    watch = Watch(demo_url, prefix=handed_down)
    watch.wait_for(FRAME, 1)
    assert watch.interrupt() == 130, watch.err


def test_watch_of_a_proxy_that_never_answers_goes_on_and_ends_on_ctrl_c() -> None:
    # Accepts connections (the kernel completes them from the backlog) and never answers.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(16)
        url = f"http://127.0.0.1:{mute.getsockname()[1]}"
        watch = Watch(url)
        # Each frame says so and the next one tries again: two frames, not one stuck fetch.
        watch.wait_for("(retrying)", 2)
        assert watch.interrupt() == 130, watch.err
    assert f"cannot reach hydrallm at {url}" in watch.text()
    assert FRAME not in watch.text()


async def test_a_proxy_that_trickles_its_answer_is_given_up_on_in_time() -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 10_000
        await response.prepare(request)
        for _ in range(10_000):  # one byte every 0.1 s: each read succeeds, the answer never ends
            await response.write(b" ")
            await asyncio.sleep(0.1)
        return response

    app = web.Application()
    app.router.add_get("/_hydrallm/status.json", trickle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        started = asyncio.get_running_loop().time()
        with pytest.raises(StatusUnavailable, match="did not answer within 1 s"):
            await asyncio.to_thread(fetch_status, f"http://127.0.0.1:{port}", timeout=1.0)
        # Far less than the 1000 s the trickle would last (not a speed assertion).
        assert asyncio.get_running_loop().time() - started < 100
    finally:
        await runner.cleanup()


async def test_status_of_something_that_does_not_speak_http_says_so() -> None:
    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            HYDRALLM,
            "status",
            "--url",
            f"http://127.0.0.1:{port}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env(),
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        server.close()
        await server.wait_closed()
    assert proc.returncode == 1
    assert b"did not answer HTTP (BadStatusLine); is this a hydrallm proxy?" in err
    assert b"Traceback" not in err


def test_status_of_a_proxy_that_is_not_running_says_so(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[server]
port = {port}
[endpoints.up]
url = "http://127.0.0.1:9"
[[models]]
endpoint = "up"
type = "openai"
model = "m"
"""
    )
    done = run("status", "-c", str(config))
    assert done.returncode == 1
    assert f"cannot reach hydrallm at http://127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_status_without_a_config_tries_the_default_address(tmp_path: Path) -> None:
    done = subprocess.run(
        [HYDRALLM, "status"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**env(), "HOME": str(tmp_path), "HYDRALLM_CONFIG": str(tmp_path / "none.toml")},
    )
    assert done.returncode == 1
    assert "http://127.0.0.1:8080" in done.stderr
