"""Mid-stream recovery (issue 9), end to end.

The real proxy runs in-process in front of fake upstreams that always answer
CANONICAL_TEXT; the primary breaks after part of the answer, the fallback finishes it.
What is checked is what the user notices: the official SDK reads exactly the canonical
answer as one well-formed stream (one start, one finish, usage), or a clean error event.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from hydrallm.testing import CANONICAL_TEXT, FakeUpstream, Reset, faults, split_text
from hydrallm.testing.harness import ProxyHarness
from hydrallm.testing.prefill import REFUSAL, PrefillUpstream
from recoveryhelp import APIS, USER, Seen, read, warm_sdks

MESSAGES = USER
CUT = 5  # content chunks the client gets before the primary breaks
SEEN = "".join(split_text(CANONICAL_TEXT)[:CUT])


def config(*urls: str, api: str, retry: str = "", endpoint: str = "") -> str:
    kind = "anthropic" if api == "messages" else "openai"
    parts = [
        '[retry]\nmax_cycles = 1\ndefault_interval = "10ms"\n'
        'first_token_timeout = "5s"\nstream_idle_timeout = "300ms"\n' + retry,
        "[cooldown]\nenabled = false\n",
    ]
    for i, url in enumerate(urls):
        base = url if kind == "anthropic" else url + "/v1"
        parts.append(f'[endpoints.e{i}]\nurl = "{base}"\napi_key = "k{i}"\n{endpoint}\n')
    for i, _ in enumerate(urls):
        parts.append(f'[[models]]\nendpoint = "e{i}"\ntype = "{kind}"\nmodel = "m{i}"\n')
    return "\n".join(parts)


def assert_whole(got: Seen, api: str) -> None:
    assert got.text == CANONICAL_TEXT
    assert got.final_text == CANONICAL_TEXT
    assert (got.starts, got.finishes) == (1, 1)
    assert got.usage is not None
    if api == "responses":
        assert got.sequence == list(range(len(got.sequence)))


@asynccontextmanager
async def proxy(
    primary: FakeUpstream, fallback: FakeUpstream, api: str, **kw: str
) -> AsyncIterator[ProxyHarness]:
    async with ProxyHarness(config(primary.url, fallback.url, api=api, **kw)) as px:
        yield px


@pytest.fixture(autouse=True)
async def warm() -> None:
    await warm_sdks()


@pytest.fixture
async def primary() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(name="primary") as up:
        yield up


@pytest.fixture
async def fallback() -> AsyncIterator[PrefillUpstream]:
    async with PrefillUpstream(name="fallback") as up:
        yield up


BREAKS = {
    "reset": faults.reset_mid_stream(after_chunks=CUT),
    "stall": faults.stall(after_chunks=CUT, seconds=3.0),
    "error_event": faults.error_event_after(CUT),
}


# Where `prefill = "auto"` offers a prefill (issue 13): Anthropic Messages, and chat only
# on an endpoint that declares its continuation flag.
PREFILLED = {"messages": "", "chat": 'prefill_flag = "prefix"'}


@pytest.mark.parametrize("api", list(PREFILLED))
@pytest.mark.parametrize("brk", list(BREAKS))
async def test_a_broken_answer_is_finished_by_prefill_on_the_fallback(
    api: str, brk: str, primary: FakeUpstream, fallback: PrefillUpstream
) -> None:
    primary.script(BREAKS[brk])
    async with proxy(primary, fallback, api, endpoint=PREFILLED[api]) as px:
        began = time.monotonic()
        got = await read(px.url(), api)
        # A stall is given up on at the idle limit (300 ms), not after its 3 s.
        assert time.monotonic() - began < 2.0
        assert_whole(got, api)
        # The fallback was asked to go on from exactly what the client had seen (a RST
        # may drop the last chunks in flight: then from a little earlier).
        [prefill] = fallback.prefills
        assert prefill == SEEN.rstrip() or (brk == "reset" and SEEN.startswith(prefill))
        assert "recovered=prefill" in px.logs()
        assert "served_by=e1/m1" in px.logs().split("recovered=prefill")[0].splitlines()[-1]


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_without_a_continuation_flag_openai_answers_are_restarted_not_prefilled(
    api: str, primary: FakeUpstream, fallback: PrefillUpstream
) -> None:
    # Even a fallback that would continue is not offered a prefill: the OpenAI APIs
    # answer a trailing assistant turn anew, so `auto` restarts with a prefix check.
    primary.script(BREAKS["reset"])
    async with proxy(primary, fallback, api) as px:
        assert_whole(await read(px.url(), api), api)
        assert fallback.prefills == []
        assert "recovered=restart" in px.logs()


@pytest.mark.parametrize("api", list(PREFILLED))
async def test_refused_prefill_restarts_and_keeps_the_matching_answer(
    api: str, primary: FakeUpstream
) -> None:
    primary.script(faults.reset_mid_stream(after_chunks=CUT), faults.reset_mid_stream(CUT))
    async with (
        PrefillUpstream(refuse=True) as fallback,
        proxy(primary, fallback, api, endpoint=PREFILLED[api]) as px,
    ):
        got = await read(px.url(), api)
        assert_whole(got, api)
        assert len(fallback.prefills) == 1  # refused, then the original request again
        assert [r.fault.kind for r in fallback.requests] == ["status_400", "ok"]
        assert "recovered=restart" in px.logs()
        # The refusal is remembered: the next recovery does not offer a prefill again.
        assert_whole(await read(px.url(), api), api)
        assert len(fallback.prefills) == 1 and len(fallback.requests) == 3


@pytest.mark.parametrize("api", list(PREFILLED))
async def test_a_different_answer_after_a_refused_prefill_ends_with_a_clean_error(
    api: str, primary: FakeUpstream
) -> None:
    primary.script(faults.reset_mid_stream(after_chunks=CUT))
    other = "Something else entirely, " + CANONICAL_TEXT
    async with (
        PrefillUpstream(refuse=True, text=other) as fallback,
        proxy(primary, fallback, api, endpoint=PREFILLED[api]) as px,
    ):
        with pytest.raises((openai.APIError, anthropic.APIError)) as caught:
            await read(px.url(), api)
        message = str(caught.value)
        assert "incomplete" in message
        assert REFUSAL not in message and "prefill" not in message
        assert len(fallback.requests) == 2
        assert "action=gave_up" in px.logs()


@pytest.mark.parametrize("api", APIS)
async def test_a_cut_inside_a_tool_call_restarts_and_completes_the_call(
    api: str, primary: FakeUpstream
) -> None:
    call = faults.tool_call()
    primary.script(replace(call, reset=Reset.MID_STREAM, after_chunks=1))
    async with PrefillUpstream(default=call) as fallback, proxy(primary, fallback, api) as px:
        got = await read(px.url(), api)
        assert json.loads(got.tool_args) == {"city": "Paris"}
        assert (got.starts, got.finishes) == (1, 1)
        assert got.usage is not None
        assert fallback.prefills == []  # a tool call cannot be prefilled
        assert "recovered=restart" in px.logs()


@pytest.mark.parametrize("api", APIS)
async def test_midstream_error_setting_only_ends_the_stream_cleanly(
    api: str, primary: FakeUpstream, fallback: PrefillUpstream
) -> None:
    primary.script(faults.reset_mid_stream(after_chunks=CUT))
    async with proxy(primary, fallback, api, retry='midstream = "error"\n') as px:
        with pytest.raises((openai.APIError, anthropic.APIError)):
            await read(px.url(), api)
        assert fallback.requests == []


@pytest.mark.parametrize("api", ["chat", "messages"])
async def test_the_recovered_stream_is_one_well_formed_stream_on_the_wire(
    api: str, primary: FakeUpstream, fallback: PrefillUpstream
) -> None:
    primary.script(faults.reset_mid_stream(after_chunks=CUT))
    async with proxy(primary, fallback, api) as px, aiohttp.ClientSession() as session:
        path = "/v1/messages" if api == "messages" else "/v1/chat/completions"
        body: dict[str, Any] = {"model": "m", "messages": MESSAGES, "stream": True}
        if api == "messages":
            body["max_tokens"] = 100
        else:
            body["stream_options"] = {"include_usage": True}
        async with session.post(px.url() + path, json=body) as resp:
            raw = (await resp.read()).decode()
    if api == "messages":
        for name, count in [
            ("message_start", 1),
            ("content_block_start", 1),
            ("content_block_stop", 1),
            ("message_delta", 1),
            ("message_stop", 1),
        ]:
            assert raw.count(f"event: {name}\n") == count, name
    else:
        assert raw.count("data: [DONE]") == 1
        assert raw.count('"role"') == 1
        assert raw.count('"finish_reason":"stop"') == 1
        ids = {
            json.loads(line[6:])["id"] for line in raw.splitlines() if line.startswith("data: {")
        }
        assert len(ids) == 1


@pytest.mark.parametrize("api", APIS)
async def test_a_cut_after_the_last_word_is_finished_without_repeating_it(
    api: str, primary: FakeUpstream, fallback: PrefillUpstream
) -> None:
    # A stall, not a reset: a RST may drop the last chunks in flight.
    primary.script(faults.stall(after_chunks=len(split_text(CANONICAL_TEXT)), seconds=3.0))
    async with proxy(primary, fallback, api, endpoint=PREFILLED.get(api, "")) as px:
        assert_whole(await read(px.url(), api), api)
        # Responses is never prefilled: its whole answer was restarted and matched.
        assert fallback.prefills == ([] if api == "responses" else [CANONICAL_TEXT])


@pytest.mark.parametrize("flag", ["prefix", "continue_final_message"])
async def test_the_endpoints_prefix_flag_marks_the_prefill(
    flag: str, primary: FakeUpstream, fallback: PrefillUpstream
) -> None:
    primary.script(BREAKS["reset"])
    extra = f'prefill_flag = "{flag}"'
    async with proxy(primary, fallback, "chat", endpoint=extra) as px:
        assert_whole(await read(px.url(), "chat"), "chat")
    sent = fallback.requests[-1].json()
    last = sent["messages"][-1]
    assert last["role"] == "assistant"
    if flag == "prefix":
        assert last["prefix"] is True and "continue_final_message" not in sent
    else:
        assert sent["continue_final_message"] is True
        assert sent["add_generation_prompt"] is False and "prefix" not in last


async def test_recoveries_are_counted_and_shown_on_the_status_page(
    primary: FakeUpstream, fallback: PrefillUpstream
) -> None:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    primary.script(BREAKS["reset"])
    async with proxy(primary, fallback, "messages") as px:
        assert_whole(await read(px.url(), "messages"), "messages")
        async with aiohttp.ClientSession() as s:
            async with s.get(px.url() + "/_hydrallm/status.json") as r:
                doc = await r.json()
            async with s.get(px.url() + "/_hydrallm/metrics") as r:
                text = await r.text()
    # The model named is the one that broke; the result says how the answer was finished.
    assert [(e["event"], e["model"]) for e in doc["streams"]] == [("prefill", "e0/m0")]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    key = ("hydrallm_stream_recoveries_total", (("model", "e0/m0"), ("result", "prefill")))
    assert samples[key] == 1
    # The request itself was served by the fallback that finished it, and says how.
    [entry] = [r for r in doc["requests"] if r["path"].endswith("/messages")]
    assert (entry["served_by"], entry["recovered"]) == ("e1/m1", "prefill")
