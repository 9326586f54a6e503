"""Token usage read from each API's own bodies and streams.

The payloads are shaped as each API documents and sends them; where an official SDK
can read the same bytes, the test checks that our numbers are the ones the SDK reports.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import anthropic
import httpx2
import openai

from hydrallm.formats.anthropic_messages import ANTHROPIC_MESSAGES
from hydrallm.formats.base import Usage, usage_of
from hydrallm.formats.bedrock_eventstream import BEDROCK_EVENTSTREAM
from hydrallm.formats.eventstream import encode_message
from hydrallm.formats.openai_chat import OPENAI_CHAT
from hydrallm.formats.openai_responses import OPENAI_RESPONSES
from hydrallm.formats.passthrough import PASSTHROUGH


def sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _client(body: bytes, content_type: str = "text/event-stream") -> httpx2.Client:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": content_type}, content=body)

    return httpx2.Client(transport=httpx2.MockTransport(handler))


# --- OpenAI chat completions ----------------------------------------------------------

CHAT_USAGE = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


# What every chunk of the stream below starts with.
CHUNK_HEAD = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion.chunk",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "service_tier": "default",
    "system_fingerprint": "fp_eb9dce56a8",
}


def chat_chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return sse({**CHUNK_HEAD, "choices": [choice], **extra})


# With stream_options.include_usage every chunk has "usage": null, and one last chunk
# before [DONE] has no choices and the usage.
CHAT_STREAM = [
    chat_chunk({"role": "assistant", "content": "", "refusal": None}, None, usage=None),
    chat_chunk({"content": "Hydras"}, None, usage=None),
    chat_chunk({}, "stop", usage=None),
    sse({**CHUNK_HEAD, "choices": [], "usage": CHAT_USAGE}),
    b"data: [DONE]\n\n",
]


def test_chat_body_usage_counts_cached_prompt_tokens() -> None:
    body = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4.1-2025-04-14",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": CHAT_USAGE,
        "service_tier": "default",
    }
    assert OPENAI_CHAT.usage_from_body(body) == Usage(86, 300, 1920, None)
    # The official SDK reads the same numbers from the same body.
    sdk = openai.OpenAI(
        api_key="k",
        base_url="http://upstream/v1",
        http_client=_client(json.dumps(body).encode(), "application/json"),
    )
    usage = sdk.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    ).usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (2006, 300)
    ours = OPENAI_CHAT.usage_from_body(body)
    assert ours is not None and ours.total_input == usage.prompt_tokens
    assert usage.prompt_tokens_details.cached_tokens == 1920


def test_chat_stream_usage_is_the_include_usage_chunk() -> None:
    assert OPENAI_CHAT.stream_usage(CHAT_STREAM) == Usage(86, 300, 1920, None)
    # Fed byte by byte, the result is the same: events are cut, not chunks.
    wire = b"".join(CHAT_STREAM)
    assert OPENAI_CHAT.stream_usage(wire[i : i + 1] for i in range(len(wire))) == Usage(
        86, 300, 1920, None
    )
    sdk = openai.OpenAI(api_key="k", base_url="http://upstream/v1", http_client=_client(wire))
    chunks = list(
        sdk.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1].usage
    assert last is not None and last.prompt_tokens == 2006 and last.completion_tokens == 300


def test_a_chat_stream_without_include_usage_reports_none() -> None:
    assert OPENAI_CHAT.stream_usage(CHAT_STREAM[:3] + CHAT_STREAM[4:]) is None


# --- OpenAI Responses -----------------------------------------------------------------

RESPONSES_USAGE = {
    "input_tokens": 2006,
    "input_tokens_details": {"cached_tokens": 1920},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 128},
    "total_tokens": 2306,
}


def response_object(status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    done = status == "completed"
    return {
        "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
        "object": "response",
        "created_at": 1741476777,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": "gpt-4o-2024-08-06",
        "output": [
            {
                "type": "message",
                "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi", "annotations": []}],
            }
        ]
        if done
        else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


RESPONSES_STREAM = [
    sse(
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": response_object("in_progress", None),
        },
        "response.created",
    ),
    sse(
        {
            "type": "response.output_text.delta",
            "sequence_number": 4,
            "item_id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hi",
            "logprobs": [],
        },
        "response.output_text.delta",
    ),
    sse(
        {
            "type": "response.completed",
            "sequence_number": 9,
            "response": response_object("completed", RESPONSES_USAGE),
        },
        "response.completed",
    ),
]


def test_responses_body_usage_counts_cached_input_tokens() -> None:
    body = response_object("completed", RESPONSES_USAGE)
    assert OPENAI_RESPONSES.usage_from_body(body) == Usage(86, 300, 1920, None)


def test_responses_stream_usage_comes_from_response_completed() -> None:
    wire = b"".join(RESPONSES_STREAM)
    assert OPENAI_RESPONSES.stream_usage([wire]) == Usage(86, 300, 1920, None)
    # Only the terminal event counts: response.created's null usage is no report.
    assert OPENAI_RESPONSES.stream_usage(RESPONSES_STREAM[:2]) is None
    sdk = openai.OpenAI(api_key="k", base_url="http://upstream/v1", http_client=_client(wire))
    events = list(sdk.responses.create(model="m", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    usage = events[-1].response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (2006, 300)
    assert usage.input_tokens_details.cached_tokens == 1920


# --- Anthropic Messages ---------------------------------------------------------------

ANTHROPIC_STREAM = [
    sse(
        {
            "type": "message_start",
            "message": {
                "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-sonnet-4-5-20250929",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 3,
                    "cache_creation_input_tokens": 25037,
                    "cache_read_input_tokens": 1200,
                    "output_tokens": 1,
                },
            },
        },
        "message_start",
    ),
    sse(
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        },
        "content_block_start",
    ),
    sse({"type": "ping"}, "ping"),
    sse(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        "content_block_delta",
    ),
    sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
    sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 15},
        },
        "message_delta",
    ),
    sse({"type": "message_stop"}, "message_stop"),
]


def test_anthropic_stream_usage_merges_message_start_and_message_delta() -> None:
    usage = ANTHROPIC_MESSAGES.stream_usage(ANTHROPIC_STREAM)
    assert usage == Usage(3, 15, 1200, 25037)
    # Cut after message_start: the output so far is message_start's placeholder.
    assert ANTHROPIC_MESSAGES.stream_usage(ANTHROPIC_STREAM[:4]) == Usage(3, 1, 1200, 25037)
    wire = b"".join(ANTHROPIC_STREAM)
    sdk = anthropic.Anthropic(api_key="k", base_url="http://upstream", http_client=_client(wire))
    with sdk.messages.stream(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message().usage
    assert final.input_tokens == 3 and final.output_tokens == 15
    # Every input token, whichever API answered: 3 uncached + 1200 read + 25037 written.
    assert usage is not None and usage.total_input == 26240
    assert final.cache_read_input_tokens == 1200
    assert final.cache_creation_input_tokens == 25037


def test_anthropic_message_delta_with_cumulative_input_counts_wins() -> None:
    # Newer responses repeat the input counts in message_delta (cumulative, may change
    # with server tools): the later report wins field by field.
    delta = sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": None,
                "cache_read_input_tokens": 1200,
                "output_tokens": 40,
            },
        },
        "message_delta",
    )
    usage = ANTHROPIC_MESSAGES.stream_usage([ANTHROPIC_STREAM[0], delta])
    assert usage == Usage(10, 40, 1200, 25037)


def test_anthropic_body_usage() -> None:
    body = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "Hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 2095,
            "output_tokens": 503,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 2048,
            "service_tier": "standard",
        },
    }
    assert ANTHROPIC_MESSAGES.usage_from_body(body) == Usage(2095, 503, 2048, 0)


# --- Bedrock --------------------------------------------------------------------------


def frame(event_type: str, body: object) -> bytes:
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, json.dumps(body).encode())


def chunk(inner: dict[str, Any]) -> bytes:
    """One invoke-with-response-stream event: the model's event, base64 in `bytes`."""
    encoded = base64.b64encode(json.dumps(inner).encode()).decode()
    return frame("chunk", {"bytes": encoded})


