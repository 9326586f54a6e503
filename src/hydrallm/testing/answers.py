"""Canonical answers in each provider's wire format, as plain data.

Pure functions only: given an `AnswerSpec`, build the JSON body of a non-streaming
answer, or the server-sent events of a streaming one, for the OpenAI Chat
Completions API, the OpenAI Responses API and the Anthropic Messages API.
Also the error bodies and in-stream error events each provider sends.

The shapes follow what the providers send closely enough that the official
`openai` and `anthropic` SDKs parse them.
"""

from __future__ import annotations

import json
from typing import Any

from hydrallm.testing.responses_wire import _response_object, _responses_json, _responses_stream
from hydrallm.testing.wire import (
    _CREATED,
    CANONICAL_TEXT,
    DEFAULT_CALL_ID,
    AnswerSpec,
    Api,
    Stream,
    ToolCall,
    _argument_pieces,
    _output_tokens,
    api_for_path,
    split_text,
    sse,
)

__all__ = [
    "CANONICAL_TEXT",
    "DEFAULT_CALL_ID",
    "AnswerSpec",
    "Api",
    "Stream",
    "ToolCall",
    "api_for_path",
    "count_tokens_body",
    "error_body",
    "error_event",
    "json_answer",
    "models_body",
    "split_text",
    "sse",
    "stream_answer",
]


# --- OpenAI Chat Completions -------------------------------------------------------


def _chat_usage(spec: AnswerSpec) -> dict[str, Any]:
    out = _output_tokens(spec)
    return {
        "prompt_tokens": spec.input_tokens,
        "completion_tokens": out,
        "total_tokens": spec.input_tokens + out,
    }


def _chat_json(spec: AnswerSpec) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": spec.text, "refusal": None}
    if spec.thinking:
        message["reasoning_content"] = spec.thinking
    finish = "stop"
    if spec.tool_call is not None:
        call = spec.tool_call
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
        ]
        finish = "tool_calls"
    return {
        "id": f"chatcmpl-{spec.answer_id}",
        "object": "chat.completion",
        "created": spec.created,
        "model": spec.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _chat_usage(spec),
        "system_fingerprint": "fp_fake",
    }


def _chat_stream(spec: AnswerSpec) -> Stream:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": f"chatcmpl-{spec.answer_id}",
            "object": "chat.completion.chunk",
            "created": spec.created,
            "model": spec.model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if spec.include_usage:
            body["usage"] = None
        return sse(body)

    head = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if spec.tool_call is not None:
        call = spec.tool_call
        head.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call.call_id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        content = [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in _argument_pieces(call.arguments)
        ]
        finish = "tool_calls"
    else:
        content = [chunk({"content": piece}) for piece in split_text(spec.text, spec.chunk_words)]
        finish = "stop"
    if spec.thinking:
        reasoning = split_text(spec.thinking, spec.chunk_words)
        content = [chunk({"reasoning_content": piece}) for piece in reasoning] + content
    tail = [chunk({}, finish)]
    if spec.include_usage:
        tail.append(
            sse(
                {
                    "id": f"chatcmpl-{spec.answer_id}",
                    "object": "chat.completion.chunk",
                    "created": spec.created,
                    "model": spec.model,
                    "system_fingerprint": "fp_fake",
                    "choices": [],
                    "usage": _chat_usage(spec),
                }
            )
        )
    return Stream(tuple(head), tuple(content), tuple(tail), (sse("[DONE]"),))


# --- Anthropic Messages --------------------------------------------------------------


def _message_object(spec: AnswerSpec, *, final: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    stop_reason: str | None = None
    if final:
        if spec.tool_call is not None:
            call = spec.tool_call
            content = [
                {
                    "type": "tool_use",
                    "id": f"toolu_{call.call_id}",
                    "name": call.name,
                    "input": json.loads(call.arguments or "{}"),
                }
            ]
            stop_reason = "tool_use"
        else:
            content = [{"type": "text", "text": spec.text}]
            stop_reason = "end_turn"
        if spec.thinking:
            thought = {"type": "thinking", "thinking": spec.thinking, "signature": _signature(spec)}
            content.insert(0, thought)
    return {
        "id": f"msg_{spec.answer_id}",
        "type": "message",
        "role": "assistant",
        "model": spec.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": spec.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": _output_tokens(spec) if final else 1,
        },
    }


