"""OpenAI chat streams: chunks read into IR events, and written from them."""

from __future__ import annotations

import json
from typing import Any

from hydrallm.formats.errors import error_event
from hydrallm.formats.peek import StreamKind
from hydrallm.formats.sse import SSEEvent
from hydrallm.formats.translate import ir
from hydrallm.formats.translate.chat import (
    _STOP_IN,
    _STOP_OUT,
    _usage_in,
    completion_id,
    error_type,
    usage_out,
)
from hydrallm.formats.translate.ir import Json


class Decoder:
    """OpenAI chat chunks -> IR events."""

    def __init__(self) -> None:
        self._started = False
        self._calls: set[int] = set()
        self._stop: ir.Stop | None = None
        self._usage = ir.Usage()
        self._done = False

    def feed(self, event: SSEEvent) -> list[ir.Event]:
        if event.data.strip() == "[DONE]":
            # The server says the answer is complete, even where it sent no finish_reason
            # (some compatible servers do not): a plain end of turn.
            if self._stop is None and self._started:
                self._stop = "end"
            return self._finish()
        try:
            data = json.loads(event.data)
        except ValueError:
            return []
        if not isinstance(data, dict):
            return []
        if isinstance(data.get("error"), dict):
            error = data["error"]
            code = error.get("code")
            status = code if isinstance(code, int) else 500
            return [ir.StreamError(status, str(error.get("message", "upstream error")))]
        out: list[ir.Event] = []
        if not self._started:
            self._started = True
            out.append(ir.Start(str(data.get("id", "")), str(data.get("model", ""))))
        if data.get("usage"):
            self._usage = _usage_in(data["usage"])
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out.append(ir.ThinkingDelta(reasoning))
            if delta.get("content"):
                out.append(ir.TextDelta(str(delta["content"])))
            for call in delta.get("tool_calls") or []:
                index = int(call.get("index", 0))
                function = call.get("function") or {}
                if index not in self._calls:
                    self._calls.add(index)
                    out.append(ir.ToolStart(index, str(call.get("id")), str(function.get("name"))))
                if function.get("arguments"):
                    out.append(ir.ToolDelta(index, str(function["arguments"])))
            if choice.get("finish_reason"):
                self._stop = _STOP_IN.get(str(choice["finish_reason"]), "end")
        return out

    def _finish(self) -> list[ir.Event]:
        if self._done or self._stop is None:
            return []
        self._done = True
        return [ir.Finish(self._stop, self._usage)]

    def close(self) -> list[ir.Event]:
        # Some compatible servers end without [DONE]; a finish_reason seen means complete.
        return self._finish()


class Encoder:
    """IR events -> OpenAI chat chunks."""

    def __init__(self, request: ir.Request) -> None:
        self._usage = request.include_usage
        self._id = ""
        self._model = ""
        self._created = request.created
        self._first = True
        self._empty: set[int] = set()  # tool calls without arguments so far

    def _chunk(self, delta: Json, finish: str | None = None, **extra: Any) -> bytes:
        if self._first:
            delta = {"role": "assistant"} | delta
            self._first = False
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [choice],
        } | extra
        return ir.sse(chunk)

    def encode(self, event: ir.Event) -> bytes:
        if isinstance(event, ir.Start):
            self._id, self._model = completion_id(event.id), event.model
            return self._chunk({"content": ""})
        if isinstance(event, ir.TextDelta):
            return self._chunk({"content": event.text})
        if isinstance(event, ir.ThinkingDelta):
            return b""  # Chat Completions has no reasoning in its answer
        if isinstance(event, ir.ToolStart):
            call = {
                "index": event.index,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            self._empty.add(event.index)
            return self._chunk({"tool_calls": [call]})
        if isinstance(event, ir.ToolDelta):
            if not event.arguments:
                return b""
            self._empty.discard(event.index)
            call = {"index": event.index, "function": {"arguments": event.arguments}}
            return self._chunk({"tool_calls": [call]})
        if isinstance(event, ir.Finish):
            # A call without arguments still gets a JSON object, as a whole answer has.
            out = b"".join(
                self._chunk({"tool_calls": [{"index": i, "function": {"arguments": "{}"}}]})
                for i in sorted(self._empty)
            )
            out += self._chunk({}, _STOP_OUT[event.stop])
            if self._usage:
                usage = {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": usage_out(event.usage),
                }
                out += ir.sse(usage)
            return out + b"data: [DONE]\n\n"
        return error_event(
            StreamKind.OPENAI_CHAT, event.message, error_type=error_type(event.status)
        )
