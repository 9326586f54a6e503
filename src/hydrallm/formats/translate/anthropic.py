"""Anthropic Messages: read and write requests, responses and streams."""

from __future__ import annotations

import json
from typing import Any

from hydrallm.formats.errors import error_event
from hydrallm.formats.peek import StreamKind
from hydrallm.formats.sse import SSEEvent
from hydrallm.formats.translate import ir
from hydrallm.formats.translate.ir import BadRequest, Json, Untranslatable

DEFAULT_MAX_TOKENS = 8192
# Budgets for a reasoning effort on a target that takes a token budget.
EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
_STOP_OUT = {
    "end": "end_turn",
    "length": "max_tokens",
    "tool": "tool_use",
    "stop_sequence": "stop_sequence",
    "filter": "refusal",
}
_STOP_IN: dict[str, ir.Stop] = {
    "end_turn": "end",
    "pause_turn": "end",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool",
    "stop_sequence": "stop_sequence",
    "refusal": "filter",
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


# --- requests -----------------------------------------------------------------------


def _image(source: Json) -> ir.Image:
    kind = source.get("type")
    if kind == "base64":
        return ir.Image(media_type=source.get("media_type"), data=source.get("data"))
    if kind == "url":
        return ir.Image(url=source.get("url"))
    raise Untranslatable(f"an image source of type {kind!r} has no counterpart")


def _blocks(content: Any) -> list[Json]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or a list of blocks")
    return [b for b in content if isinstance(b, dict)]


def _result_content(content: Any) -> list[ir.Text | ir.Image]:
    if content is None:
        return []
    out: list[ir.Text | ir.Image] = []
    for block in _blocks(content):
        if block.get("type") == "text":
            out.append(ir.Text(str(block.get("text", ""))))
        elif block.get("type") == "image":
            out.append(_image(block.get("source") or {}))
    return out


def parse_request(body: Json) -> ir.Request:
    messages: list[ir.Message] = []
    system: list[str] = []
    raw_system = body.get("system")
    if raw_system:
        system.extend(str(b.get("text", "")) for b in _blocks(raw_system))
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise BadRequest("messages: a list is required")
    for message in raw_messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":  # Claude Code -p sends system turns inside messages
            system.extend(str(b.get("text", "")) for b in _blocks(message.get("content")))
            continue
        if role not in ("user", "assistant"):
            raise BadRequest(f"messages: unknown role {role!r}")
        parts: list[ir.Part] = []
        for block in _blocks(message.get("content")):
            kind = block.get("type")
            if kind == "text":
                parts.append(ir.Text(str(block.get("text", ""))))
            elif kind == "image":
                parts.append(_image(block.get("source") or {}))
            elif kind == "tool_use":
                args = ir.dumps(block.get("input") or {})
                parts.append(ir.ToolCall(str(block.get("id")), str(block.get("name")), args))
            elif kind == "tool_result":
                parts.append(
                    ir.ToolResult(
                        str(block.get("tool_use_id")),
                        _result_content(block.get("content")),
                        bool(block.get("is_error", False)),
                    )
                )
            elif kind in ("thinking", "redacted_thinking"):
                continue  # signed by Anthropic: another family refuses or ignores it
            elif kind == "document":
                raise Untranslatable("document blocks have no counterpart on this target")
            elif kind in ("server_tool_use", "web_search_tool_result", "mcp_tool_use"):
                raise Untranslatable(f"{kind} blocks come from a server-side tool")
        messages.append(ir.Message(role, parts))
    request = ir.Request(messages=messages, system=system, model=body.get("model"))
    for tool in body.get("tools") or []:
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise Untranslatable(f"the Anthropic-defined tool {kind!r} has no counterpart")
        schema = tool.get("input_schema") or {"type": "object", "properties": {}}
        request.tools.append(ir.Tool(str(tool.get("name")), tool.get("description"), schema))
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "tool":
            request.tool_choice, request.tool_choice_is_name = str(choice.get("name")), True
        elif kind in ("auto", "none"):
            request.tool_choice = kind
        elif kind == "any":
            request.tool_choice = "required"
        if choice.get("disable_parallel_tool_use"):
            request.parallel_tool_calls = False
    request.max_tokens = body.get("max_tokens")
    request.temperature = body.get("temperature")
    request.top_p = body.get("top_p")
    request.top_k = body.get("top_k")
    request.stop = list(body.get("stop_sequences") or [])
    request.stream = bool(body.get("stream"))
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        request.wants_reasoning = True
        request.thinking_budget = thinking.get("budget_tokens")
        if request.thinking_budget is None:
            request.effort = "medium"
    config = body.get("output_config")
    if isinstance(config, dict):
        effort = config.get("effort")
        if effort in ("low", "medium", "high"):
            request.effort = effort
        elif effort == "max":
            request.effort = "high"
        fmt = config.get("format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            request.output = ir.OutputFormat(fmt.get("schema"))
    return request


def _image_block(image: ir.Image) -> Json:
    if image.url is not None:
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    source = {"type": "base64", "media_type": image.media_type, "data": image.data}
    return {"type": "image", "source": source}


def _content(part: ir.Part) -> Json | None:
    if isinstance(part, ir.Text):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, ir.Image):
        return _image_block(part)
    if isinstance(part, ir.ToolCall):
        args = ir.arguments_object(part.arguments)
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": args}
    if isinstance(part, ir.ToolResult):
        blocks = [_content(p) for p in part.content]
        result: Json = {"type": "tool_result", "tool_use_id": part.id}
        result["content"] = [b for b in blocks if b is not None]
        if part.is_error:
            result["is_error"] = True
        return result
    return None  # thinking of another family is never replayed


def build_request(request: ir.Request) -> Json:
    body: Json = {"model": request.model}
    if request.system:
        body["system"] = "\n\n".join(request.system)
    messages = []
    for message in ir.merge_messages(request.messages):
        blocks = [b for b in map(_content, message.parts) if b is not None]
        # Anthropic wants tool results first in their user turn.
        blocks.sort(key=lambda b: b["type"] != "tool_result")
        if blocks:
            messages.append({"role": message.role, "content": blocks})
    body["messages"] = messages
    body["max_tokens"] = request.max_tokens or DEFAULT_MAX_TOKENS
    if request.tools:
        body["tools"] = [
            {"name": t.name, "input_schema": t.parameters}
            | ({"description": t.description} if t.description else {})
            for t in request.tools
        ]
    choice: Json | None = None
    if request.tool_choice_is_name:
        choice = {"type": "tool", "name": request.tool_choice}
    elif request.tool_choice == "required":
        choice = {"type": "any"}
    elif request.tool_choice in ("auto", "none"):
        choice = {"type": request.tool_choice}
    if request.parallel_tool_calls is False and request.tools:
        choice = (choice or {"type": "auto"}) | {"disable_parallel_tool_use": True}
    if choice is not None and request.tools:
        body["tool_choice"] = choice
    budget = request.thinking_budget
    if budget is None and request.effort is not None:
        budget = EFFORT_BUDGET[request.effort]
    forced = request.tool_choice == "required" or request.tool_choice_is_name
    if budget is not None and not forced:
        # Thinking needs budget_tokens >= 1024 and below max_tokens.
        budget = max(budget, 1024)
        if budget >= body["max_tokens"]:
            body["max_tokens"] = budget + (request.max_tokens or DEFAULT_MAX_TOKENS)
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    else:
        # Temperature and top_p are refused together with thinking.
        for key, value in (("temperature", request.temperature), ("top_p", request.top_p)):
            if value is not None:
                body[key] = value
    if request.top_k is not None:
        body["top_k"] = request.top_k
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.output is not None:
        schema = request.output.schema or {"type": "object"}
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if request.stream:
        body["stream"] = True
    return body


# --- responses ----------------------------------------------------------------------


def _usage_in(raw: Json | None) -> ir.Usage:
    raw = raw or {}
    read = int(raw.get("cache_read_input_tokens") or 0)
    write = int(raw.get("cache_creation_input_tokens") or 0)
    uncached = int(raw.get("input_tokens") or 0)
    return ir.Usage(uncached + read + write, int(raw.get("output_tokens") or 0), read, write)


def usage_out(usage: ir.Usage) -> Json:
    uncached = max(usage.input - usage.cache_read - usage.cache_write, 0)
    return {
        "input_tokens": uncached,
        "output_tokens": usage.output,
        "cache_read_input_tokens": usage.cache_read,
        "cache_creation_input_tokens": usage.cache_write,
    }


def parse_response(body: Json) -> ir.Response:
    parts: list[ir.Text | ir.ToolCall | ir.Thinking] = []
    for block in body.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            parts.append(ir.Text(str(block.get("text", ""))))
        elif kind == "tool_use":
            args = ir.dumps(block.get("input") or {})
            parts.append(ir.ToolCall(str(block["id"]), str(block["name"]), args))
        elif kind == "thinking":
            parts.append(ir.Thinking(str(block.get("thinking", ""))))
    stop = _STOP_IN.get(str(body.get("stop_reason")), "end")
    return ir.Response(
        str(body.get("id", "")),
        str(body.get("model", "")),
        ir.coalesce(parts),
        stop,
        body.get("stop_sequence"),
        _usage_in(body.get("usage")),
    )


def build_response(response: ir.Response, request: ir.Request) -> Json:
    content: list[Json] = []
    for part in response.parts:
        if isinstance(part, ir.Text):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, ir.ToolCall):
            args = ir.arguments_object(part.arguments)
            content.append({"type": "tool_use", "id": part.id, "name": part.name, "input": args})
        elif request.wants_reasoning:
            content.append({"type": "thinking", "thinking": part.text, "signature": ""})
    return {
        "id": message_id(response.id),
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": _STOP_OUT[response.stop],
        "stop_sequence": response.stop_sequence,
        "usage": usage_out(response.usage),
    }


def message_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("msg_") else f"msg_{upstream_id}"


# --- streams ------------------------------------------------------------------------


class Decoder:
    """Anthropic SSE events -> IR events."""

    def __init__(self) -> None:
        self._blocks: dict[int, int] = {}  # content block index -> tool call index
        self._usage = ir.Usage()
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
            self._usage = _usage_in(message.get("usage"))
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
            usage = data.get("usage") or {}
            self._usage.output = int(usage.get("output_tokens") or self._usage.output)
            if usage.get("input_tokens") is not None:
                merged = {"output_tokens": self._usage.output} | usage
                self._usage = _usage_in(merged)
            return []
        if kind == "message_stop":
            return [ir.Finish(self._stop, self._usage, self._stop_sequence)]
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
            block = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
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
