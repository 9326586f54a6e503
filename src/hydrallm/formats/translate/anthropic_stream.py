"""Anthropic Messages streams: SSE events read into IR events, and written from them."""

from __future__ import annotations

import json

from hydrallm.formats.errors import error_event
from hydrallm.formats.peek import StreamKind
from hydrallm.formats.sse import SSEEvent
from hydrallm.formats.translate import ir
from hydrallm.formats.translate.anthropic import (
    _STOP_IN,
    _STOP_OUT,
    ERROR_TYPES,
    _usage_in,
    error_type,
    message_id,
    tool_id,
    usage_out,
)
from hydrallm.formats.translate.ir import Json


class Decoder:
    """Anthropic SSE events -> IR events."""

    def __init__(self) -> None:
        self._blocks: dict[int, int] = {}  # content block index -> tool call index
        self._usage: Json = {}  # the usage as Anthropic states it, updated by message_delta
        self._stop: ir.Stop = "end"
        self._stop_sequence: str | None = None

    def feed(self, event: SSEEvent) -> list[ir.Event]:
        try:
            data = json.loads(event.data)
        except ValueError:
            return []
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "message_start":
            message = data.get("message") or {}
            self._usage = dict(message.get("usage") or {})
            return [ir.Start(str(message.get("id", "")), str(message.get("model", "")))]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = len(self._blocks)
                self._blocks[int(data.get("index", 0))] = index
                return [ir.ToolStart(index, str(block.get("id")), str(block.get("name")))]
            if block.get("type") == "text" and block.get("text"):
                return [ir.TextDelta(str(block["text"]))]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            dkind = delta.get("type")
            if dkind == "text_delta":
                return [ir.TextDelta(str(delta.get("text", "")))]
            if dkind == "thinking_delta":
                return [ir.ThinkingDelta(str(delta.get("thinking", "")))]
            if dkind == "input_json_delta":
                call = self._blocks.get(int(data.get("index", 0)))
                if call is not None:
                    return [ir.ToolDelta(call, str(delta.get("partial_json", "")))]
            return []
        if kind == "message_delta":
            delta = data.get("delta") or {}
            self._stop = _STOP_IN.get(str(delta.get("stop_reason")), "end")
            self._stop_sequence = delta.get("stop_sequence")
            # message_delta usage is cumulative: what it states replaces the start's.
            usage = data.get("usage") or {}
            self._usage |= {k: v for k, v in usage.items() if v is not None}
            return []
        if kind == "message_stop":
            return [ir.Finish(self._stop, _usage_in(self._usage), self._stop_sequence)]
        if kind == "error" or event.event == "error":
            error = data.get("error") or {}
            status = _STATUS_OF_TYPE.get(str(error.get("type")), 500)
            return [ir.StreamError(status, str(error.get("message", "upstream error")))]
        return []

    def close(self) -> list[ir.Event]:
        return []  # no message_stop: the stream was cut


_STATUS_OF_TYPE = {v: k for k, v in ERROR_TYPES.items()} | {"overloaded_error": 529}


class Encoder:
    """IR events -> Anthropic SSE bytes, opening and closing content blocks as needed."""

    def __init__(self, request: ir.Request) -> None:
        self._reasoning = request.wants_reasoning
        self._open: str | None = None  # kind of the open block
        self._count = 0  # blocks started
        self._tools: dict[int, int] = {}  # tool call index -> block index

    def _start(self, block: Json) -> bytes:
        out = self._stop_block()
        self._open = block["type"]
        self._count += 1
        event = {"type": "content_block_start", "index": self._count - 1, "content_block": block}
        return out + ir.sse(event, "content_block_start")

    def _stop_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        event = {"type": "content_block_stop", "index": self._count - 1}
        return ir.sse(event, "content_block_stop")

    def _delta(self, index: int, delta: Json) -> bytes:
        event = {"type": "content_block_delta", "index": index, "delta": delta}
        return ir.sse(event, "content_block_delta")

    def encode(self, event: ir.Event) -> bytes:
        if isinstance(event, ir.Start):
            message: Json = {
                "id": message_id(event.id),
                "type": "message",
                "role": "assistant",
                "model": event.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage_out(event.usage or ir.Usage()),
            }
            return ir.sse({"type": "message_start", "message": message}, "message_start")
        if isinstance(event, ir.TextDelta):
            out = b"" if self._open == "text" else self._start({"type": "text", "text": ""})
            return out + self._delta(self._count - 1, {"type": "text_delta", "text": event.text})
        if isinstance(event, ir.ThinkingDelta):
            if not self._reasoning:
                return b""
            out = b""
            if self._open != "thinking":
                out = self._start({"type": "thinking", "thinking": "", "signature": ""})
            delta = {"type": "thinking_delta", "thinking": event.text}
            return out + self._delta(self._count - 1, delta)
        if isinstance(event, ir.ToolStart):
            block = {"type": "tool_use", "id": tool_id(event.id), "name": event.name, "input": {}}
            out = self._start(block)
            self._tools[event.index] = self._count - 1
            return out
        if isinstance(event, ir.ToolDelta):
            if not event.arguments:
                return b""
            delta = {"type": "input_json_delta", "partial_json": event.arguments}
            return self._delta(self._tools[event.index], delta)
        if isinstance(event, ir.Finish):
            stop: Json = {
                "stop_reason": _STOP_OUT[event.stop],
                "stop_sequence": event.stop_sequence,
            }
            message_delta: Json = {"type": "message_delta", "delta": stop}
            message_delta["usage"] = usage_out(event.usage)
            return (
                self._stop_block()
                + ir.sse(message_delta, "message_delta")
                + ir.sse({"type": "message_stop"}, "message_stop")
            )
        return error_event(StreamKind.ANTHROPIC, event.message, error_type=error_type(event.status))
