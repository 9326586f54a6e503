"""Failover conduct (issue 4), end to end.

The real proxy runs in-process on 127.0.0.1, in front of fault-injecting fake upstreams
(`hydrallm.testing`); clients are the official SDKs where what they make of a response
matters, plain aiohttp where the exact status, headers and bytes do.  Waits are kept short
through the config (intervals of 50 ms, first-token and idle limits of 300 ms).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from hydrallm.app.lifecycle import Proxy, start
from hydrallm.config.load import parse_config
from hydrallm.observe.events import Logger
from hydrallm.testing import CANONICAL_TEXT, FakeUpstream, faults

REQUESTED = "client-model"  # what clients ask for; the chain decides what is sent upstream
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT_PATH = "/v1/chat/completions"

# Short limits so each test takes well under a second of waiting.
BASE_RETRY: dict[str, object] = {
    "max_cycles": 1,
    "default_interval": "50ms",
    "default_timeout": "5s",
    "first_token_timeout": "300ms",
    "stream_idle_timeout": "300ms",
}


@dataclass(frozen=True, slots=True)
class Model:
    """One chain entry; its endpoint and model id share `id`, its upstream name is `<id>-model`."""

    id: str
    url: str
    type: str = "openai"
    attempts: int = 1
    timeout: str | None = None

    @property
    def name(self) -> str:
        return f"{self.id}-model"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def config_text(
    models: Sequence[Model],
    retry: Mapping[str, object],
    cooldown: Mapping[str, object],
) -> str:
    lines = ["[retry]"]
    lines += [f"{k} = {_toml(v)}" for k, v in {**BASE_RETRY, **retry}.items()]
    lines += ["[cooldown]"]
    lines += [f"{k} = {_toml(v)}" for k, v in cooldown.items()]
    for m in models:
        lines += [f"[providers.{m.id}]", f"url = {_toml(m.url)}"]
    for m in models:
        lines += [
            f"[models.{m.id}]",
            f"provider = {_toml(m.id)}",
            f"type = {_toml(m.type)}",
            f"model = {_toml(m.name)}",
            f"attempts = {m.attempts}",
        ]
        if m.timeout is not None:
            lines.append(f"timeout = {_toml(m.timeout)}")
    lines += [
        "[[listeners]]",
        'name = "main"',
        "port = 8080",  # replaced by 0 below: the loader wants a real port number
        f"models = {_toml([m.id for m in models])}",
    ]
    return "\n".join(lines) + "\n"


@dataclass(slots=True)
class Running:
    proxy: Proxy
    url: str
    log: io.StringIO

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="sk-test", max_retries=0)

    def anthropic(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.url, api_key="sk-test", max_retries=0)


@asynccontextmanager
async def running(
    *models: Model,
    retry: Mapping[str, object] | None = None,
    cooldown: Mapping[str, object] | None = None,
    listener: Mapping[str, Any] | None = None,
) -> AsyncIterator[Running]:
    config = parse_config(config_text(models, retry or {}, cooldown or {}), env={})
    config = replace(
        config,
        listeners=tuple(replace(lc, port=0, **(listener or {})) for lc in config.listeners),
    )
    log = io.StringIO()
    proxy = await start(config, logger=Logger("debug", stream=log))
    host, port = proxy.addresses()["main"]
    try:
        yield Running(proxy, f"http://{host}:{port}", log)
    finally:
        await proxy.close()


def dead_url() -> str:
    """A URL on which nothing listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def chat_body(*, stream: bool = False) -> dict[str, Any]:
    return {"model": REQUESTED, "messages": MESSAGES, "stream": stream}


def gaps(fake: FakeUpstream) -> list[float]:
    times = [r.received_at for r in fake.requests]
    return [b - a for a, b in itertools.pairwise(times)]


