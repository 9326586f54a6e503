"""Two measurements finer than the bench's rounds, for one change at a time (journal on
vs off, or a copy of `src/` with one part cut off).  See bench/RESULTS.md, seventh session.

    python -m bench.probe instructions [--journal] [--src DIR] [-n 2000] [--conc 1]
                                       [--cache-sim] [--keep FILE]
        valgrind's callgrind on `hydrallm serve` (the proxy process only), counting from
        after a warm-up to the end of N keep-alive requests: instructions a request.
        Repeated runs agree within ~0.7k at c1 when the journal's one-second tick is off
        in the copy (`FLUSH_S = 1e9`); at c16 the count depends on timing (±1k).
        `--keep FILE` keeps the dump, for `callgrind_annotate --inclusive=yes FILE`.

    python -m bench.probe onoff [--src DIR] [--rounds 10] [--seconds 5]
                                [--off-src DIR] [--off-journal] [--pairs N]
                                [--delay-ms MS]
        two proxies, journal off and on, loaded at once by a `wrk -c16` each; their user
        and system CPU per request from /proc, the on/off ratio per round and the median
        (and the same ratio by the scheduler's run time, `_runtime`).
        `--off-src`/`--off-journal`: the "off" process runs another copy of src/, or has
        its journal on too (two versions of the journal compared; or a calibration: the
        same code on both sides).  Single rounds vary by ±5 %, and medians of 12 rounds
        by ±3 % between runs (bench/RESULTS.md, eighth session).  Both processes run with
        PYTHONHASHSEED=0: one pair, one memory layout, whose ratio may not be the
        journal's (ninth session: 1.019-1.024 in three runs here, 1.011-1.075 for four
        pairs with their own seeds); the bench's CPU row starts a fresh pair a round.
        `--pairs N` does so too: N fresh pairs (their own seeds), `--rounds` each, and the
        mean and spread of the pairs' means.  `--delay-ms MS`: each connection waits MS between
        requests, so both proxies are offered the same rate, below saturation.

    python -m bench.probe toggle [--seconds 60] [--phase 0.5] [--runs 3] [--no-pin]
                                 [--part all|sink|usage|none]
        one proxy, journal on, whose journal is switched off and on in turns every PHASE
        seconds while a `wrk -c16` loads it (`bench/toggled.py`): the process's CPU time
        (the scheduler's, nanoseconds) a request in the phases on against the phases off
        around them.  One process for both: no pair's memory layout or hash seed in the
        ratio; what only a process with the journal disabled lacks (its modules, its
        tick, the idle writer) is not in it (`onoff` has it).  A fresh process a run.
        `--part`: switch only the journal's handler (`sink`) or only the usage read, the
        session hash and the steps kept (`usage`), or nothing (`none`: a calibration); see
        `bench/toggled.py`.
        The proxy runs alone on the second CPU, wrk and the upstream on the first
        (`--no-pin`: wherever the kernel puts them): its core is busy all the time, so its
        CPU a request is its speed.  That speed still moves by ±10-25 % from one
        half-second to the next on this shared host, so a run needs minutes (each on phase
        is compared with the off phases either side of it: a slow drift cancels).

Both need the bench's upstream (started here) and, for `onoff`, wrk; `instructions` needs
valgrind (`apt-get install -y valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import CLOCK_TICKS, free_port, wait_port, writer_pid
from bench.variants import hydrallm_config

HERE = Path(__file__).resolve().parent
BODY = (
    b'{"model":"bench-model","messages":[{"role":"user","content":"Say hello."}],"max_tokens":32}'
)
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


async def _client(port: int, total: int, conc: int) -> None:
    """`total` requests over `conc` keep-alive connections, each answer read whole."""
    left = total

    async def one() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left > 0:
            left -= 1
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head[:200].decode("latin-1"))
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
        writer.close()

    await asyncio.gather(*(one() for _ in range(conc)))


def _env(src: Path | None, seed: bool = True) -> dict[str, str]:
    """The proxy's environment: one hash seed (0) unless `seed` is off (its own)."""
    env = dict(os.environ)
    if seed:
        env["PYTHONHASHSEED"] = "0"
    else:
        env.pop("PYTHONHASHSEED", None)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def _proxy(
    work: Path,
    name: str,
    upstream: int,
    journal: bool,
    src: Path | None,
    prefix: list[str],
    seed: bool = True,
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = work / f"{name}.toml"
    config.write_text(hydrallm_config(port, upstream, work / f"{name}.db" if journal else None))
    argv = [*prefix, sys.executable, "-m", "hydrallm", "serve", "-c", str(config)]
    proc = subprocess.Popen(
        argv, env=_env(src, seed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port, proc, timeout=120.0)
    return proc, port


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def count(
    work: Path,
    upstream: int,
    *,
    journal: bool,
    src: Path | None = None,
    n: int = 2000,
    conc: int = 1,
    cache_sim: bool = False,
    keep: Path | None = None,
    name: str = "cg",
) -> dict[str, float]:
    """callgrind's counts a request (Ir, and the cache events with `cache_sim`) of a
    `hydrallm serve` loaded by N keep-alive requests after a warm-up of 400."""
    out = work / f"{name}.out"
    prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    if cache_sim:
        prefix.append("--cache-sim=yes")
    proc, port = _proxy(work, name, upstream, journal, src, prefix)
    try:
        asyncio.run(_client(port, 400, conc))  # warm-up, not counted
        subprocess.run(
            ["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True
        )
        asyncio.run(_client(port, n, conc))
        subprocess.run(
            ["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True
        )
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        time.sleep(1.0)
    finally:
        _stop(proc)
    dumps = sorted(work.glob(f"{name}.out.*"))  # the first dump: from "on" to "off"
    events = totals = None
    for line in dumps[0].read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("totals:"):
            totals = [int(v) for v in line.split()[1:]]
    if events is None or totals is None:
        raise RuntimeError(f"no totals in {dumps[0]}")
    if keep is not None:
        shutil.copy(dumps[0], keep)  # for callgrind_annotate
    return {e: t / n for e, t in zip(events, totals, strict=True)}


def instructions(args: argparse.Namespace, work: Path, upstream: int) -> None:
    counts = count(
        work,
        upstream,
        journal=args.journal,
        src=args.src,
        n=args.n,
        conc=args.conc,
        cache_sim=args.cache_sim,
        keep=args.keep,
    )
    per = ", ".join(f"{e} {v:,.0f}" for e, v in counts.items())
    print(f"journal {'on' if args.journal else 'off'}, c{args.conc}, a request: {per}")


def _cpu(pid: int) -> tuple[float, float, int]:
    """User and system CPU seconds, and minor page faults, of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS, int(fields[7])


def _runtime(pid: int) -> float:
    """Seconds a process has run, all its threads, from the scheduler's own count
    (/proc/<pid>/task/*/schedstat, nanoseconds), beside `_cpu`'s utime and stime, which
    this kernel samples at each timer tick (CONFIG_TICK_CPU_ACCOUNTING).  The two agreed
    within ±0.004 a pair over 16 pairs (bench/RESULTS.md, tenth session)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def _wrk(
    work: Path, port: int, seconds: int, delay_ms: int = 0, *, pin: bool = False
) -> subprocess.Popen[str]:
    body = work / "body.json"
    body.write_bytes(BODY)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    argv = ["wrk", "-t1", "-c16", f"-d{seconds}s", "-s", str(HERE / "wrk.lua"), url]
    if pin:
        argv = ["taskset", "-c", "0", *argv]
    env = dict(os.environ, BENCH_BODY_FILE=str(body))
    if delay_ms:
        env["BENCH_DELAY_MS"] = str(delay_ms)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)


def _requests(output: str) -> int:
    for line in output.splitlines():
        if " requests in " in line:
            return int(line.split()[0])
    raise RuntimeError(f"no request count in wrk's output: {output!r}")


def onoff(args: argparse.Namespace, work: Path, upstream: int) -> None:
    if args.pairs == 1:
        ratios = _pair(args, work, upstream, seed=True)
        print(
            f"CPU per request on/off: median {statistics.median(r[0] for r in ratios):.3f} "
            f"(run time {statistics.median(r[1] for r in ratios):.3f})"
        )
        return
    means: list[tuple[float, float]] = []
    for n in range(args.pairs):
        print(f"pair {n + 1} (its own hash seeds):")
        ratios = _pair(args, work, upstream, seed=False)
        means.append(
            (statistics.fmean(r[0] for r in ratios), statistics.fmean(r[1] for r in ratios))
        )
        print(f"  pair {n + 1}: mean on/off {means[-1][0]:.3f} (run time {means[-1][1]:.3f})")
    for i, what in enumerate(("CPU (utime+stime)", "run time (schedstat)")):
        each = [m[i] for m in means]
        print(
            f"{what} per request on/off over {len(each)} pairs: mean "
            f"{statistics.fmean(each):.3f}, sd {statistics.stdev(each):.3f}, pairs' means "
            f"{', '.join(f'{m:.3f}' for m in each)}"
        )


def _pair(
    args: argparse.Namespace, work: Path, upstream: int, *, seed: bool
) -> list[tuple[float, float]]:
    """One pair of proxies, `args.rounds` rounds: the on/off ratio of each, by CPU time
    (utime+stime) and by run time (`_runtime`)."""
    off_src = args.src if args.off_src is None else args.off_src
    off, off_port = _proxy(work, "off", upstream, args.off_journal, off_src, [], seed)
    on, on_port = _proxy(work, "on", upstream, True, args.src, [], seed)
    ratios = []
    try:
        time.sleep(2.0)
        for n in range(args.rounds):
            writer = writer_pid(on.pid)
            before = [_cpu(off.pid), _cpu(on.pid)]
            ran = [_runtime(off.pid), _runtime(on.pid)]
            writer_before = _cpu(writer) if writer is not None else None
            loads = [
                _wrk(work, off_port, args.seconds, args.delay_ms),
                _wrk(work, on_port, args.seconds, args.delay_ms),
            ]
            outputs = [load.communicate()[0] for load in loads]
            after = [_cpu(off.pid), _cpu(on.pid)]
            ran = [_runtime(off.pid) - ran[0], _runtime(on.pid) - ran[1]]
            if writer is not None and writer_before is not None:
                used = sum(_cpu(writer)[:2]) - sum(writer_before[:2])
                print(f"  the journal's writer process: {used:.2f} s CPU during the round")
            counts = [_requests(out) for out in outputs]
            per = []
            for b, a, count in zip(before, after, counts, strict=True):
                per.append(
                    (
                        (a[0] - b[0]) * 1e6 / count,
                        (a[1] - b[1]) * 1e6 / count,
                        (a[2] - b[2]) * 1000 / count,
                    )
                )
            ratio = sum(per[1][:2]) / sum(per[0][:2])
            exact = (ran[1] / counts[1]) / (ran[0] / counts[0])
            ratios.append((ratio, exact))
            print(
                f"round {n + 1}: off user {per[0][0]:.1f} sys {per[0][1]:.1f} µs "
                f"faults {per[0][2]:.1f}, on user {per[1][0]:.1f} sys {per[1][1]:.1f} µs "
                f"faults {per[1][2]:.1f} (a 1,000 requests): on/off {ratio:.3f}, "
                f"by run time {exact:.3f}"
            )
            time.sleep(2.0)  # the journal's writer loads when the proxy is quiet
    finally:
        _stop(off, on)
        for db in work.glob("*.db*"):  # the next pair's journal starts empty
            shutil.rmtree(db) if db.is_dir() else db.unlink()
    return ratios


def toggle(args: argparse.Namespace, work: Path, upstream: int) -> None:
    runs = []
    for n in range(args.runs):
        out = work / f"phases-{n}.txt"
        port = free_port()
        config = work / "toggled.toml"
        config.write_text(hydrallm_config(port, upstream, work / f"toggled-{n}.db"))
        argv = [sys.executable, "-m", "bench.toggled", str(args.phase), str(out), args.part]
        if args.pin:
            argv = ["taskset", "-c", "1", *argv]
        proc = subprocess.Popen(
            [*argv, "-c", str(config)],
            cwd=HERE.parent,
            env=_env(args.src, seed=False),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, proc, timeout=120.0)
            time.sleep(1.0)
            _wrk(work, port, args.seconds, pin=args.pin).communicate()
        finally:
            _stop(proc)
        ratio, pairs = _phases(out.read_text())
        runs.append(ratio)
        if len(pairs) < 2:
            raise SystemExit(f"{len(pairs)} on phase(s) under full load: use longer --seconds")
        sd = statistics.stdev(pairs)
        print(
            f"run {n + 1}: CPU a request, journal on / off in the same process: {ratio:.4f} "
            f"({len(pairs)} neighbouring phases on/off: mean {statistics.fmean(pairs):.4f}, "
            f"sd {sd:.4f}, standard error {sd / len(pairs) ** 0.5:.4f})"
        )
    if len(runs) > 1:
        print(
            f"over {len(runs)} runs: mean {statistics.fmean(runs):.4f}, sd "
            f"{statistics.stdev(runs):.4f}; runs {', '.join(f'{r:.4f}' for r in runs)}"
        )


def _phases(text: str) -> tuple[float, list[float]]:
    """From `toggled`'s lines (phase, on, CPU ns, requests so far), each phase's CPU a
    request, of the phases under full load: the ratio of all on phases' to all off
    phases', and each on phase's against the mean of the off phases beside it."""
    rows = [tuple(int(v) for v in line.split()) for line in text.splitlines()]
    phases = []
    for before, after in itertools.pairwise(rows):
        count = after[3] - before[3]
        phases.append((after[1], (after[2] - before[2]) / count if count else 0.0, count))
    usual = statistics.median(p[2] for p in phases if p[2])
    full = [p for p in phases if p[2] > 0.7 * usual]
    on = [p for p in full if p[0]]
    off = [p for p in full if not p[0]]
    ratio = (sum(p[1] * p[2] for p in on) / sum(p[2] for p in on)) / (
        sum(p[1] * p[2] for p in off) / sum(p[2] for p in off)
    )
    pairs = []
    for i in range(1, len(full) - 1):
        if full[i][0] and not full[i - 1][0] and not full[i + 1][0]:
            pairs.append(full[i][1] / ((full[i - 1][1] + full[i + 1][1]) / 2))
    return ratio, pairs


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probe")
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("instructions")
    one.add_argument("--journal", action="store_true")
    one.add_argument("-n", type=int, default=2000)
    one.add_argument("--conc", type=int, default=1)
    one.add_argument("--cache-sim", action="store_true")
    one.add_argument("--keep", type=Path, default=None, help="copy callgrind's dump here")
    two = sub.add_parser("onoff")
    two.add_argument("--rounds", type=int, default=10)
    two.add_argument("--seconds", type=int, default=5)
    two.add_argument("--off-src", type=Path, default=None, help="the 'off' process's src/")
    two.add_argument("--off-journal", action="store_true", help="the 'off' one's journal on")
    two.add_argument(
        "--delay-ms",
        type=int,
        default=0,
        help="each connection waits this long between requests (the same rate for both)",
    )
    two.add_argument(
        "--pairs", type=int, default=1, help="fresh pairs, each with its own hash seeds"
    )
    three = sub.add_parser("toggle")
    three.add_argument("--seconds", type=int, default=60)
    three.add_argument("--phase", type=float, default=0.5, help="seconds a phase")
    three.add_argument("--runs", type=int, default=3, help="fresh processes, one after another")
    three.add_argument("--part", choices=("all", "sink", "usage", "none"), default="all")
    three.add_argument("--no-pin", dest="pin", action="store_false", help="no CPU of its own")
    for p in (one, two, three):
        p.add_argument("--src", type=Path, default=None, help="a copy of src/ to run instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hydrallm-probe-") as tmp:
        work = Path(tmp)
        up_port = free_port()
        upstream = subprocess.Popen(
            [sys.executable, str(HERE / "upstream.py"), "--port", str(up_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(up_port, upstream)
            if getattr(args, "pin", False):
                os.sched_setaffinity(upstream.pid, {0})
            measure = {"instructions": instructions, "onoff": onoff, "toggle": toggle}
            measure[args.what](args, work, up_port)
        finally:
            _stop(upstream)


if __name__ == "__main__":
    main()
