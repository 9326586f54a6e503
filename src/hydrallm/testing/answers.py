"""Canonical answers in each provider's wire format, as plain data.

Pure functions only: given an `AnswerSpec`, build the JSON body of a non-streaming
answer, or the server-sent events of a streaming one, for the OpenAI Chat
Completions API, the OpenAI Responses API and the Anthropic Messages API.
Also the error bodies and in-stream error events each provider sends.

The shapes follow what the providers send closely enough that the official
`openai` and `anthropic` SDKs parse them.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CANONICAL_TEXT",
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

# Several sentences so that streams have many chunks; the non-ASCII letters and the
# quotes check that nothing on the way re-encodes or splits UTF-8 / JSON escapes.
CANONICAL_TEXT = (
    "Hydras regrow two heads for every one that is cut off. "
    "A proxy that retries is a little like that: when one upstream fails, another answers. "
    'This answer has several sentences, some "quoted" words, and a few non-ASCII letters: '
    "café, naïve, Zürich — so that every chunk boundary is exercised. "
    "That is the whole answer."
)

# A fixed epoch second keeps answers reproducible between runs.
_CREATED = 1_735_689_600


class Api(enum.Enum):
    """Which provider API a request path belongs to."""

    CHAT = "chat"
    RESPONSES = "responses"
    MESSAGES = "messages"
    COUNT_TOKENS = "count_tokens"
    MODELS = "models"


def api_for_path(path: str) -> Api | None:
    """Classify a request path; None when no LLM API serves it."""
    path = path.rstrip("/")
    if path.endswith("chat/completions"):
        return Api.CHAT
    if path.endswith("/responses"):
        return Api.RESPONSES
    if path.endswith("/messages/count_tokens"):
        return Api.COUNT_TOKENS
    if path.endswith("/messages"):
        return Api.MESSAGES
    if path.endswith("/models"):
        return Api.MODELS
    return None


# FakeUpstream replaces this id by one of the answer's own, as real APIs name each call anew.
DEFAULT_CALL_ID = "call_fake_0001"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the fake answers with instead of text.

    `arguments` is the JSON text of the arguments, as OpenAI transmits it.
    """

    name: str = "get_weather"
    arguments: str = '{"city":"Paris"}'
    call_id: str = DEFAULT_CALL_ID


@dataclass(frozen=True, slots=True)
class AnswerSpec:
    """Everything an answer depends on."""

    model: str
    answer_id: str
    text: str = CANONICAL_TEXT
    chunk_words: int = 1
    input_tokens: int = 1
    tool_call: ToolCall | None = None
    include_usage: bool = False  # OpenAI chat streaming: `stream_options.include_usage`
    created: int = _CREATED
    # Reasoning the answer starts with: an Anthropic `thinking` block (signed), chat
    # `reasoning_content`, a Responses `reasoning` item (summary).  Its chunks count as
    # content chunks, so a cut can land in it.
    thinking: str | None = None


@dataclass(frozen=True, slots=True)
class Stream:
    """A streaming answer as encoded SSE events, cut where faults are injected.

    `head` opens the stream, `content` carries the text (or tool arguments) one
    event per chunk, `tail` closes the content, and `terminal` is what marks a
    clean end (`[DONE]`, `message_stop`, `response.completed`).
    """

    head: tuple[bytes, ...]
    content: tuple[bytes, ...]
    tail: tuple[bytes, ...]
    terminal: tuple[bytes, ...]

    def events(self) -> tuple[bytes, ...]:
        """Every event, in order."""
        return self.head + self.content + self.tail + self.terminal


