"""The fake upstreams: the official SDKs parse their answers, and each fault does what it says."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from hydrallm.testing import (
    CANONICAL_TEXT,
    MIX_KINDS,
    Api,
    FailureMix,
    FakeUpstream,
    RawFaultServer,
    RawMode,
    faults,
    split_text,
)
from hydrallm.testing.answers import AnswerSpec, error_event, stream_answer

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
PATH_API = {CHAT: Api.CHAT, RESPONSES: Api.RESPONSES, MESSAGES: Api.MESSAGES}


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(chunk_words=3) as upstream:
        yield upstream


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def oai(fake: FakeUpstream) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0)


def claude(fake: FakeUpstream) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fake.url, api_key="x", max_retries=0)


def body_for(path: str, *, stream: bool, model: str = "m-1") -> dict[str, Any]:
    if path == RESPONSES:
        return {"model": model, "input": "hi", "stream": stream}
    body: dict[str, Any] = {"model": model, "stream": stream}
    body["messages"] = [{"role": "user", "content": "hi"}]
    if path == MESSAGES:
        body["max_tokens"] = 100
    return body


def events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE event in `raw`."""
    out = []
    for block in raw.decode().split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        if data:
            out.append((name, "\n".join(data)))
    return out


def stream_text(path: str, raw: bytes) -> str:
    text = []
    for name, data in events(raw):
        if data == "[DONE]":
            continue
        obj = json.loads(data)
        if path == CHAT and obj.get("choices"):
            text.append(obj["choices"][0]["delta"].get("content") or "")
        elif name == "response.output_text.delta":
            text.append(obj["delta"])
        elif name == "content_block_delta":
            text.append(obj["delta"]["text"])
    return "".join(text)


# --- the SDKs, pointed straight at the fake ------------------------------------------------


async def test_openai_chat_plain_and_streaming(fake: FakeUpstream) -> None:
    async with oai(fake) as client:
        reply = await client.chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == CANONICAL_TEXT
        assert reply.model == "gpt-x"
        assert reply.usage is not None and reply.usage.completion_tokens > 0

        stream = await client.chat.completions.create(
            model="gpt-y",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, usage = [], None
        async for chunk in stream:
            assert chunk.model == "gpt-y"
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
            usage = chunk.usage or usage
        assert "".join(parts) == CANONICAL_TEXT
        assert usage is not None and usage.total_tokens > 0
    assert [r.model for r in fake.requests] == ["gpt-x", "gpt-y"]
    assert fake.requests[1].stream and fake.requests[1].api is Api.CHAT


async def test_openai_responses_plain_and_streaming(fake: FakeUpstream) -> None:
    async with oai(fake) as client:
        reply = await client.responses.create(model="r-1", input="hi")
        assert reply.output_text == CANONICAL_TEXT
        assert reply.model == "r-1" and reply.status == "completed"

        stream = await client.responses.create(model="r-2", input="hi", stream=True)
        deltas, kinds, seqs = [], [], []
        async for event in stream:
            kinds.append(event.type)
            seqs.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type == "response.completed":
                assert event.response.output_text == CANONICAL_TEXT
        assert "".join(deltas) == CANONICAL_TEXT
        assert seqs == list(range(len(seqs)))
        assert kinds[:4] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ]
        assert kinds[-4:] == [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]


async def test_anthropic_plain_streaming_and_count_tokens(fake: FakeUpstream) -> None:
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hi"}]
    async with claude(fake) as client:
        reply = await client.messages.create(model="c-1", max_tokens=100, messages=messages)
        assert reply.content[0].type == "text" and reply.content[0].text == CANONICAL_TEXT
        assert reply.model == "c-1" and reply.stop_reason == "end_turn"

        async with client.messages.stream(model="c-2", max_tokens=100, messages=messages) as s:
            streamed = "".join([t async for t in s.text_stream])
            final = await s.get_final_message()
        assert streamed == CANONICAL_TEXT
        assert final.content[0].type == "text" and final.content[0].text == CANONICAL_TEXT
        assert final.usage.output_tokens == len(split_text(CANONICAL_TEXT))

        count = await client.messages.count_tokens(model="c-3", messages=messages)
        assert count.input_tokens > 0
    assert fake.requests[2].path == "/v1/messages/count_tokens"


