"""Mid-stream recovery is truthful on providers that behave like the real ones (issue 13).

The primary breaks in the middle of an answer (cut, stall, error event; inside text, a
tool call or thinking); the fallback is a fake whose model treats an assistant prefill as
a real provider does (continues it, ignores it and answers anew, refuses it, refuses it
when thinking is on) and whose answers are samples of their own (same opening, another
middle, new tool call ids and thinking signatures).  The official SDKs read the stream.
The client must get one whole answer exactly once, or a clean error that says the answer
is incomplete: never two answers, never a truncation that looks like success.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hydrallm.testing import CANONICAL_TEXT, FakeUpstream, Fault, Reset, faults, split_text
from hydrallm.testing.harness import ProxyHarness
from hydrallm.testing.upstream import sample_text
from recoveryhelp import APIS, USER, ask, assert_clean_error, warm_sdks

BEHAVIOURS = ["continue", "ignore", "refuse", "refuse_with_thinking"]
THINK = "Let me think about hydras and proxies step by step."
CUT = 5  # content chunks before the break: inside the text, or inside the thinking
BREAKS = {
    "cut": lambda n: Fault(kind="cut", reset=Reset.MID_STREAM, after_chunks=n),
    "stall": lambda n: faults.stall(after_chunks=n, seconds=3.0),
    "error_event": lambda n: faults.error_event_after(n),
}
CONTENT = {"text": faults.ok(), "tool": faults.tool_call(), "thinking": faults.thinking(THINK)}


def config(primary: str, fallback: str, api: str, retry: str = "", endpoint: str = "") -> str:
    kind = "anthropic" if api == "messages" else "openai"
    suffix = "" if kind == "anthropic" else "/v1"
    # Responses upstreams are declared (DECISIONS "Families": an openai model is called
    # with chat completions unless `api = "responses"`, and a Responses client translated).
    declared = 'api = "responses"\n' if api == "responses" else ""
    return (
        '[retry]\nmax_cycles = 1\ndefault_interval = "10ms"\nfirst_token_timeout = "5s"\n'
        f'stream_idle_timeout = "400ms"\n{retry}\n[cooldown]\nenabled = false\n'
        f'[endpoints.e0]\nurl = "{primary}{suffix}"\napi_key = "k0"\n'
        f'[endpoints.e1]\nurl = "{fallback}{suffix}"\napi_key = "k1"\n{endpoint}\n'
        f'[[models]]\nendpoint = "e0"\ntype = "{kind}"\nmodel = "m0"\n{declared}'
        f'[[models]]\nendpoint = "e1"\ntype = "{kind}"\nmodel = "m1"\n{declared}'
    )


@pytest.fixture(autouse=True)
async def warm() -> None:
    await warm_sdks()


@asynccontextmanager
async def setup(
    api: str, behaviour: Any, content: str, **fallback: Any
) -> AsyncIterator[tuple[FakeUpstream, FakeUpstream, ProxyHarness]]:
    fallback.setdefault("vary", True)
    async with (
        FakeUpstream(name="primary") as primary,
        FakeUpstream(
            name="fallback", prefill=behaviour, default=CONTENT[content], **fallback
        ) as fb,
        ProxyHarness(config(primary.url, fb.url, api)) as px,
    ):
        yield primary, fb, px


@pytest.mark.parametrize("content", list(CONTENT))
@pytest.mark.parametrize("brk", list(BREAKS))
@pytest.mark.parametrize("behaviour", BEHAVIOURS)
@pytest.mark.parametrize("api", APIS)
async def test_a_broken_answer_is_finished_once_whatever_the_fallback_does_with_a_prefill(
    api: str, behaviour: str, brk: str, content: str
) -> None:
    after = 1 if content == "tool" else CUT
    async with setup(api, behaviour, content) as (primary, fallback, px):
        primary.script(
            replace(
                BREAKS[brk](after),
                tool_call=CONTENT[content].tool_call,
                thinking=CONTENT[content].thinking,
            )
        )
        got = await ask(px.url(), api, thinking=content == "thinking")
        logs = px.logs()
    assert got.error is None, got.error
    assert (got.starts, got.finishes) == (1, 1)
    sample = len(fallback.requests)  # the fallback's answer that finished the stream
    if content == "tool":
        assert json.loads(got.tool_args) == {"city": "Paris"}
        # The call keeps the name the client first saw, though the fallback named it anew.
        first = "toolu_call_primary0001" if api == "messages" else "call_primary0001"
        assert got.call_ids == [first] and got.final_call_ids == [first]
        assert got.text == ""
    else:
        assert got.text == got.final_text == sample_text(CANONICAL_TEXT, "m1", sample)
    if content == "thinking":
        assert got.thinking == sample_text(THINK, "m1", sample)
    # A prefill is offered only where the provider continues one: Anthropic Messages
    # without thinking; never OpenAI chat without a flag, never Responses.
    prefilled = api == "messages" and content == "text"
    assert len(fallback.prefills) == (1 if prefilled else 0)
    continued = prefilled and behaviour in ("continue", "refuse_with_thinking")
    assert f"recovered={'prefill' if continued else 'restart'}" in logs
    if prefilled and behaviour == "ignore":
        assert "ignored the prefill" in logs


@pytest.mark.parametrize("brk", list(BREAKS))
@pytest.mark.parametrize("behaviour", ["ignore", "refuse"])
@pytest.mark.parametrize("api", APIS)
async def test_a_fallback_that_answers_differently_gives_a_clean_error_not_two_answers(
    api: str, behaviour: str, brk: str
) -> None:
    other = "Something else entirely. " + CANONICAL_TEXT
    async with setup(api, behaviour, "text", text=other, vary=False) as (primary, fallback, px):
        primary.script(BREAKS[brk](CUT))
        got = await ask(px.url(), api)
        logs = px.logs()
    assert_clean_error(got, CANONICAL_TEXT)
    assert "Something" not in got.text
    assert fallback.requests  # it was asked; its other answer was not glued on
    assert "action=gave_up" in logs


@pytest.mark.parametrize("api", ["messages", "chat"])
async def test_an_ignored_prefill_is_never_appended_and_is_remembered(api: str) -> None:
    # The cut comes after the point where two samples part: the fallback restates the
    # opening (it ignored the prefill), then says something else.  Appending it would
    # repeat the opening; the prefix check refuses it: a clean error.
    late = len(split_text(CANONICAL_TEXT)) - 3
    endpoint = 'prefill_flag = "prefix"' if api == "chat" else ""
    async with (
        FakeUpstream(name="primary") as primary,
        FakeUpstream(name="fallback", prefill="ignore", vary=True) as fallback,
        ProxyHarness(config(primary.url, fallback.url, api, endpoint=endpoint)) as px,
    ):
        primary.script(faults.reset_mid_stream(late), faults.reset_mid_stream(CUT))
        got = await ask(px.url(), api)
        assert_clean_error(got, CANONICAL_TEXT)
        assert CANONICAL_TEXT[:20] not in got.text[20:]
        assert "ignored the prefill" in px.logs()
        # Remembered: the next break is restarted without offering a prefill.
        again = await ask(px.url(), api)
        assert again.error is None and again.text == sample_text(CANONICAL_TEXT, "m1", 2)
    assert len(fallback.prefills) == 1


async def test_prefill_yes_on_responses_is_checked_before_a_byte_is_relayed() -> None:
    # The Responses API takes a trailing assistant turn as history and answers anew.
    async with (
        FakeUpstream(name="primary") as primary,
        FakeUpstream(name="fallback") as fallback,
        ProxyHarness(
            config(primary.url, fallback.url, "responses", endpoint='prefill = "yes"')
        ) as px,
    ):
        primary.script(faults.reset_mid_stream(CUT))
        got = await ask(px.url(), "responses")
        assert got.error is None and got.text == got.final_text == CANONICAL_TEXT
        assert len(fallback.prefills) == 1
        assert "recovered=restart" in px.logs()


async def test_a_thinking_request_is_not_offered_a_prefill_on_anthropic() -> None:
    # Claude refuses a final assistant turn that does not start with a thinking block
    # whenever thinking is enabled, even when this answer happened to have no thinking.
    async with setup("messages", "refuse_with_thinking", "text", vary=False) as (p, fb, px):
        p.script(faults.reset_mid_stream(CUT))
        got = await ask(px.url(), "messages", thinking=True)
    assert got.error is None and got.text == CANONICAL_TEXT
    assert fb.prefills == [] and [r.fault.kind for r in fb.requests] == ["ok"]


@pytest.mark.parametrize("api", APIS)
async def test_past_midstream_max_bytes_a_break_ends_the_stream_cleanly(api: str) -> None:
    async with (
        FakeUpstream(name="primary") as primary,
        FakeUpstream(name="fallback") as fallback,
        ProxyHarness(
            config(primary.url, fallback.url, api, retry='midstream_max_bytes = "1KiB"')
        ) as px,
    ):
        primary.script(faults.reset_mid_stream(30))
        got = await ask(px.url(), api)
    assert_clean_error(got, CANONICAL_TEXT)
    assert fallback.requests == []  # nothing was kept to recover with


@pytest.mark.parametrize("midstream", ["continue", "error"])
async def test_an_endless_line_after_commit_ends_the_stream_with_an_error_event(
    midstream: str,
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        start = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        first = {
            **start,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}],
        }
        await response.write(f"data: {json.dumps(first)}\n\n".encode())
        await response.write(b'data: {"choices":[{"index":0,"delta":{"content":"')
        for _ in range(24):  # 1.5 MiB, no line end
            await response.write(b"a" * 65536)
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", endless)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with (
            FakeUpstream(name="fallback") as fallback,
            ProxyHarness(
                config(url, fallback.url, "chat", retry=f'midstream = "{midstream}"')
            ) as px,
            aiohttp.ClientSession() as http,
        ):
            body = {"model": "m", "messages": USER, "stream": True}
            async with http.post(px.url() + "/v1/chat/completions", json=body) as resp:
                raw = await asyncio.wait_for(resp.read(), 10)
            tail = raw[-2000:].decode(errors="replace")
            assert '"error"' in tail and "longer than 1024 KiB" in tail
            assert len(raw) < 1200 * 1024  # not the whole endless line
            assert fallback.requests == []  # a broken frame is not recovered
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_a_probe_of_the_base_url_is_answered_locally(method: str) -> None:
    async with (
        FakeUpstream() as up,
        ProxyHarness(config(up.url, up.url, "messages")) as px,
        aiohttp.ClientSession() as http,
    ):
        async with http.request(method, px.url() + "/") as resp:
            assert resp.status == 200
        assert up.requests == []
