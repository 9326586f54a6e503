"""The client side of `hydrallm demo`: one workload of Anthropic Messages requests.

`run_workload` sends `requests` requests (every other one streaming) with at most
`concurrency` in flight, and judges each one as a user of the API would: a request
succeeded only when it got a 200 and the whole expected text, and, for a stream, no
error event and a `message_stop`.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import field
from typing import Any

import aiohttp

from hydrallm.dataclass import dataclass
from hydrallm.formats.sse import SSEDecoder, SSEError
from hydrallm.testing import CANONICAL_TEXT

__all__ = ["Outcome", "WorkloadResult", "percentile", "run_workload"]

DEMO_MODEL = "claude-demo"
_STATUS_LABELS = {429: "429 rate limited", 503: "503 unavailable", 529: "529 overloaded"}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request looked like to the client."""

    ok: bool
    failure: str | None  # a short label of what went wrong, None when ok
    latency: float  # seconds
    streamed: bool


@dataclass(slots=True)
class WorkloadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def succeeded(self) -> int:
        return sum(1 for o in self.outcomes if o.ok)

    def failures(self) -> Counter[str]:
        return Counter(o.failure for o in self.outcomes if o.failure is not None)

    def latency(self, q: float) -> float | None:
        return percentile([o.latency for o in self.outcomes], q)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by the nearest-rank method; None for no values."""
    if not values:
        return None
    if q == 50:
        return statistics.median(values)
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def _body(index: int, stream: bool) -> bytes:
    payload: dict[str, Any] = {
        "model": DEMO_MODEL,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": f"Tell me about hydras (request {index})."}],
    }
    if stream:
        payload["stream"] = True
    return json.dumps(payload).encode()


def _status_failure(status: int) -> str:
    return _STATUS_LABELS.get(status, f"HTTP {status}")


def _judge_json(raw: bytes) -> str | None:
    try:
        answer = json.loads(raw)
    except ValueError:
        return "unreadable body"
    if not isinstance(answer, dict):
        return "unreadable body"
    if answer.get("type") == "error":
        return "error in a 200 body"
    blocks = answer.get("content")
    text = ""
    if isinstance(blocks, list):
        text = "".join(
            b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"
        )
    return None if text == CANONICAL_TEXT else "incomplete answer"


async def _judge_stream(response: aiohttp.ClientResponse) -> str | None:
    decoder = SSEDecoder()
    parts: list[str] = []
    stopped = False
    async for chunk in response.content.iter_any():
        try:
            events = decoder.feed(chunk)
        except SSEError:
            return "broken stream"
        for event in events:
            if event.event == "error":
                return "error event in stream"
            if event.event == "message_stop":
                stopped = True
            elif event.event == "content_block_delta":
                try:
                    delta = json.loads(event.data).get("delta", {})
                except (ValueError, AttributeError):
                    return "broken stream"
                if isinstance(delta, dict) and delta.get("type") == "text_delta":
                    parts.append(str(delta.get("text", "")))
    if not stopped:
        return "stream cut short"
    return None if "".join(parts) == CANONICAL_TEXT else "incomplete answer"


async def _one(session: aiohttp.ClientSession, url: str, index: int, timeout: float) -> Outcome:
    stream = index % 2 == 1
    started = time.monotonic()
    failure: str | None
    try:
        async with asyncio.timeout(timeout):
            async with session.post(
                url,
                data=_body(index, stream),
                headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
            ) as response:
                if response.status != 200:
                    await response.read()
                    failure = _status_failure(response.status)
                elif stream:
                    failure = await _judge_stream(response)
                else:
                    failure = _judge_json(await response.read())
    except TimeoutError:
        failure = "client timeout"
    except aiohttp.ClientPayloadError:
        failure = "stream cut short"
    except aiohttp.ClientError:
        failure = "connection reset"
    return Outcome(failure is None, failure, time.monotonic() - started, stream)


async def run_workload(
    url: str,
    *,
    requests: int,
    concurrency: int,
    on_done: Callable[[Outcome], None] | None = None,
    timeout: float = 30.0,
) -> WorkloadResult:
    """Send the workload to `url` (a Messages endpoint) and judge every answer."""
    result = WorkloadResult()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)
    # A fresh connection per request: a reset must not poison a pooled connection
    # that the next request would inherit, which would blur the comparison.
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                outcome = await _one(session, url, index, timeout)
                result.outcomes.append(outcome)
                if on_done is not None:
                    on_done(outcome)

        async with asyncio.TaskGroup() as group:
            for n in range(max(1, min(concurrency, requests))):
                group.create_task(worker(), name=f"demo-client-{n}")
    result.elapsed = time.monotonic() - started
    return result