def split_text(text: str, chunk_words: int = 1) -> list[str]:
    """Cut `text` into chunks of `chunk_words` words; joined they give `text` back."""
    if not text:
        return []
    # Each piece is a word with the whitespace after it (the first also takes any
    # leading whitespace), so joining the pieces loses nothing.
    words = re.findall(r"\s*\S+\s*", text) or [text]
    size = max(1, chunk_words)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def _output_tokens(spec: AnswerSpec) -> int:
    if spec.tool_call is not None:
        return max(1, len(spec.tool_call.arguments) // 4)
    return max(1, len(split_text(spec.text)))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sse(data: Any, event: str | None = None) -> bytes:
    """Encode one server-sent event; `data` is JSON-encoded unless it is a str."""
    payload = data if isinstance(data, str) else _dumps(data)
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


def _argument_pieces(arguments: str) -> list[str]:
    # Providers stream tool arguments in arbitrary fragments; three is enough to
    # show that a client reassembles them.
    step = max(1, -(-len(arguments) // 3))
    return [arguments[i : i + step] for i in range(0, len(arguments), step)] or [""]


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


# --- OpenAI Responses ----------------------------------------------------------------


def _responses_usage(spec: AnswerSpec) -> dict[str, Any]:
    out = _output_tokens(spec)
    return {
        "input_tokens": spec.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": spec.input_tokens + out,
    }


def _response_object(
    spec: AnswerSpec,
    status: str,
    output: list[dict[str, Any]],
    *,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": f"resp_{spec.answer_id}",
        "object": "response",
        "created_at": spec.created,
        "status": status,
        "error": error,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": spec.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": _responses_usage(spec) if status == "completed" else None,
        "metadata": {},
    }


def _responses_item(spec: AnswerSpec, done: bool) -> dict[str, Any]:
    status = "completed" if done else "in_progress"
    if spec.tool_call is not None:
        call = spec.tool_call
        return {
            "type": "function_call",
            "id": f"fc_{spec.answer_id}",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments if done else "",
            "status": status,
        }
    content = [_output_text_part(spec.text)] if done else []
    return {
        "type": "message",
        "id": f"msg_{spec.answer_id}",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _responses_json(spec: AnswerSpec) -> dict[str, Any]:
    output = [_responses_item(spec, done=True)]
    if spec.thinking:
        output.insert(0, _reasoning_item(spec, done=True))
    return _response_object(spec, "completed", output)


def _reasoning_item(spec: AnswerSpec, done: bool) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": spec.thinking}] if done else []
    return {"type": "reasoning", "id": f"rs_{spec.answer_id}", "summary": summary}


def _responses_stream(spec: AnswerSpec) -> Stream:
    # Events are built first and numbered afterwards, so that `sequence_number`
    # counts every event of the stream in order.  Each content chunk is a group of
    # events (the chunk that ends the reasoning also opens the answer's item).
    main = 1 if spec.thinking else 0  # the answer's output_index
    item_id = f"fc_{spec.answer_id}" if spec.tool_call else f"msg_{spec.answer_id}"
    at = {"item_id": item_id, "output_index": main}
    head: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response_object(spec, "in_progress", [])},
        {"type": "response.in_progress", "response": _response_object(spec, "in_progress", [])},
    ]
    opening: list[dict[str, Any]] = [
        {
            "type": "response.output_item.added",
            "output_index": main,
            "item": _responses_item(spec, done=False),
        }
    ]
    tail: list[dict[str, Any]]
    if spec.tool_call is not None:
        arguments = spec.tool_call.arguments
        content = [
            [{"type": "response.function_call_arguments.delta", **at, "delta": piece}]
            for piece in _argument_pieces(arguments)
        ]
        tail = [{"type": "response.function_call_arguments.done", **at, "arguments": arguments}]
    else:
        part_at = {**at, "content_index": 0}
        opening.append(
            {"type": "response.content_part.added", **part_at, "part": _output_text_part("")}
        )
        content = [
            [{"type": "response.output_text.delta", **part_at, "delta": piece, "logprobs": []}]
            for piece in split_text(spec.text, spec.chunk_words)
        ]
        tail = [
            {"type": "response.output_text.done", **part_at, "text": spec.text, "logprobs": []},
            {"type": "response.content_part.done", **part_at, "part": _output_text_part(spec.text)},
        ]
    if spec.thinking:
        head += [
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": _reasoning_item(spec, False),
            },
        ]
        rs = {"item_id": f"rs_{spec.answer_id}", "output_index": 0, "summary_index": 0}
        head.append(
            {"type": "response.reasoning_summary_part.added", **rs, "part": _summary_part("")}
        )
        thinking = [
            [{"type": "response.reasoning_summary_text.delta", **rs, "delta": piece}]
            for piece in split_text(spec.thinking, spec.chunk_words)
        ]
        closing = [
            {"type": "response.reasoning_summary_text.done", **rs, "text": spec.thinking},
            {
                "type": "response.reasoning_summary_part.done",
                **rs,
                "part": _summary_part(spec.thinking),
            },
            {
                "type": "response.output_item.done",
                "output_index": 0,
                "item": _reasoning_item(spec, True),
            },
        ]
        first = closing + opening + (content[0] if content else [])
        content = [*thinking, first, *content[1:]]
    else:
        head += opening
    tail.append(
        {
            "type": "response.output_item.done",
            "output_index": main,
            "item": _responses_item(spec, True),
        }
    )
    terminal = [{"type": "response.completed", "response": _responses_json(spec)}]

    seq = 0

    def encode(groups: list[list[dict[str, Any]]]) -> tuple[bytes, ...]:
        nonlocal seq
        out = []
        for group in groups:
            encoded = b""
            for event in group:
                encoded += sse({**event, "sequence_number": seq}, event["type"])
                seq += 1
            out.append(encoded)
        return tuple(out)

    return Stream(
        encode([[e] for e in head]),
        encode(content),
        encode([[e] for e in tail]),
        encode([[e] for e in terminal]),
    )


def _summary_part(text: str) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}


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