async def test_model_lists(fake: FakeUpstream) -> None:
    async with oai(fake) as client:
        assert [m.id async for m in client.models.list()] == ["fake-model"]
    async with claude(fake) as client:
        assert [m.id async for m in client.models.list()] == ["fake-model"]


async def test_tool_calls(fake: FakeUpstream) -> None:
    fake.script(*[faults.tool_call("lookup", {"q": "x y"})] * 4)
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    async with oai(fake) as client:
        reply = await client.chat.completions.create(model="m", messages=[], tools=tools)
        call = reply.choices[0].message.tool_calls
        assert call is not None and call[0].type == "function"
        assert call[0].function.name == "lookup"
        assert json.loads(call[0].function.arguments) == {"q": "x y"}

        stream = await client.chat.completions.create(
            model="m", messages=[], tools=tools, stream=True
        )
        args, finish = "", None
        async for chunk in stream:
            choice = chunk.choices[0]
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.arguments:
                    args += delta.function.arguments
            finish = choice.finish_reason or finish
        assert json.loads(args) == {"q": "x y"} and finish == "tool_calls"

        response = await client.responses.create(model="m", input="hi", stream=True)
        async for event in response:
            if event.type == "response.completed":
                item = event.response.output[0]
                assert item.type == "function_call" and json.loads(item.arguments) == {"q": "x y"}
    async with (
        claude(fake) as anthropic_client,
        anthropic_client.messages.stream(model="m", max_tokens=9, messages=[]) as s,
    ):
        final = await s.get_final_message()
    block = final.content[0]
    assert block.type == "tool_use" and block.input == {"q": "x y"}
    assert final.stop_reason == "tool_use"


# --- faults, seen by a plain HTTP client ------------------------------------------------


async def test_status_faults_have_provider_bodies(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.script(
        faults.rate_limited(retry_after=1),
        faults.overloaded(),
        faults.overloaded(),
        faults.status(400, body={"custom": True}, headers={"X-Why": "test"}),
    )
    async with http.post(fake.url + CHAT, json=body_for(CHAT, stream=False)) as r:
        assert r.status == 429 and r.headers["Retry-After"] == "1"
        assert (await r.json())["error"]["code"] == "rate_limit_exceeded"
    async with http.post(fake.url + MESSAGES, json=body_for(MESSAGES, stream=True)) as r:
        assert r.status == 529
        assert await r.json() == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "fake upstream error 529"},
        }
    async with http.post(fake.url + RESPONSES, json=body_for(RESPONSES, stream=True)) as r:
        assert r.status == 503 and "error" in await r.json()
    async with http.post(fake.url + CHAT, json={}) as r:
        assert r.status == 400 and r.headers["X-Why"] == "test"
        assert await r.json() == {"custom": True}
    assert len(fake.requests) == 4 and fake.pending == 0


