"""Latency of two proxies measured in turns, request by request (the journal's c1 p99).

One request in flight at a time, to each target in turn (A, B, B, A, A, B, ...: each goes
first every other turn), each over its own keep-alive connection, for `duration` seconds: every request to one has a request to
the other a fraction of a millisecond before or after it, so the machine's moments (a
neighbour's burst, a descheduled vCPU) fall on both alike.  Measured one after the other
for seconds each, the same process's c1 p99 read 0.55-2.1 ms from round to round (see
bench/RESULTS.md, eighth session): far more than the 0.05 ms asked about.

The client is Python (asyncio streams, no HTTP library): its own time is in every
latency, the same for both targets, so it cancels in their difference, not in each.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass
class Turns:
    """Latencies (seconds) of each target's requests, in the order sent."""

    latencies: list[list[float]]


def _request(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _answer(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"not a 200: {head[:200].decode('latin-1')}")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":", 1)[1]))
            return
    raise RuntimeError("an answer without Content-Length")


async def in_turns(ports: list[int], path: str, body: bytes, duration: float) -> Turns:
    """Requests to each port in turn, one at a time, for `duration` seconds."""
    request = _request(path, body)
    conns = [await asyncio.open_connection("127.0.0.1", port) for port in ports]
    latencies: list[list[float]] = [[] for _ in ports]
    clock = time.perf_counter
    pairs = list(zip(conns, latencies, strict=True))
    turns = [pairs, pairs[::-1]]  # each goes first every other turn
    try:
        end = clock() + duration
        n = 0
        while clock() < end:
            for (reader, writer), seen in turns[n % 2]:
                started = clock()
                writer.write(request)
                await _answer(reader)
                seen.append(clock() - started)
            n += 1
    finally:
        for _, writer in conns:
            writer.close()
    return Turns(latencies)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def measure(ports: list[int], path: str, body: bytes, duration: float) -> list[dict[str, float]]:
    """Per target: p50_ms, p99_ms and requests, measured in turns."""
    turns = asyncio.run(in_turns(ports, path, body, duration))
    return [
        {
            "p50_ms": percentile(seen, 50) * 1000,
            "p99_ms": percentile(seen, 99) * 1000,
            "requests": float(len(seen)),
        }
        for seen in turns.latencies
    ]
