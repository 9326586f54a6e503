"""`hydrallm demo` as a user runs it: a real process, short settings."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HYDRALLM = str(Path(sys.executable).with_name("hydrallm"))
ENV = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"}


def succeeded(output: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(ok, total) straight at the primary and through hydrallm, from the summary."""
    line = next(x for x in output.splitlines() if "succeeded at the client" in x)
    pairs = re.findall(r"(\d+)/(\d+)", line)
    assert len(pairs) == 2, line
    (a, b), (c, d) = pairs
    return (int(a), int(b)), (int(c), int(d))


def test_demo_hides_every_failure_that_the_primary_shows() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [
            HYDRALLM,
            "demo",
            "--requests",
            "40",
            "--concurrency",
            "8",
            "--failure-rate",
            "0.5",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    direct, proxied = succeeded(done.stdout)
    assert proxied == (40, 40)
    assert direct[1] == 40 and direct[0] < 40
    assert "every request succeeded" in done.stdout
    for row in (
        "retries (same model)",
        "fallbacks (next model)",
        "cooldowns opened",
        "latency p50",
        "latency p99",
    ):
        assert row in done.stdout
    retries = int(re.search(r"retries \(same model\)\s*│\s*-\s*│\s*(\d+)", done.stdout)[1])
    assert retries > 0
    assert time.monotonic() - started < 30


def test_demo_is_reproducible_with_a_seed() -> None:
    args = [
        HYDRALLM,
        "demo",
        "--requests",
        "10",
        "--concurrency",
        "1",
        "--failure-rate",
        "0.3",
        "--seed",
        "11",
    ]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60, env=ENV, check=False)
    second = subprocess.run(args, capture_output=True, text=True, timeout=60, env=ENV, check=False)
    assert first.returncode == second.returncode == 0
    assert succeeded(first.stdout) == succeeded(second.stdout)


def test_failure_rate_must_be_a_fraction() -> None:
    done = subprocess.run(
        [HYDRALLM, "demo", "--failure-rate", "30"],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
        check=False,
    )
    assert done.returncode == 2
    assert "--failure-rate" in done.stderr


def test_keep_running_leaves_the_proxy_up_until_ctrl_c() -> None:
    proc = subprocess.Popen(
        [HYDRALLM, "demo", "--requests", "10", "--concurrency", "4", "--keep-running"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert proc.stdout is not None
        page = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = re.search(r"status page:\s+(\S+)", line)
            if match:
                page = match[1]
                break
        assert page is not None, "no status page URL printed"
        with urllib.request.urlopen(page, timeout=5) as resp:
            assert resp.status == 200
            assert b"hl-models" in resp.read()
        with urllib.request.urlopen(page + "status.json", timeout=5) as resp:
            doc = json.loads(resp.read())
        assert [m["id"] for m in doc["models"]] == ["primary", "fallback"]
        assert len(doc["requests"]) >= 10
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