def _messages_stream(spec: AnswerSpec) -> Stream:
    start = _message_object(spec, final=False)
    if spec.tool_call is not None:
        call = spec.tool_call
        block: dict[str, Any] = {
            "type": "tool_use",
            "id": f"toolu_{call.call_id}",
            "name": call.name,
            "input": {},
        }
        deltas = [
            {"type": "input_json_delta", "partial_json": piece}
            for piece in _argument_pieces(call.arguments)
        ]
        stop_reason = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        deltas = [
            {"type": "text_delta", "text": piece}
            for piece in split_text(spec.text, spec.chunk_words)
        ]
        stop_reason = "end_turn"
    at = 1 if spec.thinking else 0  # the answer's block comes after the thinking block

    def open_block(index: int, body: dict[str, Any]) -> bytes:
        event = {"type": "content_block_start", "index": index, "content_block": body}
        return sse(event, "content_block_start")

    def delta(index: int, body: dict[str, Any]) -> bytes:
        return sse(
            {"type": "content_block_delta", "index": index, "delta": body}, "content_block_delta"
        )

    content = [delta(at, d) for d in deltas]
    first = open_block(at, block)
    if spec.thinking:
        thought = {"type": "thinking", "thinking": "", "signature": ""}
        first = open_block(0, thought)
        thinking = [
            delta(0, {"type": "thinking_delta", "thinking": piece})
            for piece in split_text(spec.thinking, spec.chunk_words)
        ]
        # The signature closes the thinking block; the answer's block opens with its
        # first chunk, so a cut right after the thinking leaves no empty block behind.
        closing = delta(0, {"type": "signature_delta", "signature": _signature(spec)}) + sse(
            {"type": "content_block_stop", "index": 0}, "content_block_stop"
        )
        if content:
            content[0] = closing + open_block(at, block) + content[0]
        else:
            content = [closing + open_block(at, block)]
        content = thinking + content
    head = (
        sse({"type": "message_start", "message": start}, "message_start"),
        first,
        sse({"type": "ping"}, "ping"),
    )
    tail = (
        sse({"type": "content_block_stop", "index": at}, "content_block_stop"),
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": _output_tokens(spec)},
            },
            "message_delta",
        ),
    )
    return Stream(head, tuple(content), tail, (sse({"type": "message_stop"}, "message_stop"),))


def _signature(spec: AnswerSpec) -> str:
    # Each answer is signed anew: a restarted thinking block never has the same signature.
    return f"sig_{spec.answer_id}"


# --- Public entry points -------------------------------------------------------------


def json_answer(api: Api, spec: AnswerSpec) -> dict[str, Any]:
    """The body of a successful non-streaming answer for `api`."""
    if api is Api.CHAT:
        return _chat_json(spec)
    if api is Api.RESPONSES:
        return _responses_json(spec)
    if api is Api.MESSAGES:
        return _message_object(spec, final=True)
    if api is Api.COUNT_TOKENS:
        return count_tokens_body(spec.input_tokens)
    raise ValueError(f"no generated answer for {api}")


def stream_answer(api: Api, spec: AnswerSpec) -> Stream:
    """The events of a successful streaming answer for `api`."""
    if api is Api.CHAT:
        return _chat_stream(spec)
    if api is Api.RESPONSES:
        return _responses_stream(spec)
    if api is Api.MESSAGES:
        return _messages_stream(spec)
    raise ValueError(f"{api} does not stream")


def count_tokens_body(input_tokens: int) -> dict[str, Any]:
    """Anthropic `/v1/messages/count_tokens` answer."""
    return {"input_tokens": input_tokens}


def models_body(models: tuple[str, ...], *, anthropic: bool, owner: str) -> dict[str, Any]:
    """A model list in Anthropic's or OpenAI's format."""
    if anthropic:
        data = [
            {
                "type": "model",
                "id": m,
                "display_name": m,
                "created_at": "2025-01-01T00:00:00Z",
            }
            for m in models
        ]
        return {
            "data": data,
            "has_more": False,
            "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None,
        }
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": _CREATED, "owned_by": owner} for m in models
        ],
    }


# Anthropic's documented error types by status; anything else is an `api_error`.
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

# OpenAI's (type, code) by status.
_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def error_body(
    api: Api | None, status: int, message: str | None = None, *, kind: str | None = None
) -> dict[str, Any]:
    """A provider-shaped JSON error body for an HTTP error status.

    `kind` overrides the error type that `status` implies.
    """
    text = message or f"fake upstream error {status}"
    if api in (Api.MESSAGES, Api.COUNT_TOKENS):
        anthropic_kind = kind or _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": anthropic_kind, "message": text}}
    openai_kind, code = _OPENAI_ERROR_TYPES.get(status, ("server_error", None))
    if kind is not None:
        openai_kind, code = kind, kind
    return {"error": {"message": text, "type": openai_kind, "param": None, "code": code}}


def error_event(
    api: Api,
    kind: str = "overloaded_error",
    message: str = "Overloaded",
    *,
    spec: AnswerSpec | None = None,
    sequence_number: int = 0,
) -> bytes:
    """The in-stream error event each API sends on a 200 stream that fails.

    `spec` and `sequence_number` fill the Responses API's `response.failed` event.
    """
    if api is Api.MESSAGES:
        return sse({"type": "error", "error": {"type": kind, "message": message}}, "error")
    if api is Api.RESPONSES:
        spec = spec or AnswerSpec(model="", answer_id="failed")
        failed = _response_object(spec, "failed", [], error={"code": kind, "message": message})
        event = {"type": "response.failed", "sequence_number": sequence_number, "response": failed}
        return sse(event, "response.failed")
    return sse({"error": {"message": message, "type": kind, "param": None, "code": kind}})