def test_bedrock_invoke_stream_usage_is_the_invocation_metrics() -> None:
    start, _, _, _, _, delta, _ = (
        json.loads(raw.decode().split("data: ", 1)[1]) for raw in ANTHROPIC_STREAM
    )
    metrics = {
        "inputTokenCount": 3,
        "outputTokenCount": 15,
        "invocationLatency": 3037,
        "firstByteLatency": 2635,
        "cacheReadInputTokenCount": 1200,
        "cacheWriteInputTokenCount": 25037,
    }
    frames = [
        chunk(start),
        chunk(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hi"},
            }
        ),
        chunk(delta),
        chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics}),
    ]
    wire = b"".join(frames)
    assert BEDROCK_EVENTSTREAM.stream_usage([wire]) == Usage(3, 15, 1200, 25037)
    # Without the metrics (a cut stream), the Anthropic events inside still count.
    assert BEDROCK_EVENTSTREAM.stream_usage(frames[:3]) == Usage(3, 15, 1200, 25037)


def test_bedrock_invoke_metrics_of_a_model_without_cache_fields() -> None:
    last = chunk(
        {
            "generation": "",
            "stop_reason": "stop",
            "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": 12,
                "outputTokenCount": 34,
                "invocationLatency": 800,
                "firstByteLatency": 200,
            },
        }
    )
    assert BEDROCK_EVENTSTREAM.stream_usage([last]) == Usage(12, 34, None, None)


