"""OpenAI Responses answers of the fake upstream: JSON bodies and SSE streams."""

from __future__ import annotations

from typing import Any

from hydrallm.testing.wire import (
    AnswerSpec,
    Stream,
    _argument_pieces,
    _output_tokens,
    split_text,
    sse,
)


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
