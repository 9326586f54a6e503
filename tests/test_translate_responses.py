"""Answer translation (JSON, streams, errors), per upstream API x client API."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hydrallm.formats.translate import translator_for, upstream_api
from hydrallm.formats.translate.anthropic import strip_unsigned_thinking

ANTHROPIC_ANSWER = {
    "id": "msg_01XY",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [
        {"type": "thinking", "thinking": "Need the weather.", "signature": "EqQBCkYI"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 20,
        "output_tokens": 31,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 5,
    },
}
CHAT_ANSWER = {
    "id": "chatcmpl-9",
    "object": "chat.completion",
    "created": 1,
    "model": "glm-4.6",
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": "Checking.",
                "reasoning_content": "Need the weather.",
                "tool_calls": [
                    {
                        "id": "call_7",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
        }
    ],
    "usage": {
        "prompt_tokens": 125,
        "completion_tokens": 31,
        "total_tokens": 156,
        "prompt_tokens_details": {"cached_tokens": 100},
    },
}
GEMINI_ANSWER = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "Need the weather.", "thought": True},
                    {"text": "Checking."},
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "c2ln",
                    },
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 125,
        "candidatesTokenCount": 21,
        "thoughtsTokenCount": 10,
        "cachedContentTokenCount": 100,
        "totalTokenCount": 156,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "Abc123",
}
ANSWERS = {"anthropic": ANTHROPIC_ANSWER, "chat": CHAT_ANSWER, "gemini": GEMINI_ANSWER}
REQUESTS: dict[str, dict[str, Any]] = {
    "anthropic": {
        "model": "c",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": 2000},
    },
    "chat": {"model": "c", "messages": [{"role": "user", "content": "hi"}]},
    "responses": {"model": "c", "input": "hi", "reasoning": {"effort": "low", "summary": "auto"}},
}
PAIRS = [(c, u) for c in REQUESTS for u in ANSWERS if c != u]


def translate(
    client: Any, upstream: Any, answer: dict[str, Any], request: dict[str, Any] | None = None
) -> Any:
    t = translator_for(client, upstream)
    t.request(request or REQUESTS[client], "m")
    return json.loads(t.response(json.dumps(answer).encode()))


@pytest.mark.parametrize(("client", "upstream"), PAIRS)
def test_a_tool_calling_answer_reads_the_same_in_every_client_api(
    client: Any, upstream: Any
) -> None:
    out = translate(client, upstream, ANSWERS[upstream])
    call_id = {"anthropic": "toolu_01B", "chat": "call_7", "gemini": "call_Abc123_0"}[upstream]
    if client == "anthropic":
        kinds = [b["type"] for b in out["content"]]
        assert kinds == ["thinking", "text", "tool_use"]  # the client asked for thinking
        assert out["content"][0]["thinking"] == "Need the weather."
        assert out["content"][2] == {
            "type": "tool_use",
            "id": call_id,
            "name": "get_weather",
            "input": {"city": "Paris"},
        }
        assert out["stop_reason"] == "tool_use"
        assert out["id"].startswith("msg_")
        assert out["usage"]["cache_read_input_tokens"] == 100
        assert out["usage"]["output_tokens"] == 31
        # Anthropic counts uncached input apart from cache reads (and writes).
        total = out["usage"]["input_tokens"] + 100 + out["usage"]["cache_creation_input_tokens"]
        assert total == 125
    elif client == "chat":
        message = out["choices"][0]["message"]
        assert message["content"] == "Checking."
        assert "reasoning_content" not in message  # Chat Completions has no reasoning field
        assert message["tool_calls"] == [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ]
        assert out["choices"][0]["finish_reason"] == "tool_calls"
        assert out["usage"]["prompt_tokens"] == 125
        assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 100
        assert out["usage"]["completion_tokens"] == 31
    else:
        kinds = [item["type"] for item in out["output"]]
        assert kinds == ["reasoning", "message", "function_call"]
        assert out["output"][0]["summary"] == [
            {"type": "summary_text", "text": "Need the weather."}
        ]
        assert out["output"][1]["content"][0]["text"] == "Checking."
        call = out["output"][2]
        assert (call["call_id"], call["name"], json.loads(call["arguments"])) == (
            call_id,
            "get_weather",
            {"city": "Paris"},
        )
        assert out["status"] == "completed"
        assert out["usage"]["input_tokens"] == 125
        assert out["usage"]["input_tokens_details"]["cached_tokens"] == 100
        assert out["usage"]["output_tokens"] == 31


@pytest.mark.parametrize(
    ("finish", "anthropic_stop", "chat_finish", "responses_status"),
    [
        ("MAX_TOKENS", "max_tokens", "length", ("incomplete", "max_output_tokens")),
        ("SAFETY", "refusal", "content_filter", ("incomplete", "content_filter")),
        ("STOP", "end_turn", "stop", ("completed", None)),
    ],
)
def test_gemini_finish_reasons(
    finish: str, anthropic_stop: str, chat_finish: str, responses_status: Any
) -> None:
    answer = {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "Partial"}]}, "finishReason": finish}
        ],
        "responseId": "r",
        "modelVersion": "g",
    }
    assert translate("anthropic", "gemini", answer)["stop_reason"] == anthropic_stop
    assert translate("chat", "gemini", answer)["choices"][0]["finish_reason"] == chat_finish
    out = translate("responses", "gemini", answer)
    reason = (out["incomplete_details"] or {}).get("reason")
    assert (out["status"], reason) == responses_status


def test_a_prompt_blocked_by_gemini_is_a_refusal_not_an_empty_success() -> None:
    answer = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 9},
        "responseId": "r",
        "modelVersion": "g",
    }
    out = translate("anthropic", "gemini", answer)
    assert out["stop_reason"] == "refusal"
    assert out["content"] == []
    assert translate("chat", "gemini", answer)["choices"][0]["finish_reason"] == "content_filter"


def test_reasoning_is_hidden_from_clients_that_did_not_ask() -> None:
    plain = {"model": "c", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    out = translate("anthropic", "gemini", GEMINI_ANSWER, plain)
    assert [b["type"] for b in out["content"]] == ["text", "tool_use"]
    out = translate("responses", "chat", CHAT_ANSWER, {"model": "c", "input": "hi"})
    assert [i["type"] for i in out["output"]] == ["message", "function_call"]


def test_anthropic_stop_sequence_reaches_an_anthropic_client_from_chat_as_end() -> None:
    answer = ANTHROPIC_ANSWER | {
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
        "content": [{"type": "text", "text": "x"}],
    }
    assert translate("chat", "anthropic", answer)["choices"][0]["finish_reason"] == "stop"
    out = translate("responses", "anthropic", answer)
    assert out["status"] == "completed"


# --- errors ---------------------------------------------------------------------------

GEMINI_429 = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "45.837906927s"}
        ],
    }
}


@pytest.mark.parametrize("client", ["anthropic", "chat", "responses"])
def test_gemini_quota_error_in_the_clients_format_with_retry_after(client: Any) -> None:
    t = translator_for(client, "gemini")
    err = t.error(429, json.dumps(GEMINI_429).encode())
    assert err.status == 429
    assert dict(err.headers) == {"Retry-After": "46"}
    body = json.loads(err.body)
    if client == "anthropic":
        assert body == {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": "You exceeded your current quota."},
        }
    else:
        assert body["error"]["message"] == "You exceeded your current quota."
        assert body["error"]["type"] == "rate_limit_exceeded"


def test_array_wrapped_gemini_error_and_anthropic_overload_and_plain_text() -> None:
    wrapped = json.dumps([GEMINI_429]).encode()
    assert json.loads(translator_for("chat", "gemini").error(429, wrapped).body)["error"][
        "message"
    ] == ("You exceeded your current quota.")
    overloaded = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    err = translator_for("chat", "anthropic").error(529, overloaded)
    assert err.status == 529
    assert json.loads(err.body)["error"] == {
        "message": "Overloaded",
        "type": "server_error",
        "param": None,
        "code": "server_error",
    }
    chat_err = b'{"error":{"message":"Invalid key","type":"invalid_request_error","code":"invalid_api_key"}}'
    err = translator_for("anthropic", "chat").error(401, chat_err)
    assert json.loads(err.body)["error"] == {
        "type": "authentication_error",
        "message": "Invalid key",
    }
    err = translator_for("anthropic", "chat").error(502, b"<html>Bad gateway</html>")
    assert json.loads(err.body)["error"] == {
        "type": "api_error",
        "message": "<html>Bad gateway</html>",
    }


# --- streams and seams -----------------------------------------------------------------


def sse_lines(events: list[tuple[str | None, dict[str, Any]]]) -> bytes:
    out = b""
    for name, data in events:
        out += (
            f"event: {name}\n" if name else ""
        ).encode() + f"data: {json.dumps(data)}\n\n".encode()
    return out


def test_anthropic_stream_usage_keeps_cache_reads_when_the_delta_restates_input() -> None:
    t = translator_for("chat", "anthropic")
    t.request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "q"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        "c",
    )
    stream = t.stream()
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "model": "claude",
            "content": [],
            "usage": {"input_tokens": 5, "cache_read_input_tokens": 300, "output_tokens": 1},
        },
    }
    out = stream.feed(
        sse_lines(
            [
                ("message_start", start),
                ("ping", {"type": "ping"}),
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": "Hi"},
                    },
                ),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn"},
                        "usage": {"input_tokens": 5, "output_tokens": 9},
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ]
        )
    )
    chunks = [
        json.loads(line[6:]) for line in out.decode().splitlines() if line.startswith("data: {")
    ]
    assert chunks[-1]["usage"]["prompt_tokens"] == 305
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 300
    assert chunks[-1]["usage"]["completion_tokens"] == 9
    assert out.endswith(b"data: [DONE]\n\n") and stream.finished


@pytest.mark.parametrize("client", ["anthropic", "chat", "responses"])
def test_an_in_stream_error_is_recognised_and_ends_the_clients_stream(client: Any) -> None:
    t = translator_for(client, "gemini")
    t.request(REQUESTS[client] | {"stream": True}, "g")
    stream = t.stream()
    first = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
        "responseId": "r",
    }
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    late = {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "lo"}]}, "finishReason": "STOP"}
        ]
    }
    out = stream.feed(sse_lines([(None, first), (None, error), (None, late)])) + stream.close()
    assert stream.error is not None and stream.error.status == 503
    assert not stream.finished
    assert b"The model is overloaded." in out
    assert b'"lo"' not in out  # nothing after the error event
    if client == "chat":
        assert b'data: {"error"' in out and b"[DONE]" not in out
    else:
        assert b"event: error" in out


def test_a_gemini_stream_without_finish_reason_is_not_finished() -> None:
    t = translator_for("responses", "gemini")
    t.request({"model": "m", "input": "q", "stream": True}, "g")
    stream = t.stream()
    chunk = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
        "responseId": "r",
    }
    out = stream.feed(sse_lines([(None, chunk)])) + stream.close()
    assert b"response.output_text.delta" in out
    assert b"response.completed" not in out and not stream.finished


def test_the_answer_is_dated_by_the_injected_clock() -> None:
    t = translator_for("chat", "gemini", clock=lambda: 1_700_000_000.9)
    t.request({"model": "m", "messages": [{"role": "user", "content": "q"}]}, "g")
    assert json.loads(t.response(json.dumps(GEMINI_ANSWER).encode()))["created"] == 1_700_000_000
    t = translator_for("responses", "chat", clock=lambda: 42.0)
    t.request({"model": "m", "input": "q"}, "g")
    assert json.loads(t.response(json.dumps(CHAT_ANSWER).encode()))["created_at"] == 42


@pytest.mark.parametrize(
    ("client", "model_type", "api", "expected"),
    [
        ("anthropic", "anthropic", "chat", "native"),
        ("anthropic", "openai", "chat", "chat"),
        ("anthropic", "gemini", "chat", "gemini"),
        ("chat", "openai", "chat", "native"),
        ("chat", "anthropic", "chat", "anthropic"),
        ("responses", "openai", "responses", "native"),
        ("responses", "openai", "chat", "chat"),
        ("responses", "anthropic", "chat", "anthropic"),
        ("chat", "bedrock", "chat", None),
    ],
)
def test_upstream_api_for_each_client_and_model_type(
    client: Any, model_type: str, api: str, expected: Any
) -> None:
    assert upstream_api(client, model_type, api) == expected


def test_foreign_thinking_shown_to_an_anthropic_client_is_stripped_before_anthropic_sees_it() -> (
    None
):
    t = translator_for("anthropic", "gemini")
    t.request(REQUESTS["anthropic"], "g")
    shown = json.loads(t.response(json.dumps(GEMINI_ANSWER).encode()))
    assert shown["content"][0] == {
        "type": "thinking",
        "thinking": "Need the weather.",
        "signature": "",
    }
    replay = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": shown["content"]},
            {
                "role": "assistant",
                "content": [{"type": "thinking", "thinking": "t", "signature": "EqQB"}],
            },
        ]
    }
    assert strip_unsigned_thinking(replay)
    assert [b["type"] for b in replay["messages"][1]["content"]] == ["text", "tool_use"]
    assert replay["messages"][2]["content"][0]["signature"] == "EqQB"  # Anthropic's own stays
    assert not strip_unsigned_thinking(replay)


def test_a_chat_stream_ended_by_done_without_a_finish_reason_is_a_whole_answer() -> None:
    # Some OpenAI-compatible servers never send a finish_reason: their [DONE] still means
    # the answer is complete, and an Anthropic client must read it as ended, not broken.
    t = translator_for("anthropic", "chat")
    t.request(
        {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, "m"
    )
    stream = t.stream()
    chunk = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
    out = stream.feed(f"data: {json.dumps(chunk)}\n\n".encode()) + stream.feed(b"data: [DONE]\n\n")
    out += stream.close()
    assert stream.finished and stream.error is None
    assert b'"text_delta","text":"Hi"' in out.replace(b" ", b"")
    assert b"message_stop" in out
    # Without [DONE] and without a finish_reason, the stream is not whole.
    t2 = translator_for("anthropic", "chat")
    t2.request(
        {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, "m"
    )
    cut = t2.stream()
    cut.feed(f"data: {json.dumps(chunk)}\n\n".encode())
    cut.close()
    assert not cut.finished


@pytest.mark.parametrize("client", ["anthropic", "chat", "responses"])
def test_a_lone_surrogate_escape_from_the_upstream_reaches_the_client_as_that_escape(
    client: Any,
) -> None:
    # JSON may carry a lone surrogate as an escape; Python decodes it to a str with no
    # UTF-8.  Raw, the answer failed to encode (a 502 for an answer that was fine).
    text = "odd \ud83d end"
    answer = {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}
        ]
    }
    whole = translator_for(client, "gemini")
    whole.request(REQUESTS[client], "g")
    body = whole.response(json.dumps(answer).encode())
    assert b"\\ud83d" in body
    got = json.loads(body)
    shown = {
        "anthropic": lambda: got["content"][-1]["text"],
        "chat": lambda: got["choices"][0]["message"]["content"],
        "responses": lambda: got["output"][-1]["content"][0]["text"],
    }[client]()
    assert shown == text
    streamed = translator_for(client, "gemini")
    streamed.request(REQUESTS[client] | {"stream": True}, "g")
    stream = streamed.stream()
    out = stream.feed(sse_lines([(None, answer)])) + stream.close()
    assert stream.finished and stream.error is None
    assert b"\\ud83d" in out
    out.decode("utf-8")  # every byte of it is UTF-8