@pytest.mark.parametrize("path", [CHAT, RESPONSES, MESSAGES])
async def test_reset_faults(path: str, fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.script(faults.reset_before_headers(), faults.reset_after_headers())
    fake.script(faults.reset_mid_stream(after_chunks=2))
    with pytest.raises(aiohttp.ClientError):
        await http.post(fake.url + path, json=body_for(path, stream=True))

    async with http.post(fake.url + path, json=body_for(path, stream=True)) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        with pytest.raises(aiohttp.ClientError):
            await r.read()

    received = b""
    async with http.post(fake.url + path, json=body_for(path, stream=True)) as r:
        with pytest.raises(aiohttp.ClientError):
            async for line in r.content:
                received += line
    head = len(stream_answer(PATH_API[path], AnswerSpec(model="m-1", answer_id="x")).head)
    assert len(events(received)) == head + 2
    assert stream_text(path, received) == "".join(split_text(CANONICAL_TEXT, 3)[:2])
    # Every request is recorded, aborted or not; none counts as a client abort.
    assert len(fake.requests) == 3 and fake.aborted == 0


async def test_reset_mid_body_of_plain_answer(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.script(faults.reset_mid_stream(after_chunks=1))
    async with http.post(fake.url + CHAT, json=body_for(CHAT, stream=False)) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_stall_and_slow_first_token(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.script(faults.stall(after_chunks=1, seconds=0.2), faults.slow_first_token(0.2))
    body = body_for(MESSAGES, stream=True)
    async with http.post(fake.url + MESSAGES, json=body) as r:
        stamps = []
        async for line in r.content:
            if line.startswith(b"event: content_block_delta"):
                stamps.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert gaps[0] >= 0.19 and max(gaps[1:]) < 0.1

    start = time.monotonic()
    async with http.post(fake.url + MESSAGES, json=body) as r:
        headers_at = time.monotonic() - start
        first = await r.content.readline()
        first_at = time.monotonic() - start
        rest = await r.read()
    assert headers_at < 0.1 and first_at >= 0.19
    assert stream_text(MESSAGES, first + rest) == CANONICAL_TEXT


async def test_delay_slow_chunks_and_text(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.script(faults.ok(delay=0.15, text="short one"), faults.slow_chunks(0.01))
    start = time.monotonic()
    async with http.post(fake.url + CHAT, json=body_for(CHAT, stream=False)) as r:
        assert time.monotonic() - start >= 0.14
        assert (await r.json())["choices"][0]["message"]["content"] == "short one"
    start = time.monotonic()
    async with http.post(fake.url + CHAT, json=body_for(CHAT, stream=True)) as r:
        raw = await r.read()
    chunks = len(split_text(CANONICAL_TEXT, 3))
    assert time.monotonic() - start >= 0.01 * (chunks - 1) * 0.9
    assert stream_text(CHAT, raw) == CANONICAL_TEXT


async def test_hang_until_client_goes_away(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.script(faults.hang())
    with pytest.raises(asyncio.TimeoutError):
        await http.post(
            fake.url + CHAT,
            json=body_for(CHAT, stream=False),
            timeout=aiohttp.ClientTimeout(total=0.1),
        )
    await fake.wait_aborted(1, timeout=0.3)
    assert fake.aborted == 1
    await fake.wait_idle(timeout=0.3)
    assert fake.open_connections == 0


async def test_client_leaving_mid_stream_is_counted(fake: FakeUpstream) -> None:
    fake.script(faults.slow_chunks(0.05))
    async with aiohttp.ClientSession() as session:
        r = await session.post(fake.url + CHAT, json=body_for(CHAT, stream=True))
        await r.content.readline()
        r.close()
    await fake.wait_aborted(1, timeout=0.3)


@pytest.mark.parametrize("path", [CHAT, RESPONSES, MESSAGES])
async def test_error_event_first(
    path: str, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.script(faults.error_event_first("overloaded_error"))
    async with http.post(fake.url + path, json=body_for(path, stream=True)) as r:
        assert r.status == 200
        got = events(await r.read())
    assert len(got) == 1
    name, data = got[0]
    obj = json.loads(data)
    if path == MESSAGES:
        assert name == "error" and obj["error"]["type"] == "overloaded_error"
    elif path == RESPONSES:
        assert name == "response.failed" and obj["response"]["error"]["code"] == "overloaded_error"
    else:
        assert name is None and obj["error"]["type"] == "overloaded_error"


async def test_error_event_first_breaks_the_sdks(fake: FakeUpstream) -> None:
    fake.script(faults.error_event_first(), faults.error_event_first())
    async with oai(fake) as client:
        stream = await client.chat.completions.create(model="m", messages=[], stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    async with claude(fake) as c:
        with pytest.raises(anthropic.APIStatusError):
            async with c.messages.stream(model="m", max_tokens=5, messages=[]) as s:
                await s.get_final_message()


async def test_error_event_after(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.script(faults.error_event_after(2, "api_error"), faults.error_event_after(1))
    async with http.post(fake.url + MESSAGES, json=body_for(MESSAGES, stream=True)) as r:
        got = events(await r.read())
    assert [n for n, _ in got] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "error",
    ]
    assert json.loads(got[-1][1])["error"]["type"] == "api_error"
    async with http.post(fake.url + RESPONSES, json=body_for(RESPONSES, stream=True)) as r:
        got = events(await r.read())
    seqs = [json.loads(d)["sequence_number"] for _, d in got]
    assert got[-1][0] == "response.failed" and seqs == list(range(len(got)))


async def test_no_done(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.script(faults.no_done(), faults.no_done())
    async with http.post(fake.url + CHAT, json=body_for(CHAT, stream=True)) as r:
        raw = await r.read()
    assert stream_text(CHAT, raw) == CANONICAL_TEXT and b"[DONE]" not in raw
    async with http.post(fake.url + MESSAGES, json=body_for(MESSAGES, stream=True)) as r:
        raw = await r.read()
    assert events(raw)[-1][0] == "message_delta"


async def test_gzip(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    fake.script(faults.gzip(), faults.gzip())
    async with http.post(fake.url + CHAT, json=body_for(CHAT, stream=False)) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert (await r.json())["choices"][0]["message"]["content"] == CANONICAL_TEXT
    async with http.post(fake.url + MESSAGES, json=body_for(MESSAGES, stream=True)) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert stream_text(MESSAGES, await r.read()) == CANONICAL_TEXT


async def test_requests_are_recorded(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    before = time.monotonic()
    fake.script(faults.reset_before_headers())
    with pytest.raises(aiohttp.ClientError):
        await http.post(
            fake.url + CHAT + "?x=1", data=b'{"model":"q"}', headers={"Authorization": "Bearer k"}
        )
    (rec,) = fake.requests
    assert (rec.method, rec.path, rec.query_string) == ("POST", CHAT, "x=1")
    assert rec.headers["authorization"] == "Bearer k"
    assert rec.body == b'{"model":"q"}' and rec.json() == {"model": "q"} and rec.model == "q"
    assert rec.received_at >= before and rec.fault.kind == "reset_before_headers"
    async with http.get(fake.url + "/nowhere") as r:
        assert r.status == 404


# --- the failure mix ----------------------------------------------------------------------


def test_failure_mix_is_reproducible() -> None:
    mix = FailureMix(rate=0.5)
    rng_a, rng_b = random.Random(42), random.Random(42)
    a = [mix.choose(rng_a).kind for _ in range(200)]
    b = [mix.choose(rng_b).kind for _ in range(200)]
    assert a == b
    assert 60 < a.count("ok") < 140
    assert {"status_429", "overloaded", "reset_before_headers"} <= set(a)
    assert {"error_event_first", "slow_first_token"} <= set(a)
    assert all(FailureMix(rate=0).choose(rng_a).kind == "ok" for _ in range(20))
    only = FailureMix(rate=1, weights={"rate_limit": 1.0}, retry_after=3)
    fault = only.choose(rng_a)
    assert fault.status_code == 429 and dict(fault.headers) == {"Retry-After": "3"}
    for bad in (
        {"rate": 1.5},
        {"weights": {"nope": 1.0}},
        {"weights": dict.fromkeys(MIX_KINDS, 0.0)},
    ):
        with pytest.raises(ValueError):
            FailureMix(**bad)


async def test_fake_uses_mix_after_script(http: aiohttp.ClientSession) -> None:
    mix = FailureMix(rate=1.0, weights={"overloaded": 1.0})
    async with FakeUpstream(failure_mix=mix, rng_seed=1) as fake:
        fake.script(faults.ok())
        async with http.post(fake.url + MESSAGES, json=body_for(MESSAGES, stream=False)) as r:
            assert r.status == 200
        async with http.post(fake.url + MESSAGES, json=body_for(MESSAGES, stream=False)) as r:
            assert r.status == 529
    kinds = []
    for _ in range(2):
        async with FakeUpstream(failure_mix=FailureMix(rate=0.5), rng_seed=9) as fake:
            for _ in range(8):
                try:
                    async with http.post(fake.url + CHAT, json=body_for(CHAT, stream=False)):
                        pass
                except aiohttp.ClientError:
                    pass
            kinds.append([r.fault.kind for r in fake.requests])
    assert kinds[0] == kinds[1]


def test_answers_are_pure_and_consistent() -> None:
    assert "".join(split_text(CANONICAL_TEXT, 4)) == CANONICAL_TEXT
    assert split_text("", 2) == [] and split_text("  a b", 1) == ["  a ", "b"]
    spec = AnswerSpec(model="m", answer_id="1", include_usage=True)
    chat = stream_answer(Api.CHAT, spec)
    assert chat.terminal == (b"data: [DONE]\n\n",)
    assert b'"usage":{' in chat.tail[-1]
    assert error_event(Api.MESSAGES).startswith(b"event: error\n")


# --- the raw socket server ----------------------------------------------------------------


async def _post(url: str, data: Any = b"{}", timeout: float = 0.3) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, timeout=aiohttp.ClientTimeout(total=timeout)) as r,
    ):
        return await r.read()


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        (RawMode.GARBAGE_STATUS, aiohttp.ClientResponseError),
        (RawMode.OVERSIZED_HEADERS, aiohttp.ClientResponseError),
        (RawMode.RESET_BEFORE_STATUS, aiohttp.ClientOSError),
        (RawMode.SHORT_BODY, aiohttp.ClientPayloadError),
    ],
)
async def test_raw_server_broken_answers(mode: RawMode, error: type[Exception]) -> None:
    async with RawFaultServer(mode) as srv:
        with pytest.raises(error):
            await _post(srv.url + CHAT)
        assert srv.connections == 1 and srv.requests == 1
        assert srv.heads[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")


async def test_raw_server_long_body_and_early_answer() -> None:
    async with RawFaultServer("long_body") as srv:
        # aiohttp parses the surplus as the next status line, and refuses it.
        with pytest.raises(aiohttp.ClientResponseError, match="status line"):
            await _post(srv.url)
    async with RawFaultServer("answer_before_body") as srv:
        assert await _post(srv.url, data=io.BytesIO(b"x" * 100_000)) == b'{"early":true}'


@pytest.mark.parametrize("mode", ["never_read_body", "accept_never_answer"])
async def test_raw_server_silent_modes(mode: str) -> None:
    async with RawFaultServer(mode) as srv:
        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await _post(srv.url, data=io.BytesIO(b"x" * 4_000_000), timeout=0.15)
        assert time.monotonic() - start < 0.3
        assert srv.connections == 1
        assert srv.requests == (1 if mode == "never_read_body" else 0)


async def test_close_ends_hanging_requests_at_once(http: aiohttp.ClientSession) -> None:
    fake = FakeUpstream()
    await fake.start()
    fake.script(faults.hang())
    request = asyncio.ensure_future(http.post(fake.url + CHAT, json={}))
    await asyncio.sleep(0.05)
    start = time.monotonic()
    await fake.close()
    with pytest.raises(aiohttp.ClientError):
        await request
    assert time.monotonic() - start < 0.3 and fake.aborted == 0


# --- prefill behaviour, samples, fresh ids (issue 13) ---------------------------------

PREFIX = "".join(split_text(CANONICAL_TEXT)[:4]).rstrip()


def prefilled(path: str, model: str, **extra: Any) -> dict[str, Any]:
    """A non-streaming request whose last turn is an assistant prefill."""
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": PREFIX}]
    if path == RESPONSES:
        return {"model": model, "input": turns, **extra}
    body: dict[str, Any] = {"model": model, "messages": turns, **extra}
    if path == MESSAGES:
        body["max_tokens"] = 100
    return body


def answer_text(path: str, doc: dict[str, Any]) -> str:
    if path == CHAT:
        return str(doc["choices"][0]["message"]["content"])
    if path == RESPONSES:
        return str(doc["output"][0]["content"][0]["text"])
    return "".join(b.get("text", "") for b in doc["content"])


@pytest.mark.parametrize(
    ("path", "model", "extra", "expect"),
    [
        # Claude up to 4.5 continues (the reply excludes the prefix) ...
        (MESSAGES, "claude-sonnet-4-5", {}, "continue"),
        # ... but not with thinking on; Claude 4.6+ refuses any prefill.
        (MESSAGES, "claude-sonnet-4-5", {"thinking": {"type": "adaptive"}}, "thinking"),
        (MESSAGES, "claude-opus-4-6", {}, "refuse"),
        (MESSAGES, "claude-sonnet-5", {}, "refuse"),
        # OpenAI answers anew; a compatible server continues when the request says so.
        (CHAT, "gpt-5", {}, "ignore"),
        (RESPONSES, "gpt-5", {}, "ignore"),
    ],
)
async def test_each_fake_model_treats_a_prefill_as_its_real_provider_does(
    fake: FakeUpstream,
    http: aiohttp.ClientSession,
    path: str,
    model: str,
    extra: dict[str, Any],
    expect: str,
) -> None:
    async with http.post(fake.url + path, json=prefilled(path, model, **extra)) as resp:
        doc = await resp.json()
        status, retry = resp.status, resp.headers.get("x-should-retry")
    assert fake.prefills == [PREFIX]
    if expect in ("refuse", "thinking"):
        assert (status, retry) == (400, "false")
        message = doc["error"]["message"]
        assert doc["error"]["type"] == "invalid_request_error"
        if expect == "refuse":
            assert "does not support assistant message prefill" in message
        else:
            assert "When `thinking` is enabled, a final `assistant` message" in message
        return
    assert status == 200
    text = answer_text(path, doc)
    assert text == (CANONICAL_TEXT[len(PREFIX) :] if expect == "continue" else CANONICAL_TEXT)


@pytest.mark.parametrize(
    "flag",
    [{"continue_final_message": True, "add_generation_prompt": False}, {"prefix": True}],
)
async def test_an_openai_compatible_fake_continues_only_when_the_request_carries_the_flag(
    fake: FakeUpstream, http: aiohttp.ClientSession, flag: dict[str, Any]
) -> None:
    body = prefilled(CHAT, "served-model")
    if "prefix" in flag:
        body["messages"][-1].update(flag)
    else:
        body.update(flag)
    async with http.post(fake.url + CHAT, json=body) as resp:
        assert answer_text(CHAT, await resp.json()) == CANONICAL_TEXT[len(PREFIX) :]


@pytest.mark.parametrize("behaviour", ["continue", "ignore", "refuse", "refuse_with_thinking"])
async def test_a_chosen_prefill_behaviour_applies_to_the_named_model_only(
    http: aiohttp.ClientSession, behaviour: Any
) -> None:
    async with FakeUpstream(prefill={"special": behaviour}) as up:
        body = prefilled(MESSAGES, "special", thinking={"type": "enabled", "budget_tokens": 1024})
        async with http.post(up.url + MESSAGES, json=body) as resp:
            special = resp.status, await resp.json()
        async with http.post(up.url + CHAT, json=prefilled(CHAT, "other")) as resp:
            other = await resp.json()
    if behaviour in ("refuse", "refuse_with_thinking"):
        assert special[0] == 400
    else:
        expected = CANONICAL_TEXT[len(PREFIX) :] if behaviour == "continue" else CANONICAL_TEXT
        assert answer_text(MESSAGES, special[1]) == expected
    assert answer_text(CHAT, other) == CANONICAL_TEXT  # the chat default: answers anew


async def test_varied_answers_share_their_opening_and_differ_between_models_and_samples(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeUpstream(vary=True) as up:
        texts = []
        for model in ("a", "a", "b"):
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(up.url + CHAT, json=body) as resp:
                texts.append(answer_text(CHAT, await resp.json()))
    assert len(set(texts)) == 3
    opening = "".join(split_text(CANONICAL_TEXT)[:10])
    assert all(t.startswith(opening) for t in texts)


async def test_every_answer_names_its_tool_call_and_signs_its_thinking_anew(
    fake: FakeUpstream,
) -> None:
    fake.script(faults.tool_call(), faults.tool_call())
    async with oai(fake) as client:
        ids = []
        for _ in range(2):
            done = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            calls = done.choices[0].message.tool_calls or []
            ids.append(calls[0].id)
    assert len(set(ids)) == 2
    fake.script(faults.thinking(), faults.thinking())
    async with claude(fake) as client:
        signatures = []
        for _ in range(2):
            async with client.messages.stream(
                model="m",
                max_tokens=100,
                messages=[{"role": "user", "content": "hi"}],
                thinking={"type": "enabled", "budget_tokens": 1024},
            ) as stream:
                final = await stream.get_final_message()
            thought, said = final.content
            assert thought.type == "thinking" and said.type == "text"
            assert said.text == CANONICAL_TEXT and thought.thinking.startswith("Let me think")
            signatures.append(thought.signature)
    assert len(set(signatures)) == 2