def test_bedrock_converse_stream_usage_is_the_metadata_event() -> None:
    frames = [
        frame("messageStart", {"role": "assistant"}),
        frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        frame("contentBlockStop", {"contentBlockIndex": 0}),
        frame("messageStop", {"stopReason": "end_turn"}),
        frame(
            "metadata",
            {
                "usage": {
                    "inputTokens": 30,
                    "outputTokens": 12,
                    "totalTokens": 1242,
                    "cacheReadInputTokens": 1000,
                    "cacheWriteInputTokens": 200,
                },
                "metrics": {"latencyMs": 612},
            },
        ),
    ]
    assert BEDROCK_EVENTSTREAM.stream_usage(frames) == Usage(30, 12, 1000, 200)


def test_bedrock_body_usage_of_converse_and_of_invoke() -> None:
    converse = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hi"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 42},
        "metrics": {"latencyMs": 612},
    }
    assert BEDROCK_EVENTSTREAM.usage_from_body(converse) == Usage(30, 12, None, None)
    invoke = {
        "id": "msg_bdrk_01",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "Hi"}],
        "usage": {"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 100},
    }
    assert BEDROCK_EVENTSTREAM.usage_from_body(invoke) == Usage(5, 7, 100, None)


# --- what is not usage ------------------------------------------------------------------


def test_malformed_or_absent_usage_is_none_not_an_error() -> None:
    assert OPENAI_CHAT.usage_from_body({"usage": None}) is None
    assert OPENAI_CHAT.usage_from_body({"usage": {"prompt_tokens": "12"}}) is None
    assert OPENAI_CHAT.usage_from_body({"usage": {"prompt_tokens": -1}}) is None
    assert OPENAI_CHAT.usage_from_body({"usage": {"prompt_tokens": True}}) is None
    assert ANTHROPIC_MESSAGES.usage_from_body({"usage": []}) is None
    assert BEDROCK_EVENTSTREAM.stream_usage([chunk({"type": "ping"})]) is None
    assert BEDROCK_EVENTSTREAM.stream_usage([frame("chunk", {"bytes": "%%not base64%%"})]) is None
    assert PASSTHROUGH.stream_usage([b'{"prompt_eval_count": 3}\n']) is None


def test_prompt_cache_share_of_each_api() -> None:
    """What key pools count per key and model (input in total, of it read from the
    cache); a usage with no input count is not counted."""
    chat = usage_of({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 80}})
    assert chat is not None and (chat.total_input, chat.cache_read_tokens) == (100, 80)
    anthropic = usage_of(
        {"input_tokens": 10, "cache_read_input_tokens": 70, "cache_creation_input_tokens": 20}
    )
    assert anthropic is not None
    assert (anthropic.total_input, anthropic.cache_read_tokens) == (100, 70)
    responses = usage_of({"input_tokens": 50, "input_tokens_details": {"cached_tokens": 25}})
    assert responses is not None
    assert (responses.total_input, responses.cache_read_tokens) == (50, 25)
    output_only = usage_of({"output_tokens": 3})
    assert output_only is not None and output_only.input_tokens is None


def test_usage_merges_field_by_field() -> None:
    first = Usage(3, 1, 1200, 25037)
    assert first.merged(Usage(output_tokens=15)) == Usage(3, 15, 1200, 25037)
    assert first.merged(None) is first
    assert Usage().empty and not first.empty
    assert Usage().total_input is None
    assert Usage(input_tokens=4).total_input == 4
