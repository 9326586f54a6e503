"""The benchmark driver: `python -m bench [--quick | --smoke] [--json PATH]`.

Starts the fake upstream, the bare pass-through and hydrallm (one process each, loopback,
free ports), then measures every figure against the same three targets in interleaved
rounds (direct → pass-through → hydrallm, repeated) so drift on a shared machine cancels
out.  Throughput and non-streaming latency come from `wrk` when it is on PATH, otherwise
from bench/loadgen.py; streaming figures always come from loadgen.py (wrk cannot see the
first byte).  The result is one table (also written as JSON) with PASS/MISS per target.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from bench import paired
from bench.peers import Peer, start_litellm, start_portkey
from bench.procs import (
    Procs,
    cpu_seconds,
    free_port,
    raise_nofile,
    rss_mb,
    wait_port,
    writer_pid,
)
from bench.variants import hydrallm_config, run_variants

HERE = Path(__file__).resolve().parent
TARGETS = ("direct", "passthrough", "hydrallm")
OPENAI_PATH = "/v1/chat/completions"
# The journal's CPU per request (both at once) is measured this many times a round, each
# round with a fresh pair of processes (see `Bench._journal_cpu`).
CPU_SAMPLES = 2


@dataclass(frozen=True)
class Profile:
    name: str
    rounds: int
    duration: float  # seconds per non-streaming measurement
    stream_duration: float
    warmup: float
    concurrencies: tuple[int, ...] = (1, 16, 64)
    stream_concurrencies: tuple[int, ...] = (1, 64)
    chunks: int = 20
    chunk_delay_ms: float = 5.0
    open_streams: int = 1000
    open_stream_delay_ms: float = 50.0
    big_body_bytes: int = 1024 * 1024
    startup_repeats: int = 5
    long_stream_mb: int = 100  # one stream this long; MB/s over its first and last fifth
    settle: bool = True  # wait for hydrallm's journal before each measurement (`quiet`)


PROFILES = {
    "smoke": Profile(
        "smoke",
        rounds=1,
        duration=0.2,
        stream_duration=0.2,
        warmup=0.0,
        chunk_delay_ms=1.0,
        open_streams=50,
        open_stream_delay_ms=5.0,
        startup_repeats=1,
        long_stream_mb=5,
        settle=False,  # the smoke run checks the plumbing, not the figures
    ),
    "quick": Profile("quick", rounds=1, duration=2.0, stream_duration=1.5, warmup=0.3),
    "full": Profile("full", rounds=3, duration=5.0, stream_duration=3.0, warmup=1.0),
}


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, target: str, value: float | None) -> None:
        if value is not None:
            self.values.setdefault(target, []).append(value)

    def get(self, target: str) -> float | None:
        vals = self.values.get(target)
        return statistics.median(vals) if vals else None


@dataclass
class Target:
    name: str
    value: float | None
    limit: str
    passed: bool | None


class Bench:
    def __init__(
        self, profile: Profile, procs: Procs, work: Path, use_wrk: bool, peers: bool = False
    ) -> None:
        self.profile = profile
        self.with_peers = peers
        self.peers: list[Peer] = []
        self.headers: dict[str, dict[str, str]] = {}
        self.procs = procs
        self.work = work
        self.use_wrk = use_wrk
        self.figures: dict[str, Figure] = {}
        self.urls: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.hydrallm_cmd = _hydrallm_cmd()
        self.bodies = self._write_bodies()

    # -- setup -------------------------------------------------------------------------

    def _write_bodies(self) -> dict[str, Path]:
        msg = {"role": "user", "content": "Say hello."}
        small = {"model": "bench-model", "messages": [msg], "max_tokens": 32}
        stream = small | {"stream": True}
        filler = "x" * (self.profile.big_body_bytes - 200)
        big = {"model": "bench-model", "messages": [{"role": "user", "content": filler}]}
        paths = {}
        for name, body in (("small", small), ("stream", stream), ("big", big)):
            path = self.work / f"{name}.json"
            path.write_bytes(json.dumps(body, separators=(",", ":")).encode())
            paths[name] = path
        return paths

    def start(self) -> None:
        py = sys.executable
        up = free_port()
        proc = self.procs.spawn(
            "upstream",
            [
                py,
                str(HERE / "upstream.py"),
                "--port",
                str(up),
                "--chunks",
                str(self.profile.chunks),
            ],
        )
        wait_port(up, proc)
        self.urls["direct"] = f"http://127.0.0.1:{up}"
        self.pids["direct"] = proc.pid
        pt = free_port()
        proc = self.procs.spawn(
            "passthrough",
            [
                py,
                str(HERE / "passthrough.py"),
                "--port",
                str(pt),
                "--upstream",
                f"http://127.0.0.1:{up}",
            ],
        )
        wait_port(pt, proc)
        self.urls["passthrough"] = f"http://127.0.0.1:{pt}"
        self.pids["passthrough"] = proc.pid
        proc, port, _ = self._start_hydrallm(up, "hydrallm")
        self.urls["hydrallm"] = f"http://127.0.0.1:{port}"
        self.pids["hydrallm"] = proc.pid
        self.upstream_port = up
        if self.with_peers:
            self.peers = [start_portkey(self.procs, up), start_litellm(self.procs, self.work, up)]
            for peer in self.peers:
                self.urls[peer.name] = peer.url
                self.pids[peer.name] = peer.pid
                self.headers[peer.name] = peer.headers

    def _start_hydrallm(
        self, upstream_port: int, name: str
    ) -> tuple[subprocess.Popen[bytes], int, float]:
        port = free_port()
        config = self.work / f"{name}.toml"
        config.write_text(hydrallm_config(port, upstream_port, self.work / f"{name}.db"))
        started = time.perf_counter()
        proc = self.procs.spawn(
            name, [*self.hydrallm_cmd, "serve", "-c", str(config), "--log-level", "warn"]
        )
        wait_port(port, proc)
        return proc, port, time.perf_counter() - started

    # -- figures -----------------------------------------------------------------------

    def fig(self, key: str, label: str, unit: str) -> Figure:
        if key not in self.figures:
            self.figures[key] = Figure(key, label, unit)
        return self.figures[key]

    def rounds(self, *, peers: bool = False) -> Iterator[tuple[int, str]]:
        """Every target once per round, interleaved; with `peers`, the peer gateways too."""
        names = [*TARGETS, *(p.name for p in self.peers)] if peers else list(TARGETS)
        for r in range(self.profile.rounds):
            for target in names:
                yield r, target

    def header_args(self, target: str) -> list[str]:
        return [
            a for k, v in self.headers.get(target, {}).items() for a in ("--header", f"{k}:{v}")
        ]

    def quiet(self, target: str = "hydrallm", timeout: float = 60.0) -> None:
        """Wait until hydrallm's journal has loaded what it spooled.  Its writer loads when
        the proxy is quiet, which in this benchmark is while another target is measured:
        left alone, it would take CPU from that target (and flatter hydrallm's ratios).
        Its cost is reported on its own (`journal_writer_us`).  When it had something to
        load, the kernel's writing of those pages is waited for too (`sync`): it would
        otherwise run during the next measurement, which is most often of the same
        process (its c1 run after its c16 one)."""
        deadline = time.monotonic() + timeout
        loaded = False
        while self.profile.settle and time.monotonic() < deadline:
            journal = self.journal_status(target)
            if not journal.get("enabled") or not (
                journal.get("queued") or journal.get("spooled_bytes")
            ):
                if loaded:
                    os.sync()
                    time.sleep(0.2)
                return
            loaded = True
            time.sleep(0.1)

    def journal_status(self, target: str = "hydrallm") -> dict[str, Any]:
        url = self.urls.get(target)
        if url is None:
            return {}
        try:
            with urllib.request.urlopen(url + "/_hydrallm/status.json", timeout=5) as r:
                found: dict[str, Any] = json.loads(r.read()).get("journal") or {}
                return found
        except (OSError, ValueError):
            return {}

    def loadgen(self, url: str, body: str, conc: int, *extra: str) -> dict[str, Any]:
        self.quiet()
        argv = self._loadgen_cmd(url, body, conc, *extra)
        out = subprocess.run(
            argv, capture_output=True, check=True, timeout=300, preexec_fn=raise_nofile
        )
        result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
        return result

    def load(
        self, target: str, body: str, conc: int, duration: float, fail_every: int = -1
    ) -> dict[str, Any]:
        """One closed-loop run; returns rps, p50_ms, p99_ms, requests, cpu_ms_per_req."""
        return self.load_together([target], body, conc, duration, fail_every)[0]

    def load_together(
        self,
        targets: list[str],
        body: str,
        conc: int,
        duration: float,
        fail_every: int = -1,
        threads: int | None = None,
    ) -> list[dict[str, Any]]:
        """The same closed-loop run on each target at the same time, one load generator
        each (a pair measured this way shares every moment of the machine's noise); one
        result per target, as `load`'s."""
        self.quiet()
        started = []
        for target in targets:
            url = self.urls[target] + OPENAI_PATH
            headers = self.headers.get(target)
            if self.use_wrk:
                argv, env = self._wrk_cmd(url, body, conc, duration, fail_every, headers, threads)
            else:
                extra = ["--duration", str(duration), "--fail-every", str(max(fail_every, 0))]
                argv = self._loadgen_cmd(url, body, conc, *extra, *self.header_args(target))
                env = None
            started.append((target, argv, env))
        cpu0 = [cpu_seconds(self.pids[target]) for target in targets]
        procs = [
            subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                preexec_fn=raise_nofile,
            )
            for _, argv, env in started
        ]
        outputs = [proc.communicate(timeout=300) for proc in procs]
        results = []
        for (target, argv, _), c0, proc, (out, err) in zip(
            started, cpu0, procs, outputs, strict=True
        ):
            if proc.returncode != 0:
                raise subprocess.CalledProcessError(proc.returncode, argv, out, err)
            if self.use_wrk:
                result = self._wrk_result(out.decode(), err.decode())
            else:
                result = json.loads(out.decode().strip().splitlines()[-1])
            cpu = cpu_seconds(self.pids[target]) - c0
            n = result["requests"]
            result["cpu_ms_per_req"] = cpu * 1000 / n if n else None
            results.append(result)
        return results

    def _loadgen_cmd(self, url: str, body: str, conc: int, *extra: str) -> list[str]:
        return [
            sys.executable,
            str(HERE / "loadgen.py"),
            "--url",
            url,
            "--body-file",
            str(self.bodies[body]),
            "--concurrency",
            str(conc),
            *extra,
        ]

    def _wrk_cmd(
        self,
        url: str,
        body: str,
        conc: int,
        duration: float,
        fail_every: int,
        headers: dict[str, str] | None = None,
        threads: int | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        env = os.environ | {"BENCH_BODY_FILE": str(self.bodies[body])}
        if headers:
            env["BENCH_HEADERS"] = "\n".join(f"{k}:{v}" for k, v in headers.items())
        if fail_every >= 0:
            env["BENCH_FAIL_EVERY"] = str(fail_every)
        argv = [
            "wrk",
            f"-t{threads or min(conc, 2)}",
            f"-c{conc}",
            f"-d{max(1, math.ceil(duration))}s",  # wrk takes whole seconds
            "--timeout",
            "10s",
            "-s",
            str(HERE / "wrk.lua"),
            url,
        ]
        return argv, env

    @staticmethod
    def _wrk_result(stdout: str, stderr: str) -> dict[str, Any]:
        line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no result: {stdout} {stderr}")
        raw = json.loads(line[len("BENCHJSON ") :])
        secs = raw["duration_us"] / 1e6
        good = raw["requests"] - raw["status_errors"]
        return {
            "requests": raw["requests"],
            "errors": raw["status_errors"] + raw["socket_errors"],
            "rps": good / secs if secs else 0.0,
            "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
        }

    # -- scenarios ---------------------------------------------------------------------

    def warm(self) -> None:
        if self.profile.warmup <= 0:
            return
        for target in TARGETS:
            self.load(target, "small", 16, max(self.profile.warmup, 0.2))

    def non_streaming(self) -> None:
        p = self.profile
        for _, target in self.rounds(peers=True):
            for c in p.concurrencies:
                r = self.load(target, "small", c, p.duration)
                self.fig(f"rps_c{c}", f"non-stream throughput c{c}", "req/s").add(target, r["rps"])
                self.fig(f"p50_c{c}", f"non-stream p50 c{c}", "ms").add(target, r["p50_ms"])
                self.fig(f"p99_c{c}", f"non-stream p99 c{c}", "ms").add(target, r["p99_ms"])
                if target != "direct":
                    label = f"proxy CPU per request c{c}"
                    self.fig(f"cpu_c{c}", label, "ms").add(target, r["cpu_ms_per_req"])

    def streaming(self) -> None:
        p = self.profile
        for _, target in self.rounds(peers=True):
            for c in p.stream_concurrencies:
                pid = self.pids[target]
                cpu0 = cpu_seconds(pid)
                url = self.urls[target] + OPENAI_PATH
                r = self.loadgen(
                    url,
                    "stream",
                    c,
                    "--stream",
                    "--duration",
                    str(p.stream_duration),
                    "--warmup",
                    str(min(p.warmup, 0.3)),
                    "--header",
                    f"x-bench-delay-ms:{p.chunk_delay_ms}",
                    *self.header_args(target),
                )
                cpu = cpu_seconds(pid) - cpu0
                label = f"{p.chunks}-chunk stream"
                if target != "direct" and r["requests"]:
                    self.fig(f"stream_cpu_c{c}", f"proxy CPU per stream c{c}", "ms").add(
                        target, cpu * 1000 / r["requests"]
                    )
                self.fig(f"stream_rps_c{c}", f"{label}s/s c{c}", "1/s").add(target, r["rps"])
                self.fig(f"stream_ttfb_c{c}", f"{label} TTFB p50 c{c}", "ms").add(
                    target, r["ttfb_p50_ms"]
                )
                self.fig(f"stream_total_c{c}", f"{label} total p50 c{c}", "ms").add(
                    target, r["p50_ms"]
                )

    def open_streams(self) -> None:
        p = self.profile
        n = p.open_streams
        for target in TARGETS:
            pid = self.pids[target]
            argv = [
                sys.executable,
                str(HERE / "loadgen.py"),
                "--url",
                self.urls[target] + OPENAI_PATH,
                "--body-file",
                str(self.bodies["stream"]),
                "--concurrency",
                str(n),
                "--total",
                str(n),
                "--stream",
                "--header",
                f"x-bench-delay-ms:{p.open_stream_delay_ms}",
            ]
            peak = rss_mb(pid)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, preexec_fn=raise_nofile)
            while proc.poll() is None:
                peak = max(peak, rss_mb(pid))
                time.sleep(0.02)
            stdout = proc.communicate()[0]
            result = json.loads(stdout.decode().strip().splitlines()[-1])
            self.fig("streams_rss", f"RSS peak, {n} open streams", "MB").add(target, peak)
            self.fig("streams_ok", f"streams completed of {n}", "count").add(
                target, float(result["complete"])
            )

    def long_stream(self) -> None:
        """One long stream per target: MB/s over its first and its last fifth (at most
        20 MB each), so a per-byte cost that grows with the answer shows as a drop."""
        p = self.profile
        total = p.long_stream_mb * 1_000_000
        part = min(20_000_000, total // 5)
        for _, target in self.rounds():
            first, last = asyncio.run(
                _read_long_stream(
                    self.urls[target] + OPENAI_PATH,
                    self.bodies["stream"].read_bytes(),
                    total,
                    part,
                )
            )
            mb = part / 1e6
            self.fig("long_first", f"{p.long_stream_mb} MB stream, first {mb:g} MB", "MB/s").add(
                target, first
            )
            self.fig("long_last", f"{p.long_stream_mb} MB stream, last {mb:g} MB", "MB/s").add(
                target, last
            )

    def big_body(self) -> None:
        p = self.profile
        mib = p.big_body_bytes / (1024 * 1024)
        for _, target in self.rounds():
            r = self.load(target, "big", 1, p.duration)
            self.fig("big_p50", f"{mib:g} MiB body p50 c1", "ms").add(target, r["p50_ms"])

    def retry(self) -> None:
        """hydrallm only: clean vs 50 % first-attempt 503 (direct would see the 503s)."""
        p = self.profile
        for _ in range(p.rounds):
            for label, fail_every in (("direct", 0), ("hydrallm", 2)):
                r = self.load("hydrallm", "small", 16, p.duration, fail_every)
                self.fig(
                    "retry_rps", "retry path throughput c16 (baseline: hydrallm clean)", "req/s"
                ).add(label, r["rps"])
                self.fig("retry_p50", "retry path p50 c16 (baseline: hydrallm clean)", "ms").add(
                    label, r["p50_ms"]
                )

    def workers(self) -> None:
        """hydrallm with --workers 2 against the 1-worker process, same load (c64).

        The "direct" column of this row holds the 1-worker figure.  On a 2-core machine the
        load generator and the upstream share the cores, so this shows the headroom left,
        not a clean 2x.
        """
        p = self.profile
        port = free_port()
        config = self.work / "workers.toml"
        config.write_text(hydrallm_config(port, self.upstream_port, self.work / "2w.db"))
        proc = self.procs.spawn(
            "hydrallm-2w",
            [
                *self.hydrallm_cmd,
                "serve",
                "-c",
                str(config),
                "--log-level",
                "warn",
                "--workers",
                "2",
            ],
        )
        wait_port(port, proc)
        self.urls["hydrallm-2w"] = f"http://127.0.0.1:{port}"
        self.pids["hydrallm-2w"] = proc.pid
        try:
            for _ in range(p.rounds):
                for label, target in (("direct", "hydrallm"), ("hydrallm", "hydrallm-2w")):
                    r = self.load(target, "small", 64, p.duration)
                    self.fig(
                        "workers_rps", "2 workers throughput c64 (baseline: 1 worker)", "req/s"
                    ).add(label, r["rps"])
        finally:
            self.procs.stop(proc)

    def journal(self) -> None:
        """Two fresh hydrallm processes that differ only in `[journal] enabled`, started
        together, same load: c16 throughput and CPU per request, c1 p99.  (Not the
        long-lived process of the other rows against a fresh one: a process that has
        served the whole benchmark is not the same process as a new one.)  The "direct"
        column of these rows holds the journal-off figure.

        c16 throughput: one after the other, each round the other first; the median of
        the per-round ratios.  The same process's figures drift by ±20 % between rounds
        of one run (2,292-4,316 req/s), far more than the 3 % asked about, so this row is
        only as good as that.  c16 CPU per request: both at once, a load generator each,
        so that the pair shares every moment of the machine: two journal-off processes
        measured so had per-round CPU ratios of 1.00-1.03 (median 1.007) in one run, two
        journal-on processes of 0.92-1.13 (median 0.984) in another (`bench.probe onoff`,
        eighth session): a median of a few rounds is good to ±3 %, no better; and a pair
        of processes has a ratio of its own (`_journal_cpu`), so each round measures a
        fresh pair, `CPU_SAMPLES` times.  Their
        throughput at once is not reported: the two share the cores by demand, so the
        costlier one takes CPU from the other and the ratio understates the cost.  c1
        p99: a request to each in turn, one at a time (`bench/paired.py`): measured one
        after the other instead, the same process's p99 moved by more than a millisecond
        between rounds.  Then the instruction count (`journal_instructions`), which the
        machine's load does not move."""
        p = self.profile
        procs = self._journal_pair("")
        on = "hydrallm-journal"
        self.quiet(on)
        writer = writer_pid(self.pids[on])
        cpu0 = None if writer is None else cpu_seconds(writer)
        written0 = self.journal_status(on).get("written", 0)
        try:
            # Two processes' c1 p99 differ by ~0.1 ms run to run, twice the target: five
            # rounds (not the profile's three) before the median says anything.
            pair = [("direct", "hydrallm-nojournal"), ("hydrallm", on)]
            for n in range(max(p.rounds, 5) if p.rounds > 1 else p.rounds):
                order = pair if n % 2 == 0 else pair[::-1]
                for label, target in order:
                    self.quiet(on)
                    r = self.load(target, "small", 16, p.duration)
                    self.fig(
                        "journal_rps_c16", "journal on: throughput c16 (baseline: off)", "req/s"
                    ).add(label, r["rps"])
                self._journal_cpu(n)
                self.quiet(on)
                ports = [int(self.urls[target].rsplit(":", 1)[1]) for _, target in pair]
                body = self.bodies["small"].read_bytes()
                turns = paired.measure(ports, OPENAI_PATH, body, p.duration)
                for (label, _), r in zip(pair, turns, strict=True):
                    self.fig(
                        "journal_p99_c1", "journal on: p99 c1, in turns (baseline: off)", "ms"
                    ).add(label, r["p99_ms"])
            # What the journal costs later, when the proxy is quiet: the writer's CPU.
            self.quiet(on)
            written = self.journal_status(on).get("written", 0) - written0
            if writer is None:  # started a second after the process (first flush)
                writer = writer_pid(self.pids[on])
                cpu0 = 0.0
            if writer is not None and cpu0 is not None and written > 0:
                label = "journal writer CPU per request, loaded when quiet"
                self.fig("journal_writer_us", label, "µs").add(
                    "hydrallm", (cpu_seconds(writer) - cpu0) * 1e6 / written
                )
        finally:
            for proc in procs:
                self.procs.stop(proc)
        self.journal_instructions()

    def _journal_pair(self, suffix: str) -> list[subprocess.Popen[bytes]]:
        """Two fresh hydrallm processes, journal off and on ("hydrallm-nojournal" and
        "hydrallm-journal" + `suffix`), ready."""
        procs = []
        for name, journal in (("hydrallm-nojournal", None), ("hydrallm-journal", "j.db")):
            name += suffix
            port = free_port()
            config = self.work / f"{name}.toml"
            db = None if journal is None else self.work / f"{name}-{journal}"
            config.write_text(hydrallm_config(port, self.upstream_port, db))
            proc = self.procs.spawn(
                name, [*self.hydrallm_cmd, "serve", "-c", str(config), "--log-level", "warn"]
            )
            wait_port(port, proc)
            self.urls[name] = f"http://127.0.0.1:{port}"
            self.pids[name] = proc.pid
            procs.append(proc)
        return procs

    def _journal_cpu(self, n: int) -> None:
        """One round of the CPU row: a fresh pair of processes (each its own hash seed and
        memory layout), loaded at once `CPU_SAMPLES` times.  One pair's ratio stays put
        from sample to sample but moves by ±3 % from pair to pair (ninth session: pairs'
        medians 1.011-1.075, and 1.019-1.024 for three pairs that shared one hash seed):
        a long-lived pair would measure its own layout, not the journal."""
        suffix = f"-cpu{n}"
        pair = [
            ("direct", f"hydrallm-nojournal{suffix}"),
            ("hydrallm", f"hydrallm-journal{suffix}"),
        ]
        procs = self._journal_pair(suffix)
        try:
            for _ in range(CPU_SAMPLES):
                self.quiet(pair[1][1])
                together = self.load_together(
                    [target for _, target in pair], "small", 16, self.profile.duration, threads=1
                )
                for (label, _), r in zip(pair, together, strict=True):
                    self.fig(
                        "journal_cpu_c16",
                        "journal on: CPU per request c16, both at once (baseline: off)",
                        "ms",
                    ).add(label, r["cpu_ms_per_req"])
        finally:
            for proc in procs:
                self.procs.stop(proc)
            for _, name in pair:
                self.urls.pop(name, None)
                self.pids.pop(name, None)

    def journal_instructions(self) -> None:
        """The journal's cost as callgrind counts it: instructions a request of a fresh
        proxy with the journal on and of one with it off, the same 4,000 requests at c16
        (`bench.probe`; both run at once, each under valgrind).  Unlike the rows above,
        the count does not move with the machine's load (±0.3 % run to run).  The
        journal's one-second flush runs ~50 times more often a request under valgrind
        (batches of ~150 rows, not 256): the count overstates the journal's cost a
        little."""
        if shutil.which("valgrind") is None or self.profile.name == "smoke":
            return
        from concurrent.futures import ThreadPoolExecutor

        from bench import probe

        def one(journal: bool) -> dict[str, float]:
            name = "cg-on" if journal else "cg-off"
            return probe.count(self.work, self.upstream_port, journal=journal, n=4000,
                               conc=16, name=name)  # fmt: skip

        with ThreadPoolExecutor(2) as pool:
            off, on = pool.map(one, (False, True))
        label = "journal on: instructions a request c16, callgrind (baseline: off)"
        self.fig("journal_instr_c16", label, "Ir").add("direct", off["Ir"])
        self.fig("journal_instr_c16", label, "Ir").add("hydrallm", on["Ir"])

    def startup(self) -> None:
        p = self.profile
        helps = []
        for _ in range(p.startup_repeats):
            started = time.perf_counter()
            subprocess.run([*self.hydrallm_cmd, "--help"], capture_output=True, check=True)
            helps.append((time.perf_counter() - started) * 1000)
        self.fig("help_ms", "`hydrallm --help` wall time", "ms").add(
            "hydrallm", statistics.median(helps)
        )
        # Measured as installed: pip writes the bytecode cache of an installed package (an
        # editable install writes it on first import), so one unmeasured start writes it
        # here, and PYTHONDONTWRITEBYTECODE (set in some sandboxes) is dropped for the
        # children in main().  Without the cache every start compiles ~60 modules.
        proc, _, _ = self._start_hydrallm(self.upstream_port, "startup-warm")
        self.procs.stop(proc)
        readies = []
        for i in range(p.startup_repeats):
            proc, _, waited = self._start_hydrallm(self.upstream_port, f"startup{i}")
            readies.append(waited * 1000)
            self.procs.stop(proc)
        self.fig("ready_ms", "`hydrallm serve` ready", "ms").add(
            "hydrallm", statistics.median(readies)
        )

    def memory(self, when: str) -> None:
        for target in ("passthrough", "hydrallm", *(p.name for p in self.peers)):
            label = "RSS idle" if when == "idle" else "RSS after the load rounds"
            self.fig(f"rss_{when}", label, "MB").add(target, rss_mb(self.pids[target]))

    def run_all(self, progress: Callable[[str], None], only: list[str] | None = None) -> None:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("startup", self.startup),
            ("idle memory", lambda: self.memory("idle")),
            ("warm-up", self.warm),
            ("non-streaming", self.non_streaming),
            ("streaming", self.streaming),
            ("1 MiB body", self.big_body),
            ("long stream", self.long_stream),
            ("retry path", self.retry),
            ("workers", self.workers),
            ("journal on/off", self.journal),
            ("variants", lambda: run_variants(self, progress)),
            ("memory after run", lambda: self.memory("after")),
            ("open streams", self.open_streams),
        ]
        for name, step in steps:
            if only and name != "warm-up" and not any(w in name for w in only):
                continue
            started = time.perf_counter()
            step()
            progress(f"{name}: {time.perf_counter() - started:.1f}s")


async def _read_long_stream(url: str, body: bytes, total: int, part: int) -> tuple[float, float]:
    """Read one long stream; MB/s over its first `part` bytes and over its last `part`."""
    import aiohttp

    headers = {"Content-Type": "application/json", "x-bench-bytes": str(total)}
    marks: list[tuple[int, float]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as resp,
    ):
        got = 0
        marks.append((0, time.perf_counter()))
        async for chunk in resp.content.iter_any():
            got += len(chunk)
            marks.append((got, time.perf_counter()))
    end_bytes, end_t = marks[-1]

    def at(n: int) -> tuple[int, float]:
        return next(m for m in marks if m[0] >= n)

    b1, t1 = at(part)
    b2, t2 = at(end_bytes - part)
    first = b1 / 1e6 / max(t1 - marks[0][1], 1e-9)
    last = (end_bytes - b2) / 1e6 / max(end_t - t2, 1e-9)
    return first, last


def _hydrallm_cmd() -> list[str]:
    beside = Path(sys.executable).parent / "hydrallm"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("hydrallm")
    return [found] if found else [sys.executable, "-m", "hydrallm"]


# -- report ------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def evaluate(figs: dict[str, Figure]) -> list[Target]:
    def get(key: str, target: str) -> float | None:
        f = figs.get(key)
        return f.get(target) if f else None

    def check(name: str, value: float | None, limit: str, ok: Callable[[float], bool]) -> Target:
        return Target(name, value, limit, None if value is None else ok(value))

    out = []
    for c in (16, 64):
        r = _ratio(get(f"rps_c{c}", "hydrallm"), get(f"rps_c{c}", "passthrough"))
        out.append(check(f"throughput c{c} / pass-through", r, ">= 0.8", lambda v: v >= 0.8))
    for c in (16, 64):
        cpu = get(f"cpu_c{c}", "hydrallm")
        out.append(check(f"CPU per request c{c} (ms)", cpu, "<= 0.17", lambda v: v <= 0.17))
    added50 = _diff(get("p50_c1", "hydrallm"), get("p50_c1", "direct"))
    out.append(check("added p50 c1 (ms)", added50, "<= 0.35", lambda v: v <= 0.35))
    added99 = _diff(get("p99_c1", "hydrallm"), get("p99_c1", "direct"))
    out.append(check("added p99 c1 (ms)", added99, "<= 2", lambda v: v <= 2))
    ttfb = _diff(get("stream_ttfb_c1", "hydrallm"), get("stream_ttfb_c1", "direct"))
    out.append(check("added TTFB p50 c1 (ms)", ttfb, "<= 1", lambda v: v <= 1))
    total = _ratio(get("stream_total_c1", "hydrallm"), get("stream_total_c1", "direct"))
    out.append(check("stream total c1 / direct", total, "<= 1.02", lambda v: v <= 1.02))
    out.append(check("RSS idle (MB)", get("rss_idle", "hydrallm"), "<= 60", lambda v: v <= 60))
    streams_rss = get("streams_rss", "hydrallm")
    out.append(check("RSS with open streams (MB)", streams_rss, "<= 150", lambda v: v <= 150))
    ok = get("streams_ok", "hydrallm")
    expected = get("streams_ok", "direct")
    out.append(
        check(
            "open streams all completed",
            ok,
            f"== {expected:g}" if expected else "all",
            lambda v: expected is not None and v >= expected,
        )
    )
    # The journal's rows compare the two processes round by round (each round's on and off
    # were measured seconds apart, in turns): the median of those paired figures.  Over a
    # run this shared machine drifts by more than the 3 % asked; a median of all the on
    # figures against one of all the off figures would measure the drift.
    ratio = _paired(figs, "journal_rps_c16", lambda on, off: on / off)
    cost = None if ratio is None else 1 - ratio
    out.append(check("journal throughput cost c16", cost, "< 0.03", lambda v: v < 0.03))
    cpu = _paired(figs, "journal_cpu_c16", lambda on, off: on / off - 1)
    out.append(check("journal CPU per request cost c16", cpu, "< 0.03", lambda v: v < 0.03))
    added = _paired(figs, "journal_p99_c1", lambda on, off: on - off)
    out.append(check("journal added p99 c1 (ms)", added, "< 0.05", lambda v: v < 0.05))
    instr = _paired(figs, "journal_instr_c16", lambda on, off: on / off - 1)
    out.append(check("journal instructions cost c16", instr, "< 0.03", lambda v: v < 0.03))
    big = _diff(get("big_p50", "hydrallm"), get("big_p50", "direct"))
    out.append(check("1 MiB body added p50 (ms)", big, "<= 3", lambda v: v <= 3))
    first = _ratio(get("long_last", "hydrallm"), get("long_first", "hydrallm"))
    out.append(check("long stream last / first MB/s", first, ">= 0.8", lambda v: v >= 0.8))
    for key, name in (("pool", "3-key pool + affinity"), ("redis", "[cluster] redis")):
        cost = _ratio(get(f"{key}_rps_c16", "hydrallm"), get(f"{key}_rps_c16", "direct"))
        out.append(
            check(f"{name}: throughput / baseline c16", cost, ">= 0.97", lambda v: v >= 0.97)
        )
    out.append(check("--help (ms)", get("help_ms", "hydrallm"), "<= 150", lambda v: v <= 150))
    out.append(check("serve ready (ms)", get("ready_ms", "hydrallm"), "<= 300", lambda v: v <= 300))
    out.extend(issue19(get))
    return out


def _paired(
    figs: dict[str, Figure], key: str, compare: Callable[[float, float], float]
) -> float | None:
    """The median over rounds of `compare(on, off)`, one pair a round (the journal step's
    figures: "hydrallm" is the journal on, "direct" off)."""
    fig = figs.get(key)
    if fig is None:
        return None
    on, off = fig.values.get("hydrallm", []), fig.values.get("direct", [])
    pairs = [compare(a, b) for a, b in zip(on, off, strict=False) if b]
    return statistics.median(pairs) if pairs else None


def issue19(get: Callable[[str, str], float | None]) -> list[Target]:
    """Issue 19's goals, as it states them (ratios and differences against the same run's
    pass-through or direct figures)."""

    def check(name: str, value: float | None, limit: str, ok: Callable[[float], bool]) -> Target:
        return Target(f"issue 19: {name}", value, limit, None if value is None else ok(value))

    out = [
        check(
            "CPU per stream c64 / pass-through",
            _ratio(get("stream_cpu_c64", "hydrallm"), get("stream_cpu_c64", "passthrough")),
            "<= 1.1",
            lambda v: v <= 1.1,
        ),
        check(
            "stream TTFB p50 c64 - pass-through (ms)",
            _diff(get("stream_ttfb_c64", "hydrallm"), get("stream_ttfb_c64", "passthrough")),
            "<= 1",
            lambda v: v <= 1,
        ),
    ]
    for c in (16, 64):
        out.append(
            check(
                f"throughput c{c} / pass-through",
                _ratio(get(f"rps_c{c}", "hydrallm"), get(f"rps_c{c}", "passthrough")),
                ">= 1.0",
                lambda v: v >= 1.0,
            )
        )
    out += [
        check(
            "added p99 c1, vs direct (ms)",
            _diff(get("p99_c1", "hydrallm"), get("p99_c1", "direct")),
            "<= 0.5",
            lambda v: v <= 0.5,
        ),
        check("RSS idle (MB)", get("rss_idle", "hydrallm"), "<= 50", lambda v: v <= 50),
        check(
            "RSS 1,000 streams (MB)", get("streams_rss", "hydrallm"), "<= 100", lambda v: v <= 100
        ),
        check(
            "100 MB stream last / first MB/s (constant)",
            _ratio(get("long_last", "hydrallm"), get("long_first", "hydrallm")),
            ">= 0.8",
            lambda v: v >= 0.8,
        ),
        check("serve ready (ms)", get("ready_ms", "hydrallm"), "<= 300", lambda v: v <= 300),
    ]
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"


def table(figs: dict[str, Figure], targets: list[Target], peers: Sequence[str] = ()) -> str:
    head: tuple[str, ...] = ("figure", "unit", "direct", "pass-through", "hydrallm")
    head += (*peers, "hy/direct", "hy/pt")
    rows = [head]
    for f in figs.values():
        d, p, h = (f.get(t) for t in TARGETS)
        others = tuple(_fmt(f.get(name)) for name in peers)
        ratios = (_fmt(_ratio(h, d)), _fmt(_ratio(h, p)))
        rows.append((f.label, f.unit, _fmt(d), _fmt(p), _fmt(h), *others, *ratios))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, r in enumerate(rows):
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:], strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.append("")
    lines.append("| target | value | limit | result |")
    lines.append("|---|---|---|---|")
    for t in targets:
        result = "n/a" if t.passed is None else ("PASS" if t.passed else "MISS")
        lines.append(f"| {t.name} | {_fmt(t.value)} | {t.limit} | {result} |")
    return "\n".join(lines)


