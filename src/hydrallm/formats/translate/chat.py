"""OpenAI Chat Completions: read and write requests, responses and streams."""

from __future__ import annotations

from typing import Any

from hydrallm.formats.translate import ir
from hydrallm.formats.translate.ir import BadRequest, Json, Untranslatable

_STOP_OUT = {
    "end": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool": "tool_calls",
    "filter": "content_filter",
}
_STOP_IN: dict[str, ir.Stop] = {
    "stop": "end",
    "length": "length",
    "tool_calls": "tool",
    "function_call": "tool",
    "content_filter": "filter",
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
}
# Request fields whose meaning no other family can honour.
_UNTRANSLATABLE = ("audio", "web_search_options", "prediction")


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


# --- requests -----------------------------------------------------------------------


def _parts(content: Any) -> list[ir.Text | ir.Image]:
    if content is None:
        return []
    if isinstance(content, str):
        return [ir.Text(content)]
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or a list of parts")
    out: list[ir.Text | ir.Image] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text", "output_text", "refusal"):
            out.append(ir.Text(str(part.get("text") or part.get("refusal") or "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            out.append(ir.image_from_url(str(url)))
        else:
            raise Untranslatable(f"chat content parts of type {kind!r} have no counterpart")
    return out


def parse_request(body: Json) -> ir.Request:
    for key in _UNTRANSLATABLE:
        if body.get(key) is not None:
            raise Untranslatable(f"the chat request field {key!r} has no counterpart")
    if int(body.get("n") or 1) > 1:
        raise Untranslatable("n > 1 (several choices) has no counterpart")
    raw = body.get("messages")
    if not isinstance(raw, list):
        raise BadRequest("messages: a list is required")
    system: list[str] = []
    messages: list[ir.Message] = []
    for message in raw:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.append(ir.texts(_parts(message.get("content"))))
        elif role == "user":
            messages.append(ir.Message("user", list(_parts(message.get("content")))))
        elif role == "assistant":
            parts: list[ir.Part] = list(_parts(message.get("content")))
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                args = str(function.get("arguments") or "{}")
                parts.append(ir.ToolCall(str(call.get("id")), str(function.get("name")), args))
            messages.append(ir.Message("assistant", parts))
        elif role == "tool":
            result = ir.ToolResult(str(message.get("tool_call_id")), _parts(message.get("content")))
            messages.append(ir.Message("user", [result]))
        else:
            raise BadRequest(f"messages: unknown role {role!r}")
    request = ir.Request(messages=messages, system=system, model=body.get("model"))
    for tool in body.get("tools") or []:
        if tool.get("type") != "function":
            raise Untranslatable(f"chat tools of type {tool.get('type')!r} have no counterpart")
        function = tool.get("function") or {}
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        request.tools.append(
            ir.Tool(str(function.get("name")), function.get("description"), schema)
        )
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        request.tool_choice = choice
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        request.tool_choice, request.tool_choice_is_name = str(name), True
    request.parallel_tool_calls = body.get("parallel_tool_calls")
    request.max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    request.temperature = body.get("temperature")
    request.top_p = body.get("top_p")
    stop = body.get("stop")
    request.stop = [stop] if isinstance(stop, str) else list(stop or [])
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            request.output = ir.OutputFormat()
        elif fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema") or {}
            request.output = ir.OutputFormat(
                spec.get("schema"), str(spec.get("name", "response")), spec.get("strict")
            )
    effort = body.get("reasoning_effort")
    if effort in ("minimal", "low", "medium", "high"):
        request.effort = effort
    request.stream = bool(body.get("stream"))
    options = body.get("stream_options")
    request.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return request


def _content(parts: list[ir.Part]) -> str | list[Json]:
    if all(isinstance(p, ir.Text) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, ir.Text))
    out: list[Json] = []
    for part in parts:
        if isinstance(part, ir.Text):
            out.append({"type": "text", "text": part.text})
        elif isinstance(part, ir.Image):
            out.append({"type": "image_url", "image_url": {"url": ir.data_url(part)}})
    return out


def build_request(request: ir.Request) -> Json:
    messages: list[Json] = []
    if request.system:
        messages.append({"role": "system", "content": "\n\n".join(request.system)})
    for message in request.messages:
        plain = [p for p in message.parts if isinstance(p, (ir.Text, ir.Image))]
        if message.role == "assistant":
            out: Json = {"role": "assistant", "content": _content(list(plain)) or None}
            calls = [p for p in message.parts if isinstance(p, ir.ToolCall)]
            if calls:
                out["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments or "{}"},
                    }
                    for c in calls
                ]
            if out["content"] is not None or calls:
                messages.append(out)
            continue
        for part in message.parts:
            if isinstance(part, ir.ToolResult):
                # Chat tool messages take text only; images in results are described.
                text = ir.texts(part.content)
                if any(isinstance(p, ir.Image) for p in part.content):
                    text += "\n[image omitted]"
                if part.is_error:
                    text = f"Error: {text}"
                messages.append({"role": "tool", "tool_call_id": part.id, "content": text})
        if plain:
            messages.append({"role": "user", "content": _content(list(plain))})
    body: Json = {"model": request.model, "messages": messages}
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "parameters": t.parameters}
                | ({"description": t.description} if t.description else {}),
            }
            for t in request.tools
        ]
        if request.tool_choice_is_name:
            body["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice}}
        elif request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    for key, value in (("temperature", request.temperature), ("top_p", request.top_p)):
        if value is not None:
            body[key] = value
    if request.stop:
        body["stop"] = request.stop
    if request.output is not None:
        if request.output.schema is None:
            body["response_format"] = {"type": "json_object"}
        else:
            spec: Json = {"name": request.output.name, "schema": request.output.schema}
            if request.output.strict is not None:
                spec["strict"] = request.output.strict
            body["response_format"] = {"type": "json_schema", "json_schema": spec}
    effort = request.effort
    if effort is None and request.thinking_budget is not None:
        effort = "low" if request.thinking_budget < 4096 else "medium"
        effort = "high" if request.thinking_budget >= 16384 else effort
    if effort is not None:
        body["reasoning_effort"] = effort
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


# --- responses ----------------------------------------------------------------------


def _usage_in(raw: Json | None) -> ir.Usage:
    raw = raw or {}
    details = raw.get("prompt_tokens_details") or {}
    out_details = raw.get("completion_tokens_details") or {}
    return ir.Usage(
        int(raw.get("prompt_tokens") or 0),
        int(raw.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or raw.get("prompt_cache_hit_tokens") or 0),
        0,
        int(out_details.get("reasoning_tokens") or 0),
    )


def usage_out(usage: ir.Usage) -> Json:
    return {
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.input + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    }


def parse_response(body: Json) -> ir.Response:
    choices = body.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    parts: list[ir.Text | ir.ToolCall | ir.Thinking] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        parts.append(ir.Thinking(reasoning))
    if message.get("content"):
        parts.append(ir.Text(str(message["content"])))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        parts.append(
            ir.ToolCall(
                str(call.get("id")), str(function.get("name")), function.get("arguments") or ""
            )
        )
    stop = _STOP_IN.get(str(choice.get("finish_reason")), "end")
    return ir.Response(
        str(body.get("id", "")), str(body.get("model", "")), parts, stop, None,
        _usage_in(body.get("usage")),
    )  # fmt: skip


def completion_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("chatcmpl") else f"chatcmpl-{upstream_id}"


def build_response(response: ir.Response, request: ir.Request) -> Json:
    text = "".join(p.text for p in response.parts if isinstance(p, ir.Text))
    calls = [p for p in response.parts if isinstance(p, ir.ToolCall)]
    message: Json = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments or "{}"},
            }
            for c in calls
        ]
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": _STOP_OUT[response.stop],
        "logprobs": None,
    }
    return {
        "id": completion_id(response.id),
        "object": "chat.completion",
        "created": request.created,
        "model": response.model,
        "choices": [choice],
        "usage": usage_out(response.usage),
    }
