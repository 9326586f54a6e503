"""Tokens and cost: the usage each API reports, in JSON bodies and in streams (as the
providers document them), read by the extractors and, end to end, by the journal."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web

from hydrallm.config import Price
from hydrallm.formats.eventstream import encode_message
from hydrallm.observe.journal_query import open_readonly, requests
from hydrallm.observe.prices import PriceBook
from hydrallm.observe.usage import Usage, UsageMeter, from_body
from hydrallm.testing.bedrock import FakeBedrock
from hydrallm.testing.harness import ProxyHarness
from hydrallm.testing.service import WebFake
from test_bedrock import KEY, SECRET, aws_env  # noqa: F401 (an autouse fixture)
from test_bedrock import boto_client as bedrock_client

MSGS = [{"role": "user", "content": "hi"}]

# --- bodies in the providers' documented shapes ---------------------------------------

CHAT_JSON = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4.1-2025-04-14",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
}


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"{head}data: {body}\n\n".encode()


def chat_stream() -> list[bytes]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    out = []
    for delta, finish in (({"role": "assistant", "content": ""}, None), ({"content": "Hi"}, None)):
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        out.append(sse({**base, "choices": [choice], "usage": None}))
    out.append(sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    usage = {
        "prompt_tokens": 50,
        "completion_tokens": 7,
        "total_tokens": 57,
        "prompt_tokens_details": {"cached_tokens": 20},
    }
    out.append(sse({**base, "choices": [], "usage": usage}))
    out.append(sse("[DONE]"))
    return out


def responses_stream() -> list[bytes]:
    resp = {"id": "resp_1", "object": "response", "model": "gpt-5-mini", "status": "in_progress"}
    done = {
        **resp,
        "status": "completed",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi", "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": 400,
            "input_tokens_details": {"cached_tokens": 100},
            "output_tokens": 30,
            "output_tokens_details": {"reasoning_tokens": 10},
            "total_tokens": 430,
        },
    }
    return [
        sse({"type": "response.created", "sequence_number": 0, "response": {**resp, "usage": None}}, "response.created"),
        sse({"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hi"}, "response.output_text.delta"),
        sse({"type": "response.completed", "sequence_number": 2, "response": done}, "response.completed"),
    ]  # fmt: skip


def messages_stream() -> list[bytes]:
    start = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "output_tokens": 1,
        },
    }
    return [
        sse({"type": "message_start", "message": start}, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, "content_block_start"),
        sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}, "content_block_delta"),
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 15}}, "message_delta"),
        sse({"type": "message_stop"}, "message_stop"),
    ]  # fmt: skip


def frame(event_type: str, payload: dict[str, Any]) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json"}
    return encode_message({**headers, ":message-type": "event"}, json.dumps(payload).encode())


def feed_in_pieces(chunks: list[bytes], size: int, *, bedrock: bool = False) -> Usage | None:
    """Feed the stream cut every `size` bytes, as TCP may deliver it."""
    meter = UsageMeter(bedrock=bedrock)
    data = b"".join(chunks)
    for i in range(0, len(data), size):
        meter.feed(data[i : i + size])
    return meter.usage


# --- pure ------------------------------------------------------------------------------


def test_chat_json_counts_uncached_input_apart_from_cache_reads() -> None:
    assert from_body(json.dumps(CHAT_JSON).encode()) == Usage(200, 300, 1000, None)


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_streams_of_each_api_however_the_bytes_are_cut(size: int) -> None:
    assert feed_in_pieces(chat_stream(), size) == Usage(30, 7, 20, None)
    assert feed_in_pieces(responses_stream(), size) == Usage(300, 30, 100, None)
    # Anthropic: message_start's output count (1) is replaced by message_delta's (15).
    assert feed_in_pieces(messages_stream(), size) == Usage(25, 15, 2000, 100)


def test_bedrock_converse_and_invoke_streams() -> None:
    converse = [
        frame("messageStart", {"role": "assistant"}),
        frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        frame("messageStop", {"stopReason": "end_turn"}),
        frame(
            "metadata",
            {
                "usage": {
                    "inputTokens": 30,
                    "outputTokens": 10,
                    "totalTokens": 40,
                    "cacheReadInputTokens": 5,
                    "cacheWriteInputTokens": 2,
                },
                "metrics": {"latencyMs": 100},
            },
        ),
    ]
    assert feed_in_pieces(converse, 100_000, bedrock=True) == Usage(30, 10, 5, 2)
    # invoke-with-response-stream: Anthropic's events, base64-wrapped, with the invocation
    # metrics in the last one.
    events = [json.loads(e.split(b"data: ", 1)[1]) for e in messages_stream() if b"data: " in e]
    events[-1]["amazon-bedrock-invocationMetrics"] = {
        "inputTokenCount": 25,
        "outputTokenCount": 15,
        "invocationLatency": 800,
        "firstByteLatency": 300,
        "cacheReadInputTokenCount": 2000,
        "cacheWriteInputTokenCount": 100,
    }
    frames = [
        frame(
            "chunk",
            {"bytes": base64.b64encode(json.dumps(e, separators=(",", ":")).encode()).decode()},
        )
        for e in events
    ]
    assert feed_in_pieces(frames, 100_000, bedrock=True) == Usage(25, 15, 2000, 100)
    converse_json = {"output": {}, "usage": {"inputTokens": 3, "outputTokens": 4}}
    assert from_body(json.dumps(converse_json).encode()) == Usage(3, 4, None, None)


def test_usage_in_the_answer_text_is_not_usage() -> None:
    text = 'the JSON was {"usage": {"prompt_tokens": 999, "completion_tokens": 999}}'
    body = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
    assert from_body(body) is None


def test_prices_builtin_configured_and_unknown() -> None:
    book = PriceBook()
    # gpt-4.1: $2 in, $8 out, $0.50 cached, per million.
    assert book.cost("m", "gpt-4.1-2025-04-14", Usage(200, 300, 1000)) == pytest.approx(0.0033)
    assert book.cost("m", "claude-sonnet-4-5", Usage(25, 15, 2000, 100)) == pytest.approx(0.001275)
    assert book.cost("m", "my-local-llama", Usage(10, 10)) is None
    assert book.cost("m", "gpt-4.1", None) is None
    mine = PriceBook([("my-*", Price(1, 2, 0.5, None)), ("gpt-4.1*", Price(0, 0, 0, 0))])
    assert mine.cost("x", "my-local-llama", Usage(1_000_000, 1_000_000)) == pytest.approx(3.0)
    assert mine.cost("x", "gpt-4.1", Usage(5, 5, 5)) == 0.0  # the config overrides
    # A part that was used but has no price makes the whole cost unknown, not smaller.
    assert mine.cost("x", "my-local-llama", Usage(1, 1, 0, 7)) is None
    # Bedrock and router ids name the same model with a prefix.
    assert book.price("m", "us.anthropic.claude-sonnet-4-5-20250929-v1:0") == book.price(
        "m", "claude-sonnet-4-5"
    )


# --- end to end --------------------------------------------------------------------------


class RecordedUpstream(WebFake):
    """Answers every request with recorded chunks (as they would come off the wire)."""

    def __init__(self, chunks: list[bytes], content_type: str) -> None:
        self.chunks = chunks
        self.content_type = content_type

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": self.content_type})
        await resp.prepare(request)
        for chunk in self.chunks:
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def config(db: Path, url: str, kind: str, model: str, extra: str = "") -> str:
    return f"""
