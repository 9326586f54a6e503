"""Anthropic Messages: read and write requests, responses and streams."""

from __future__ import annotations

import re
from typing import Any

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


_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def tool_id(raw: str) -> str:
    """A call id Anthropic takes (`^[a-zA-Z0-9_-]+$`): some OpenAI-compatible servers
    give ids like `functions.get_weather:0`.  The same id maps the same way in a call
    and in its result, so the pair still matches."""
    return _ID_CHARS.sub("_", raw) or "toolu_"


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
        return {"type": "tool_use", "id": tool_id(part.id), "name": part.name, "input": args}
    if isinstance(part, ir.ToolResult):
        blocks = [_content(p) for p in part.content]
        result: Json = {"type": "tool_result", "tool_use_id": tool_id(part.id)}
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
            content.append(
                {"type": "tool_use", "id": tool_id(part.id), "name": part.name, "input": args}
            )
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


def strip_unsigned_thinking(body: Json) -> bool:
    """Drop thinking blocks without a signature from an Anthropic request, in place.

    They are another family's reasoning, shown to an Anthropic client by this package
    (it cannot sign them); sent back to Anthropic they are refused.  For the engine's
    pass-through of an Anthropic request.  True when a block was dropped.
    """
    dropped = False
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        kept = [
            b
            for b in content
            if not (isinstance(b, dict) and b.get("type") == "thinking" and not b.get("signature"))
        ]
        if len(kept) != len(content):
            message["content"] = kept or [{"type": "text", "text": ""}]
            dropped = True
    return dropped
