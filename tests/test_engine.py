"""The plan loop and a single attempt, without sockets.

The engine gets an injected clock, sleep and random source and a `MockTransport`, so every
retry, wait, Retry-After, jitter, budget and cooldown rule runs in milliseconds and the
waits asked for are read exactly (they are recorded, not slept).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest

from hydrallm.config import Config
from hydrallm.config.load import parse_config
from hydrallm.errors import ConnectError, ProtocolError
from hydrallm.formats.body import parse_body
from hydrallm.observe.events import Logger, Telemetry
from hydrallm.providers import provider_for
from hydrallm.providers.base import ClientRequest
from hydrallm.proxy.engine import Committed, Engine, Final, Labels
from hydrallm.routing.breakers import Breakers
from hydrallm.testing.mock import STALL, MockRequest, MockResponse, MockTransport, script

CHAT = b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
DONE = b"data: [DONE]\n\n"
OVERLOADED = b'data: {"error":{"type":"overloaded_error","message":"busy"}}\n\n'
OK_JSON = b'{"id":"c1","choices":[{"message":{"role":"assistant","content":"Hi"}}]}'
JSON_CT = [("Content-Type", "application/json")]
SSE_CT = [("Content-Type", "text/event-stream")]


def chat_request(model: str = "client-model", *, stream: bool = False) -> ClientRequest:
    """A client's chat completions request "hi" for `model`, as the handler passes it on."""
    body = json.dumps(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    return ClientRequest(
        method="POST",
        path="/v1/chat/completions",
        query="",
        headers=(("Content-Type", "application/json"),),
        body=body,
        json=parse_body(body),
        streaming=stream,
    )


@dataclass
class World:
    """A clock that only moves when the engine sleeps."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def config(
    retry: str = "",
    cooldown: str = "",
    models: Sequence[str] = ("a", "b"),
    interval: str = "1s",
    cycles: int = 1,
) -> Config:
    text = f"""
[retry]
max_cycles = {cycles}
default_interval = "{interval}"
{retry}
[cooldown]
{cooldown}
"""
    for name in models:
        text += f"""
[endpoints.{name}]
url = "http://{name}.test"
api_key = "sk-{name}-secret"

[[models]]
endpoint = "{name}"
type = "openai"
model = "{name}-model"
attempts = 2
"""
    return parse_config(text, env={})


class Harness:
    def __init__(self, cfg: Config, handler: object, rand: float = 0.5) -> None:
        self.world = World()
        self.log = io.StringIO()
        telemetry = Telemetry(Logger("debug", stream=self.log, color=False))
        providers = {"openai": provider_for("openai")}
        for p in providers.values():
            p.configure(cfg, telemetry)
        self.transport = MockTransport(handler)  # type: ignore[arg-type]
        self.breakers = Breakers(cfg.cooldown, self.world.clock)
        self.engine = Engine(
            config=cfg,
            transport=self.transport,
            breakers=self.breakers,
            telemetry=telemetry,
            providers=providers,
            clock=self.world.clock,
            sleep=self.world.sleep,
            rand=lambda: rand,
        )
        self.chain = list(cfg.models.values())

    async def run(self, *, stream: bool = False, model: str = "client-model") -> Committed | Final:
        request = chat_request(model, stream=stream)
        return await self.engine.run(request, self.chain, Labels("l", "default", "openai"))

    def logs(self) -> str:
        self.engine.telemetry.log.flush()
        return self.log.getvalue()

    def hosts(self) -> list[str]:
        return [r.url.split("/")[2] for r in self.transport.requests]


def ok() -> MockResponse:
    return MockResponse(200, JSON_CT, [OK_JSON])


def status(code: int, *headers: tuple[str, str], body: bytes = b'{"error":"x"}') -> MockResponse:
    return MockResponse(code, [*JSON_CT, *headers], [body])


def by_host(**answers: MockResponse | BaseException) -> object:
    """Answer per upstream host (`a`, `b`), each with a script."""
    scripts = {host: script(*(a if isinstance(a, tuple) else (a,))) for host, a in answers.items()}

    def handler(request: MockRequest) -> MockResponse:
        return scripts[request.url.split("/")[2].split(".")[0]](request)  # type: ignore[return-value]

    return handler


async def test_a_retry_waits_the_interval_and_a_fallback_does_not() -> None:
    h = Harness(config(), by_host(a=status(503), b=ok()))
    result = await h.run()
    assert isinstance(result, Committed) and result.complete
    assert h.hosts() == ["a.test", "a.test", "b.test"]
    # One wait, before the retry of a: its interval plus 10% of rand() as jitter.
    assert h.world.sleeps == [1.05]
    assert result.attempts == 3 and result.model.endpoint == "b"
    assert b"".join(result.prefix) == OK_JSON


async def test_retry_after_is_honoured_when_short() -> None:
    h = Harness(config(), by_host(a=(status(429, ("Retry-After", "3")), ok())))
    result = await h.run()
    assert isinstance(result, Committed) and result.model.endpoint == "a"
    assert h.world.sleeps == [3.0]


async def test_retry_after_ms_wins_over_retry_after() -> None:
    headers = (("retry-after-ms", "250"), ("Retry-After", "9"))
    h = Harness(config(interval="10ms"), by_host(a=(status(503, *headers), ok())))
    await h.run()
    assert h.world.sleeps == [0.25]


async def test_a_long_retry_after_falls_back_at_once_and_opens_the_circuit() -> None:
    h = Harness(config(), by_host(a=status(429, ("Retry-After", "120")), b=ok()))
    result = await h.run()
    assert isinstance(result, Committed) and result.model.endpoint == "b"
    assert h.hosts() == ["a.test", "b.test"] and h.world.sleeps == []
    state, left = h.breakers.state(h.chain[0].id)
    assert state == "open" and left == pytest.approx(120)
    # The next request leaves the open model out of its plan.
    await h.run()
    assert h.hosts()[2:] == ["b.test"]


async def test_exponential_backoff_with_equal_jitter() -> None:
    cfg = config(
        'exponential_backoff = true\nmax_interval = "5s"',
        models=("a",),
    )
    h = Harness(cfg, by_host(a=status(503)), rand=0.0)
    h.chain = [replace(h.chain[0], attempts=5)]
    result = await h.run()
    assert isinstance(result, Final) and result.status == 503
    # interval 1s: retries 1..4 wait within [v/2, v], v = 1, 2, 4, 5 (capped); rand 0 -> v/2,
    # never below the interval.
    assert h.world.sleeps == [1.0, 1.0, 2.0, 2.5]


async def test_a_new_cycle_waits_the_first_models_interval() -> None:
    cfg = config(cycles=2)
    h = Harness(cfg, by_host(a=(status(503), status(503), ok()), b=status(502)))
    result = await h.run()
    assert isinstance(result, Committed) and result.model.endpoint == "a"
    assert h.hosts() == ["a.test", "a.test", "b.test", "b.test", "a.test"]
    assert h.world.sleeps == [1.05, 1.05, 1.05]


async def test_exhaustion_returns_the_last_upstream_response_as_received() -> None:
    h = Harness(config(), by_host(a=status(503, body=b"a busy"), b=status(529, body=b"b busy")))
    result = await h.run()
    assert isinstance(result, Final) and not result.proxy_made
    assert (result.status, result.body, result.attempts) == (529, b"b busy", 4)


async def test_exhaustion_without_any_response_is_a_proxy_made_502() -> None:
    h = Harness(config(), script(ConnectError("cannot connect to x:1: refused")))
    result = await h.run()
    assert isinstance(result, Final) and result.proxy_made and result.status == 502
    assert b"all 4 attempts failed" in result.body and b"cannot connect" in result.body
    assert b"sk-a-secret" not in result.body


async def test_a_response_seen_before_later_connect_errors_is_still_what_the_client_gets() -> None:
    h = Harness(config(), by_host(a=status(503, body=b"seen"), b=ConnectError("refused")))
    result = await h.run()
    assert isinstance(result, Final) and (result.status, result.body) == (503, b"seen")


async def test_the_time_budget_stops_the_plan_with_a_504() -> None:
    h = Harness(config('total_timeout = "1.5s"'), by_host(a=status(503, body=b"x")))
    h.chain = h.chain[:1]
    h.chain = [replace(h.chain[0], attempts=5)]
    result = await h.run()
    # The first retry's wait fits in the budget (1.05s), the second would not.
    assert h.world.sleeps == [1.05]
    assert isinstance(result, Final) and result.status == 503  # the last response seen

    h = Harness(config('total_timeout = "1.5s"'), script(ConnectError("refused")))
    h.chain = [replace(h.chain[0], attempts=5)]
    result = await h.run()
    assert isinstance(result, Final) and result.status == 504
    assert b"time budget (1.5s) is spent" in result.body


async def test_a_client_error_is_returned_at_once_and_is_a_success_for_the_breaker() -> None:
    h = Harness(config(cooldown="failures = 1"), by_host(a=status(400, body=b"bad")))
    result = await h.run()
    assert isinstance(result, Final) and (result.status, result.body) == (400, b"bad")
    assert h.hosts() == ["a.test"]
    assert h.breakers.state(h.chain[0].id)[0] == "closed"


async def test_fallback_on_body_moves_on_without_retrying() -> None:
    cfg = config('fallback_on_body = ["context_length_exceeded"]')
    body = b'{"error":{"code":"context_length_exceeded"}}'
    h = Harness(cfg, by_host(a=status(400, body=body), b=ok()))
    result = await h.run()
    assert isinstance(result, Committed) and h.hosts() == ["a.test", "b.test"]


async def test_a_first_event_error_in_a_stream_is_retried_and_nothing_of_it_is_kept() -> None:
    h = Harness(
        config(),
        by_host(a=(MockResponse(200, SSE_CT, [OVERLOADED]), MockResponse(200, SSE_CT, [CHAT]))),
    )
    result = await h.run(stream=True)
    assert isinstance(result, Committed) and not result.complete
    assert b"".join(result.prefix) == CHAT
    assert h.transport.responses[0].aborted


async def test_a_gzipped_stream_is_peeked_through_and_relayed_compressed() -> None:
    bad = gzip.compress(OVERLOADED)
    good = gzip.compress(CHAT + DONE)
    enc = [*SSE_CT, ("Content-Encoding", "gzip")]
    h = Harness(
        config(), by_host(a=(MockResponse(200, enc, [bad]), MockResponse(200, enc, [good])))
    )
    result = await h.run(stream=True)
    assert isinstance(result, Committed) and b"".join(result.prefix) == good
    assert len(h.transport.requests) == 2


async def test_a_stalled_first_token_times_out_and_falls_back() -> None:
    cfg = config('first_token_timeout = "30ms"')
    h = Harness(
        cfg, by_host(a=MockResponse(200, SSE_CT, [STALL]), b=MockResponse(200, SSE_CT, [CHAT]))
    )
    result = await h.run(stream=True)
    assert isinstance(result, Committed) and result.model.endpoint == "b"
    # fallback_on_timeout (default true): no retry of the stalled model.
    assert h.hosts() == ["a.test", "b.test"]
    assert "no first token after" in h.logs()


async def test_a_reset_before_commit_is_retried() -> None:
    reset = MockResponse(200, JSON_CT, [ProtocolError("upstream closed the connection")])
    h = Harness(config(), by_host(a=(reset, ok())))
    result = await h.run()
    assert isinstance(result, Committed) and h.hosts() == ["a.test", "a.test"]


async def test_a_star_model_without_a_requested_model_is_skipped_without_retries() -> None:
    cfg = config()
    h = Harness(cfg, by_host(a=ok(), b=ok()))
    star = replace(h.chain[0], model="*")
    h.chain = [star, h.chain[1]]
    body = b'{"messages":[]}'
    request = ClientRequest("POST", "/v1/chat/completions", "", (), body, parse_body(body), False)
    result = await h.engine.run(request, h.chain, Labels("l", "default", "openai"))
    assert isinstance(result, Committed) and h.hosts() == ["b.test"]


async def test_failures_open_the_circuit_and_later_requests_skip_the_model() -> None:
    h = Harness(config(cooldown='failures = 2\nduration = "30s"'), by_host(a=status(503), b=ok()))
    await h.run()
    assert h.breakers.state(h.chain[0].id)[0] == "open"
    await h.run()
    assert h.hosts() == ["a.test", "a.test", "b.test", "b.test"]
    # After the duration, one request probes the model again (half-open).
    h.world.now += 31
    await h.run()
    assert h.hosts()[4] == "a.test"


async def test_a_stream_counts_as_a_success_only_when_it_ends_well() -> None:
    cfg = config(cooldown="failures = 2")
    h = Harness(cfg, by_host(a=MockResponse(200, SSE_CT, [CHAT])))
    runner = h.engine.attempts
    for _ in range(2):
        result = await h.run(stream=True)
        assert isinstance(result, Committed)
        runner.stream_ended(result, "the upstream connection closed mid-stream")
    # Two streams in a row that broke after commit: the model's circuit is open.
    assert h.breakers.state(h.chain[0].id)[0] == "open"

    h = Harness(cfg, by_host(a=(status(503), MockResponse(200, SSE_CT, [CHAT]))))
    result = await h.run(stream=True)
    assert isinstance(result, Committed)
    runner = h.engine.attempts
    runner.stream_ended(result, None)  # ended well: the earlier failure is forgotten
    runner.breakers.failure(h.chain[0].id, None)
    assert h.breakers.state(h.chain[0].id)[0] == "closed"


async def test_secrets_stay_out_of_the_debug_log() -> None:
    h = Harness(config(), by_host(a=status(503), b=ok()))
    await h.run()
    log = h.logs()
    assert "upstream_request" in log and "sk-a-secret" not in log and "sk-b-secret" not in log
    auth = h.transport.requests[0].header("Authorization")
    assert auth == "Bearer sk-a-secret"  # ... while the upstream does get the key
