"""Python aiohttp load generator (own process): closed-loop POSTs, one JSON line of results.

    python bench/loadgen.py --url http://127.0.0.1:9000/v1/chat/completions \
        --body-file body.json --concurrency 16 --duration 2

`--total N` sends exactly N requests (with `--concurrency N`: N at once, e.g. 1,000 open
streams) instead of running for `--duration`.  Measures latency (request sent → body
complete) and time to first byte (→ first body chunk).  A streamed response counts as
complete when it ends with the API's final event.  Used for the streaming figures, the
1,000-stream test, and for everything when `wrk` is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import time
from dataclasses import dataclass, field

import aiohttp

_STREAM_ENDS = (b"data: [DONE]\n\n", b'{"type":"message_stop"}\n\n')


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    complete: int = 0
    incomplete: int = 0
    errors: int = 0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


async def one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    stream: bool,
    stats: Stats | None,
) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            first: float | None = None
            tail = b""
            while chunk := await resp.content.readany():
                if first is None:
                    first = time.perf_counter()
                tail = (tail + chunk)[-64:]
            ended = time.perf_counter()
            status = resp.status
    except (TimeoutError, aiohttp.ClientError, OSError):
        if stats is not None:
            stats.errors += 1
        return
    if stats is None:
        return
    stats.statuses[status] = stats.statuses.get(status, 0) + 1
    ok = status == 200 and (not stream or tail.endswith(_STREAM_ENDS))
    if not ok:
        stats.incomplete += 1
        return
    stats.complete += 1
    stats.latencies.append(ended - started)
    stats.ttfbs.append((first or ended) - started)


async def run(args: argparse.Namespace, body: bytes) -> dict[str, object]:
    base_headers = {"Content-Type": "application/json"}
    for item in args.header:
        name, _, value = item.partition(":")
        base_headers[name.strip()] = value.strip()
    tokens = itertools.count()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        def headers_for() -> dict[str, str]:
            n = next(tokens)
            if args.fail_every and n % args.fail_every == 0:
                return base_headers | {"x-bench-fail": f"py-{n}"}
            return base_headers

        async def worker(deadline: float, stats: Stats | None, budget: list[int]) -> None:
            while time.perf_counter() < deadline:
                if args.total:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                await one(session, args.url, body, headers_for(), args.stream, stats)

        if args.warmup > 0 and not args.total:
            deadline = time.perf_counter() + args.warmup
            await asyncio.gather(*(worker(deadline, None, [0]) for _ in range(args.concurrency)))
        stats = Stats()
        budget = [args.total]
        started = time.perf_counter()
        deadline = started + (args.duration if not args.total else 3600.0)
        await asyncio.gather(*(worker(deadline, stats, budget) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000

    return {
        "requests": stats.complete + stats.incomplete,
        "complete": stats.complete,
        "incomplete": stats.incomplete,
        "errors": stats.errors,
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "elapsed_s": elapsed,
        "rps": stats.complete / elapsed if elapsed > 0 else 0.0,
        "p50_ms": ms(percentile(stats.latencies, 50)),
        "p99_ms": ms(percentile(stats.latencies, 99)),
        "ttfb_p50_ms": ms(percentile(stats.ttfbs, 50)),
        "ttfb_p99_ms": ms(percentile(stats.ttfbs, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--total", type=int, default=0)
    parser.add_argument("--stream", action="store_true", help="check for the final event")
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    with open(args.body_file, "rb") as f:
        body = f.read()
    print(json.dumps(uvloop.run(run(args, body))), flush=True)


if __name__ == "__main__":
    main()
