"""A request held by `retry.hold`, without sockets: the engine (injected clock, wall and
sleep, `MockTransport`) lists it in its `Holds` while it waits, with the reset it waits
for, and drops it the moment its task is cancelled (a client that left)."""

from __future__ import annotations

import asyncio
import io
import json

from hydrallm.config.load import parse_config
from hydrallm.observe.events import Logger, Telemetry
from hydrallm.providers import provider_for
from hydrallm.proxy.engine import Engine, Labels
from hydrallm.routing.breakers import Breakers
from hydrallm.routing.holds import Holds
from hydrallm.routing.keys import KeyPools
from hydrallm.testing.mock import MockRequest, MockResponse, MockTransport
from test_engine import chat_request

WALL = 1_700_000_000.0
CONFIG = """
[retry]
max_cycles = 1
default_interval = "1ms"
hold = "1m"

[endpoints.team]
url = "http://team.test/v1"
api_keys = ["sk-held-key-aaaa1111"]

[[models]]
name = "main"
endpoint = "team"
type = "openai"
model = "m1"
"""


def throttled(request: MockRequest) -> MockResponse:
    """OpenAI's throttle: 429 `rate_limit_exceeded`, come back in 30 s (longer than
    max_retry_after, so the key sleeps and the request looks for another)."""
    body = {
        "error": {
            "message": "Rate limit reached for requests",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }
    headers = [("Content-Type", "application/json"), ("retry-after", "30")]
    return MockResponse(429, headers, [json.dumps(body).encode()])


async def test_a_held_request_is_listed_while_it_waits_and_dropped_when_cancelled() -> None:
    config = parse_config(CONFIG, env={})
    now = [100.0]
    holding = asyncio.Event()
    waits: list[float] = []

    def clock() -> float:
        return now[0]

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        holding.set()
        await asyncio.Event().wait()  # until cancelled

    log = io.StringIO()
    telemetry = Telemetry(Logger("debug", stream=log, color=False))
    provider = provider_for("openai")
    provider.configure(config, telemetry)
    transport = MockTransport(throttled)
    holds = Holds(wall=lambda: WALL)
    engine = Engine(
        config=config,
        transport=transport,
        breakers=Breakers(config.cooldown, clock),
        telemetry=telemetry,
        providers={"openai": provider},
        clock=clock,
        sleep=sleep,
        keys=KeyPools(config, clock, lambda: WALL),
        wall=lambda: WALL,
        holds=holds,
    )
    request = chat_request("x")
    task = asyncio.create_task(
        engine.run(request, list(config.models.values()), Labels("l", "default", "openai"))
    )
    await asyncio.wait_for(holding.wait(), 5)
    assert waits == [30.0]  # the key's reset, within retry.hold
    assert holds.snapshot() == {
        "count": 1,
        "earliest_reset": WALL + 30,
        "requests": [{"listener": "l", "since": WALL, "until": WALL + 30}],
    }
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert len(holds) == 0
    assert holds.snapshot() == {"count": 0, "earliest_reset": None, "requests": []}
    assert len(transport.requests) == 1  # nothing sent after the client left
    telemetry.log.flush()
    assert "hold_cancelled listener=l" in log.getvalue()