def to_json(bench: Bench, targets: list[Target], elapsed: float) -> dict[str, Any]:
    figures = {}
    for f in bench.figures.values():
        d, p, h = (f.get(t) for t in TARGETS)
        figures[f.key] = {
            "label": f.label,
            "unit": f.unit,
            "direct": d,
            "passthrough": p,
            "hydrallm": h,
            "ratio_direct": _ratio(h, d),
            "ratio_passthrough": _ratio(h, p),
            **{peer.name: f.get(peer.name) for peer in bench.peers},
            "samples": f.values,
        }
    return {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "profile": asdict(bench.profile),
            "loadgen": "wrk" if bench.use_wrk else "python",
            "nproc": os.cpu_count(),
            "machine": platform.platform(),
            "python": platform.python_version(),
            "elapsed_s": round(elapsed, 1),
            "peers": {peer.name: peer.version for peer in bench.peers},
        },
        "figures": figures,
        "targets": [asdict(t) for t in targets],
    }


def main(argv: list[str] | None = None) -> int:
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # see Bench.startup
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="one round, < 1 minute")
    group.add_argument("--smoke", action="store_true", help="tiny settings, for the test")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also run LiteLLM's proxy and Portkey's gateway (installed on first use)",
    )
    parser.add_argument("--duration", type=float, help="seconds per measurement (override)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (override)")
    parser.add_argument(
        "--no-wrk", action="store_true", help="use bench/loadgen.py even if wrk is installed"
    )
    parser.add_argument(
        "--only",
        help="run only the steps whose names contain one of these words (comma-separated;"
        " e.g. journal,startup); the warm-up always runs",
    )
    args = parser.parse_args(argv)
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.duration is not None:
        profile = replace(profile, duration=args.duration, stream_duration=args.duration)
    if args.rounds is not None:
        profile = replace(profile, rounds=args.rounds)
    # wrk runs whole seconds; the smoke profile (for the test) stays sub-second in Python.
    use_wrk = not (args.no_wrk or args.smoke) and shutil.which("wrk") is not None

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    raise_nofile()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hydrallm-bench-") as tmp:
        procs = Procs(Path(tmp))
        try:
            bench = Bench(profile, procs, Path(tmp), use_wrk, peers=args.peers)
            bench.start()
            print(
                f"bench: profile {profile.name}, load generator {'wrk' if use_wrk else 'python'}",
                file=sys.stderr,
            )
            only = [w.strip() for w in args.only.split(",")] if args.only else None
            bench.run_all(
                lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True), only=only
            )
        except BaseException:
            for log in sorted(Path(tmp).glob("*.log")):
                tail = procs.log_tail(log.stem)
                if tail:
                    print(f"--- {log.stem} log ---\n{tail}", file=sys.stderr)
            raise
        finally:
            procs.close()
    targets = evaluate(bench.figures)
    names = [f"{p.name} {p.version}" for p in bench.peers]
    print(table(bench.figures, targets, [p.name for p in bench.peers]))
    if names:
        print(f"\npeers: {', '.join(names)}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(to_json(bench, targets, time.perf_counter() - started), indent=2) + "\n"
        )
    return 0