def tags(headers: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    return (
        headers.get("x-hydrallm-model"),
        headers.get("x-hydrallm-endpoint"),
        headers.get("x-hydrallm-attempts"),
    )


async def stream_text(run: Running, api: str) -> tuple[Mapping[str, str], str]:
    """Stream one answer through the proxy with the SDK of `api`; its headers and text."""
    if api == "messages":
        async with run.anthropic() as claude:
            raw = await claude.messages.with_raw_response.create(
                model=REQUESTED, max_tokens=100, messages=MESSAGES, stream=True
            )
            events = await raw.parse()
            parts = [
                e.delta.text
                async for e in events
                if e.type == "content_block_delta" and e.delta.type == "text_delta"
            ]
            return raw.headers, "".join(parts)
    async with run.openai() as client:
        if api == "responses":
            rraw = await client.responses.with_raw_response.create(
                model=REQUESTED, input="hi", stream=True
            )
            revents = rraw.parse()
            parts = [e.delta async for e in revents if e.type == "response.output_text.delta"]
            return rraw.headers, "".join(parts)
        craw = await client.chat.completions.with_raw_response.create(
            model=REQUESTED, messages=MESSAGES, stream=True
        )
        chunks = craw.parse()
        parts = [c.choices[0].delta.content or "" async for c in chunks if c.choices]
        return craw.headers, "".join(parts)


def api_type(api: str) -> str:
    return "anthropic" if api == "messages" else "openai"


# --------------------------------------------------------------------------- before commit


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
async def test_error_event_as_first_event_falls_back_with_a_clean_stream(
    api: str, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    # Anthropic `event: error` overloaded_error, OpenAI `data: {"error": ...}`,
    # Responses `response.failed`: each a 200 stream that failed before its first token.
    primary.script(faults.error_event_first())
    kind = api_type(api)
    async with running(
        Model("primary", primary.url, kind), Model("fallback", fallback.url, kind)
    ) as run:
        headers, text = await stream_text(run, api)
    assert text == CANONICAL_TEXT
    assert tags(headers) == ("fallback-model", "fallback", "2")
    assert len(primary.requests) == 1
    assert len(fallback.requests) == 1


async def test_reset_after_headers_before_first_event_falls_back(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.script(faults.reset_after_headers())
    async with running(Model("primary", primary.url), Model("fallback", fallback.url)) as run:
        headers, text = await stream_text(run, "chat")
    assert text == CANONICAL_TEXT
    assert tags(headers) == ("fallback-model", "fallback", "2")


async def test_slow_first_token_falls_back_after_first_token_timeout(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.script(faults.slow_first_token(5.0))
    async with running(
        Model("primary", primary.url, attempts=3), Model("fallback", fallback.url)
    ) as run:
        began = time.monotonic()
        headers, text = await stream_text(run, "chat")
        elapsed = time.monotonic() - began
    assert text == CANONICAL_TEXT
    assert 0.3 <= elapsed < 3.0  # the first token would have come after 5 s
    # A silent model is not asked again (fallback_on_timeout), despite attempts = 3.
    assert len(primary.requests) == 1
    assert tags(headers) == ("fallback-model", "fallback", "2")


async def test_non_stream_body_cut_midway_is_retried(primary: FakeUpstream) -> None:
    primary.script(faults.reset_mid_stream(after_chunks=1))  # half the JSON body, then RST
    async with running(Model("primary", primary.url, attempts=2)) as run, run.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=REQUESTED, messages=MESSAGES
        )
        completion = raw.parse()
    assert completion.choices[0].message.content == CANONICAL_TEXT
    assert len(primary.requests) == 2
    assert tags(raw.headers) == ("primary-model", "primary", "2")


# --------------------------------------------------------------------------- after commit


BREAKS = {
    "stall": (faults.stall(after_chunks=3, seconds=5.0), "stalled"),
    "reset": (faults.reset_mid_stream(after_chunks=3), "upstream stream failed"),
}


@pytest.mark.parametrize("api", ["chat", "messages"])
@pytest.mark.parametrize("fault", list(BREAKS))
async def test_a_stream_broken_after_commit_ends_with_an_error_the_sdk_raises(
    api: str, fault: str, primary: FakeUpstream
) -> None:
    # After the first token, no transparent retry is possible: the client must get an
    # error, never a truncated answer that looks complete.
    script, reason = BREAKS[fault]
    primary.script(script)
    async with running(Model("primary", primary.url, api_type(api))) as run:
        got: list[str] = []
        began = time.monotonic()
        with pytest.raises((openai.APIError, anthropic.APIError)) as caught:
            if api == "messages":
                async with run.anthropic() as claude:
                    events = await claude.messages.create(
                        model=REQUESTED, max_tokens=100, messages=MESSAGES, stream=True
                    )
                    async for e in events:
                        if e.type == "content_block_delta" and e.delta.type == "text_delta":
                            got.append(e.delta.text)
            else:
                async with run.openai() as client:
                    chunks = await client.chat.completions.create(
                        model=REQUESTED, messages=MESSAGES, stream=True
                    )
                    async for c in chunks:
                        if c.choices:
                            got.append(c.choices[0].delta.content or "")
        elapsed = time.monotonic() - began
        # The idle limit is 300 ms: the error comes then, not after the 5 s stall.
        assert elapsed < 3.0
        assert reason in str(caught.value)
        partial = "".join(got)
        assert partial and CANONICAL_TEXT.startswith(partial) and partial != CANONICAL_TEXT
        # The proxy is fine for the next request.
        _, text = await stream_text(run, api)
        assert text == CANONICAL_TEXT
        assert "stream_broken" in run.log.getvalue()


async def test_stream_without_done_finishes_promptly(primary: FakeUpstream) -> None:
    primary.script(faults.no_done())
    retry = {"stream_idle_timeout": "5s"}
    async with running(Model("primary", primary.url), retry=retry) as run:
        began = time.monotonic()
        headers, text = await stream_text(run, "chat")
        elapsed = time.monotonic() - began
    assert text == CANONICAL_TEXT
    assert elapsed < 3.0  # no waiting (5 s idle limit) for a [DONE] that never comes
    assert tags(headers) == ("primary-model", "primary", "1")


# --------------------------------------------------------------------------- waiting


async def test_retry_after_ms_is_waited_before_the_retry(
    primary: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    primary.script(faults.status(429, headers={"retry-after-ms": "400"}))
    async with (
        running(Model("primary", primary.url, attempts=2)) as run,
        http.post(run.url + CHAT_PATH, json=chat_body()) as resp,
    ):
        assert resp.status == 200
        assert tags(resp.headers) == ("primary-model", "primary", "2")
    [gap] = gaps(primary)
    assert gap >= 0.4


async def test_retry_after_seconds_is_waited_before_the_retry(
    primary: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    primary.script(faults.status(429, retry_after=1))
    async with (
        running(Model("primary", primary.url, attempts=2)) as run,
        http.post(run.url + CHAT_PATH, json=chat_body()) as resp,
    ):
        assert resp.status == 200
    [gap] = gaps(primary)
    assert gap >= 1.0


async def test_long_retry_after_falls_back_at_once_and_cools_the_model(
    primary: FakeUpstream, fallback: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    primary.script(faults.status(429, retry_after=120))
    async with running(
        Model("primary", primary.url, attempts=3), Model("fallback", fallback.url)
    ) as run:
        began = time.monotonic()
        async with http.post(run.url + CHAT_PATH, json=chat_body()) as resp:
            assert resp.status == 200
            assert tags(resp.headers) == ("fallback-model", "fallback", "2")
        assert time.monotonic() - began < 5.0  # not the 120 s asked for
        # The next request goes straight to the fallback: the primary is cooling down.
        async with http.post(run.url + CHAT_PATH, json=chat_body()) as resp:
            assert resp.status == 200
            assert tags(resp.headers) == ("fallback-model", "fallback", "1")
        async with http.get(run.url + "/_hydrallm/health") as resp:
            health = await resp.json()
    assert len(primary.requests) == 1
    assert len(fallback.requests) == 2
    assert health["models"]["primary"]["state"] == "open"
    assert health["models"]["primary"]["open_for_s"] > 100


async def test_long_retry_after_keeps_the_model_out_of_later_cycles(
    http: aiohttp.ClientSession,
) -> None:
    async with (
        FakeUpstream(default=faults.status(429, retry_after=120)) as primary,
        FakeUpstream(default=faults.status(503)) as fallback,
    ):
        async with running(
            Model("primary", primary.url),
            Model("fallback", fallback.url),
            retry={"max_cycles": 3},
            cooldown={"enabled": False},
        ) as run:
            began = time.monotonic()
            async with http.post(run.url + CHAT_PATH, json=chat_body()) as resp:
                assert resp.status == 503  # the most recent upstream answer
                assert tags(resp.headers) == ("fallback-model", "fallback", "4")
            assert time.monotonic() - began < 5.0
        # Asked to stay away for 120 s, the primary is not asked again in cycles 2 and 3.
        assert len(primary.requests) == 1
        assert len(fallback.requests) == 3


async def test_persistent_429_is_spaced_by_exponential_backoff(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeUpstream(default=faults.status(429)) as primary:
        retry = {"exponential_backoff": True, "max_interval": "1s", "max_cycles": 2}
        async with running(Model("primary", primary.url, attempts=2), retry=retry) as run:
            # The top of each jitter range, so the expected waits are exact: 50, 100, 200 ms.
            run.proxy.state.current.engine.rand = lambda: 1.0
            async with http.post(run.url + CHAT_PATH, json=chat_body()) as resp:
                assert resp.status == 429
                body = await resp.json()
                assert tags(resp.headers) == ("primary-model", "primary", "4")
        assert body["error"]["code"] == "rate_limit_exceeded"  # the upstream's own answer
        spaced = gaps(primary)
        assert len(spaced) == 3
        # Never two tries within one interval, and the wait doubles each time, also when
        # a new cycle comes back to the same model.
        for gap, least in zip(spaced, (0.05, 0.1, 0.2), strict=True):
            assert gap >= least


async def test_a_400_is_never_retried_on_the_same_model(
    primary: FakeUpstream, fallback: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    primary.default = faults.status(400)
    async with (
        running(
            Model("primary", primary.url, attempts=3),
            Model("fallback", fallback.url),
            retry={"max_cycles": 3},
        ) as run,
        http.post(run.url + CHAT_PATH, json=chat_body()) as resp,
    ):
        assert resp.status == 400
        body = await resp.json()
        assert tags(resp.headers) == ("primary-model", "primary", "1")
    assert body["error"]["message"] == "fake upstream error 400"
    assert len(primary.requests) == 1
    assert fallback.requests == []


async def test_fallback_on_status_skips_the_rest_of_the_models_tries(
    primary: FakeUpstream, fallback: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    primary.default = faults.status(503)
    async with (
        running(
            Model("primary", primary.url, attempts=3),
            Model("fallback", fallback.url),
            retry={"fallback_on": [503]},
        ) as run,
        http.post(run.url + CHAT_PATH, json=chat_body()) as resp,
    ):
        assert resp.status == 200
        assert tags(resp.headers) == ("fallback-model", "fallback", "2")
    assert len(primary.requests) == 1


CONTEXT_TOO_LONG = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


@pytest.mark.parametrize("enabled", [True, False], ids=["default", "turned-off"])
async def test_context_length_error_goes_to_the_next_model(
    enabled: bool, primary: FakeUpstream, fallback: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    primary.default = faults.status(400, CONTEXT_TOO_LONG)
    retry: dict[str, object] = {} if enabled else {"fallback_on_body": []}
    async with (
        running(
            Model("primary", primary.url, attempts=3), Model("fallback", fallback.url), retry=retry
        ) as run,
        http.post(run.url + CHAT_PATH, json=chat_body()) as resp,
    ):
        status, headers = resp.status, resp.headers
    assert len(primary.requests) == 1
    if enabled:
        assert status == 200
        assert tags(headers) == ("fallback-model", "fallback", "2")
    else:
        assert status == 400
        assert fallback.requests == []


# --------------------------------------------------------------------------- cooldown


async def test_a_down_primary_is_skipped_and_traffic_returns_after_it_recovers(
    primary: FakeUpstream, fallback: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    primary.default = faults.status(503)
    cooldown = {"failures": 2, "duration": "500ms", "max_duration": "500ms"}
    async with running(
        Model("primary", primary.url), Model("fallback", fallback.url), cooldown=cooldown
    ) as run:

        async def ask() -> str | None:
            async with http.post(run.url + CHAT_PATH, json=chat_body()) as resp:
                assert resp.status == 200
                return resp.headers.get("x-hydrallm-model")

        served: list[str | None] = []
        down_until = time.monotonic() + 1.2
        while time.monotonic() < down_until:
            served.append(await ask())
            await asyncio.sleep(0.03)
        # Every request was answered by the fallback; the primary saw the two failures that
        # opened its circuit and one probe per lapsed cooldown, not one try per request.
        assert set(served) == {"fallback-model"}
        assert len(served) >= 8
        assert len(primary.requests) <= 2 + 3

        primary.default = faults.ok()
        recovered = time.monotonic()
        while await ask() != "primary-model":
            assert time.monotonic() - recovered < 0.5 + 0.5, "traffic did not return in time"
            await asyncio.sleep(0.03)
        assert [await ask() for _ in range(3)] == ["primary-model"] * 3
    assert "state=open" in run.log.getvalue()
    assert "state=closed" in run.log.getvalue()


async def test_when_every_model_is_cooling_down_they_are_tried_anyway(
    primary: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    primary.script(faults.status(503))
    async with running(
        Model("primary", primary.url), cooldown={"failures": 1, "duration": "30s"}
    ) as run:
        async with http.post(run.url + CHAT_PATH, json=chat_body()) as resp:
            assert resp.status == 503
        async with http.get(run.url + "/_hydrallm/health") as resp:
            assert (await resp.json())["models"]["primary"]["state"] == "open"
        # Never refused because of cooldown: the only model is asked, and it answers.
        async with http.post(run.url + CHAT_PATH, json=chat_body()) as resp:
            assert resp.status == 200
    assert len(primary.requests) == 2


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_total_timeout_is_a_504_in_the_apis_error_format(
    kind: str, primary: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    primary.default = faults.hang()
    path = "/v1/messages" if kind == "anthropic" else CHAT_PATH
    body = {**chat_body(), "max_tokens": 10}
    async with running(
        Model("primary", primary.url, kind, attempts=3), retry={"total_timeout": "400ms"}
    ) as run:
        began = time.monotonic()
        async with http.post(run.url + path, json=body) as resp:
            status, headers, payload = resp.status, resp.headers, await resp.json()
        elapsed = time.monotonic() - began
    assert status == 504
    assert 0.4 <= elapsed < 3.0  # the model's own timeout is 5 s
    assert tags(headers) == ("primary-model", "primary", "1")
    if kind == "anthropic":
        assert payload["type"] == "error"
        error = payload["error"]
    else:
        error = payload["error"]
    assert error["type"] == "timeout_error"
    assert "0.4s" in error["message"]


async def test_total_timeout_returns_the_last_upstream_error(
    http: aiohttp.ClientSession,
) -> None:
    busy = faults.status(503, {"error": {"message": "busy"}}, {"x-upstream": "yes"})
    async with FakeUpstream(default=busy) as primary:
        async with running(
            Model("primary", primary.url, attempts=5),
            retry={"default_interval": "1s", "total_timeout": "500ms"},
        ) as run:
            began = time.monotonic()
            async with http.post(run.url + CHAT_PATH, json=chat_body()) as resp:
                status, headers, payload = resp.status, resp.headers, await resp.json()
            elapsed = time.monotonic() - began
        assert status == 503
        assert payload == {"error": {"message": "busy"}}
        assert headers["x-upstream"] == "yes"
        # The 1 s wait before a retry would overrun the budget: answer now, not in 5 s.
        assert elapsed < 2.5
        assert len(primary.requests) == 1
        # The header counts attempts made, not the one the budget did not allow.
        assert headers["x-hydrallm-attempts"] == "1"


@pytest.mark.parametrize(
    "silence",
    [faults.hang(), faults.slow_first_token(5.0)],
    ids=["no-headers", "headers-then-no-body"],
)
async def test_a_timed_out_model_is_not_retried(
    silence: faults.Fault,
    primary: FakeUpstream,
    fallback: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    # The model's timeout bounds the whole non-streaming answer, headers and body.
    primary.default = silence
    async with running(
        Model("primary", primary.url, attempts=3, timeout="300ms"),
        Model("fallback", fallback.url),
    ) as run:
        began = time.monotonic()
        async with http.post(run.url + CHAT_PATH, json=chat_body()) as resp:
            assert resp.status == 200
            assert tags(resp.headers) == ("fallback-model", "fallback", "2")
        assert time.monotonic() - began < 2.0
    assert len(primary.requests) == 1


# --------------------------------------------------------------------------- what the client sees


async def test_tags_on_success_passed_through_4xx_and_exhaustion(
    primary: FakeUpstream, fallback: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with running(Model("primary", primary.url), Model("fallback", fallback.url)) as run:

        async def ask(stream: bool = False) -> tuple[int, tuple[str | None, ...]]:
            async with http.post(run.url + CHAT_PATH, json=chat_body(stream=stream)) as resp:
                await resp.read()
                return resp.status, tags(resp.headers)

        assert await ask() == (200, ("primary-model", "primary", "1"))
        assert await ask(stream=True) == (200, ("primary-model", "primary", "1"))
        primary.script(faults.status(404))
        assert await ask() == (404, ("primary-model", "primary", "1"))
        primary.script(faults.status(503))
        fallback.script(faults.status(502))
        assert await ask() == (502, ("fallback-model", "fallback", "2"))


async def test_exhaustion_returns_the_last_upstream_response_even_if_later_ones_failed_to_connect(
    primary: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    raw = b'{"error": {"message": "try later",  "type": "overloaded"}}\n'
    primary.script(faults.status(503, raw, {"Retry-After": "30", "x-request-id": "req-1"}))
    async with (
        running(
            Model("primary", primary.url),
            Model("fallback", dead_url()),
            retry={"max_retry_after": "1s"},
        ) as run,
        http.post(run.url + CHAT_PATH, json=chat_body()) as resp,
    ):
        status, headers, body = resp.status, resp.headers, await resp.read()
    assert (status, body) == (503, raw)
    assert headers["Retry-After"] == "30"
    assert headers["x-request-id"] == "req-1"
    assert tags(headers) == ("primary-model", "primary", "2")


async def test_no_response_at_all_is_a_502_saying_why(http: aiohttp.ClientSession) -> None:
    async with (
        running(Model("primary", dead_url(), attempts=2), Model("fallback", dead_url())) as run,
        http.post(run.url + CHAT_PATH, json=chat_body()) as resp,
    ):
        status, headers, payload = resp.status, resp.headers, await resp.json()
    assert status == 502
    assert tags(headers) == ("fallback-model", "fallback", "3")
    message = payload["error"]["message"]
    assert "all 3 attempts failed" in message
    assert "cannot connect" in message


async def test_only_timeouts_is_a_504(http: aiohttp.ClientSession) -> None:
    async with (
        FakeUpstream(default=faults.hang()) as primary,
        FakeUpstream(default=faults.hang()) as fallback,
        running(
            Model("primary", primary.url, timeout="200ms"),
            Model("fallback", fallback.url, timeout="200ms"),
        ) as run,
        http.post(run.url + CHAT_PATH, json=chat_body()) as resp,
    ):
        status, headers, payload = resp.status, resp.headers, await resp.json()
    assert status == 504
    assert tags(headers) == ("fallback-model", "fallback", "2")
    assert "all 2 attempts failed" in payload["error"]["message"]
    assert "no response after" in payload["error"]["message"]


async def test_the_response_body_is_never_rewritten(
    primary: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # Odd spacing, key order and non-ASCII: any re-encoding would show.
    raw = (
        '{"id": "chatcmpl-1",  "object": "chat.completion", "created": 1, '
        '"model": "what-the-upstream-says", "choices": [{"index": 0, "message": '
        '{"role": "assistant", "content": "Zürich \\u00e9"}, "finish_reason": "stop"}]}'
    ).encode()
    primary.script(faults.status(200, raw), faults.status(200, raw))
    async with running(Model("primary", primary.url)) as run:
        async with http.post(run.url + CHAT_PATH, json=chat_body()) as resp:
            assert await resp.read() == raw
        async with run.openai() as client:
            completion = await client.chat.completions.create(model=REQUESTED, messages=MESSAGES)
    assert completion.model == "what-the-upstream-says"
    assert completion.choices[0].message.content == "Zürich é"
    # What was sent upstream names the configured model, not the client's.
    assert primary.requests[0].model == "primary-model"


async def test_write_timeout_ends_a_stream_that_outlasts_it(primary: FakeUpstream) -> None:
    # write_timeout bounds the whole response once it has started: a stream still going
    # past it ends with an error the SDK raises (not a silent cut, not an endless wait).
    primary.script(faults.slow_chunks(0.2))  # under the 300 ms idle limit
    async with running(Model("primary", primary.url), listener={"write_timeout": 0.5}) as run:
        got: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            async with run.openai() as client:
                chunks = await client.chat.completions.create(
                    model=REQUESTED, messages=MESSAGES, stream=True
                )
                async for c in chunks:
                    if c.choices:
                        got.append(c.choices[0].delta.content or "")
    assert "exceeded write_timeout (0.5s)" in str(caught.value)
    assert "".join(got) != CANONICAL_TEXT