[journal]
path = "{db}"
[endpoints.up]
url = "{url}"
api_key = "sk-usage-test-0001"
[[models]]
name = "m"
endpoint = "up"
type = "{kind}"
model = "{model}"
{extra}
"""


def only_row(db: Path) -> dict[str, Any]:
    conn = open_readonly(db)
    try:
        [row] = requests(conn)
    finally:
        conn.close()
    return row


def tokens(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row["input_tokens"],
        row["output_tokens"],
        row["cache_read_tokens"],
        row["cache_write_tokens"],
    )


async def test_openai_chat_json_through_the_sdk(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    body = json.dumps(CHAT_JSON).encode()
    async with (
        RecordedUpstream([body], "application/json") as up,
        ProxyHarness(config(db, up.url + "/v1", "openai", "gpt-4.1")) as px,
        openai.AsyncOpenAI(base_url=px.url() + "/v1", api_key="c", max_retries=0) as client,
    ):
        done = await client.chat.completions.create(model="gpt-4.1", messages=[])
        assert done.usage is not None and done.usage.prompt_tokens == 1200
    row = only_row(db)
    assert tokens(row) == (200, 300, 1000, None)
    assert row["cost_usd"] == pytest.approx(0.0033)


async def test_openai_chat_stream_include_usage(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with (
        RecordedUpstream(chat_stream(), "text/event-stream") as up,
        ProxyHarness(config(db, up.url + "/v1", "openai", "gpt-4o")) as px,
        openai.AsyncOpenAI(base_url=px.url() + "/v1", api_key="c", max_retries=0) as client,
    ):
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=[], stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    row = only_row(db)
    assert tokens(row) == (30, 7, 20, None)
    # gpt-4o: $2.50 in, $10 out, $1.25 cached.
    assert row["cost_usd"] == pytest.approx((30 * 2.5 + 7 * 10 + 20 * 1.25) / 1e6)


async def test_responses_stream(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with (
        RecordedUpstream(responses_stream(), "text/event-stream") as up,
        # A Responses upstream is declared (DECISIONS "Families"; else it is called with
        # chat completions and this recorded Responses stream would not be one).
        ProxyHarness(config(db, up.url + "/v1", "openai", "gpt-5-mini", 'api = "responses"')) as px,
        openai.AsyncOpenAI(base_url=px.url() + "/v1", api_key="c", max_retries=0) as client,
    ):
        stream = await client.responses.create(model="gpt-5-mini", input="hi", stream=True)
        events = [e async for e in stream]
        assert events[-1].type == "response.completed"
    row = only_row(db)
    assert tokens(row) == (300, 30, 100, None)
    assert row["client_api"] == "openai-responses"
    assert row["cost_usd"] == pytest.approx((300 * 0.25 + 30 * 2 + 100 * 0.025) / 1e6)


async def test_anthropic_stream_with_cache_reads_and_writes(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with (
        RecordedUpstream(messages_stream(), "text/event-stream") as up,
        ProxyHarness(config(db, up.url, "anthropic", "claude-sonnet-4-5")) as px,
        anthropic.AsyncAnthropic(base_url=px.url(), api_key="c", max_retries=0) as client,
    ):
        async with client.messages.stream(model="x", max_tokens=10, messages=[]) as stream:
            final = await stream.get_final_message()
        assert final.usage.cache_read_input_tokens == 2000
    row = only_row(db)
    assert tokens(row) == (25, 15, 2000, 100)
    assert row["cost_usd"] == pytest.approx(0.001275)


# --- Bedrock, through the proxy with boto3 ---------------------------------------------------


def bedrock_config(db: Path, url: str) -> str:
    return (
        f'[journal]\npath = "{db}"\n[endpoints.aws]\nurl = "{url}"\n'
        f'aws_access_key_id = "{KEY}"\naws_secret_access_key = "{SECRET}"\n'
        '[[models]]\nendpoint = "aws"\ntype = "bedrock"\n'
        'model = "anthropic.claude-sonnet-4-5-20250929-v1:0"\n'
    )


def bedrock_calls(url: str) -> list[dict[str, Any]]:
    """What boto3 reads as usage from each Bedrock API (in the journal's order)."""
    client = bedrock_client(url)
    body = json.dumps(
        {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": MSGS}
    ).encode()
    seen: list[dict[str, Any]] = []
    invoked = json.loads(client.invoke_model(modelId="x", body=body)["body"].read())
    seen.append({"in": invoked["usage"]["input_tokens"], "out": invoked["usage"]["output_tokens"]})
    stream = client.invoke_model_with_response_stream(modelId="x", body=body)["body"]
    events = [json.loads(e["chunk"]["bytes"]) for e in stream]
    start, delta = events[0]["message"]["usage"], events[-2]["usage"]
    seen.append({"in": start["input_tokens"], "out": delta["output_tokens"]})
    conv = [{"role": "user", "content": [{"text": "hi"}]}]
    usage = client.converse(modelId="x", messages=conv)["usage"]
    seen.append({"in": usage["inputTokens"], "out": usage["outputTokens"]})
    meta = list(client.converse_stream(modelId="x", messages=conv)["stream"])[-1]["metadata"]
    seen.append({"in": meta["usage"]["inputTokens"], "out": meta["usage"]["outputTokens"]})
    return seen


async def test_bedrock_invoke_and_converse_json_and_streams(tmp_path: Path) -> None:
    import asyncio

    db = tmp_path / "j.db"
    async with (
        FakeBedrock({KEY: SECRET}) as fake,
        ProxyHarness(bedrock_config(db, fake.url)) as px,
    ):
        seen = await asyncio.to_thread(bedrock_calls, px.url())
    conn = open_readonly(db)
    try:
        rows = list(reversed(requests(conn)))
    finally:
        conn.close()
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == [
        "invoke",
        "invoke-with-response-stream",
        "converse",
        "converse-stream",
    ]
    assert [{"in": r["input_tokens"], "out": r["output_tokens"]} for r in rows] == seen
    assert all(r["out"] > 1 for r in seen)  # real counts, not message_start's placeholder
    # Priced through the Bedrock model id: the Anthropic list price of Sonnet 4.5.
    for r in rows:
        assert r["cost_usd"] == pytest.approx(
            (r["input_tokens"] * 3 + r["output_tokens"] * 15) / 1e6
        )


def test_a_tool_input_with_a_usage_key_does_not_hide_the_real_usage() -> None:
    from hydrallm.observe.usage import usage_slice

    message = {
        "type": "message",
        "content": [{"type": "tool_use", "input": {"usage": {"input_tokens": 999}, "x": "y" * 20000}}],
        "usage": {"input_tokens": 12, "output_tokens": 34},
    }  # fmt: skip
    body = json.dumps(message).encode()
    raw = usage_slice(body)
    assert raw is not None and from_body(raw) == Usage(12, 34, None, None)
    assert usage_slice(b'{"choices": []}') is None
