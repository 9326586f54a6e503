"""OpenAI Responses, as a client API: read requests, write responses and streams.

A Responses client is served by a chat, Anthropic or Gemini upstream through this
module; Responses is never an upstream target of translation (an `openai` model with
`api = "responses"` gets a Responses client's body as is).
"""

from __future__ import annotations

from typing import Any

from hydrallm.formats.errors import error_event
from hydrallm.formats.peek import StreamKind
from hydrallm.formats.translate import chat, ir
from hydrallm.formats.translate.ir import BadRequest, Json, Untranslatable

# Fields that need OpenAI's server-side state or tools: no other family has them.
_STATEFUL = ("previous_response_id", "conversation", "prompt", "background")


def _parts(content: Any) -> list[ir.Text | ir.Image]:
    if isinstance(content, str):
        return [ir.Text(content)]
    if not isinstance(content, list):
        raise BadRequest("input message content must be a string or a list")
    out: list[ir.Text | ir.Image] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "refusal"):
            out.append(ir.Text(str(part.get("text") or part.get("refusal") or "")))
        elif kind == "input_image" and part.get("image_url"):
            out.append(ir.image_from_url(str(part["image_url"])))
        else:
            raise Untranslatable(f"Responses input parts of type {kind!r} have no counterpart")
    return out


def _custom_tool(tool: Json) -> ir.Tool:
    """A freeform tool as a function of one string; its grammar goes in the description."""
    description = str(tool.get("description") or "")
    fmt = tool.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        description += (
            f"\n\nThe input must follow this {fmt.get('syntax', '')} grammar:\n"
            f"{fmt.get('definition', '')}"
        )
    schema = {
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The raw input text."}},
        "required": ["input"],
    }
    return ir.Tool(str(tool.get("name")), description.strip() or None, schema)


def _custom_input(call: ir.ToolCall) -> str:
    value = ir.arguments_object(call.arguments).get("input", "")
    return value if isinstance(value, str) else ir.dumps(value)


def _flat(item: Json) -> str:
    """A call's tool name as the flattened tools name it (`namespace__name`)."""
    space = item.get("namespace")
    return f"{space}__{item.get('name')}" if space else str(item.get("name"))


def _named(request: ir.Request, name: str) -> Json:
    """The `name` (and `namespace`) fields of a call item for the flat tool `name`."""
    found = request.namespaced.get(name)
    return {"name": name} if found is None else {"namespace": found[0], "name": found[1]}


# Tools OpenAI runs itself that a client merely offers (Codex always offers web_search):
# another family answers without them, as a model that chose not to use them would.  A
# request that forces one (`tool_choice`) cannot be answered so: that model is skipped.
OFFERED_HOSTED = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "image_generation",
        "file_search",
        "code_interpreter",
    }
)


def _add_tool(request: ir.Request, tool: Json, forced: object = None) -> None:
    kind = tool.get("type")
    if kind in OFFERED_HOSTED:
        if isinstance(forced, dict) and forced.get("type") == kind:
            raise Untranslatable(f"the request requires the Responses tool {kind!r}")
        return
    if tool.get("type") == "custom":
        request.tools.append(_custom_tool(tool))
        request.custom_tools.append(str(tool.get("name")))
        return
    if tool.get("type") != "function":
        raise Untranslatable(f"the Responses tool {tool.get('type')!r} runs on OpenAI's side")
    schema = tool.get("parameters") or {"type": "object", "properties": {}}
    request.tools.append(ir.Tool(str(tool.get("name")), tool.get("description"), schema))


def parse_request(body: Json) -> ir.Request:
    for key in _STATEFUL:
        if body.get(key):
            raise Untranslatable(f"the Responses field {key!r} needs OpenAI's server state")
    system: list[str] = []
    if body.get("instructions"):
        system.append(str(body["instructions"]))
    messages: list[ir.Message] = []
    raw = body.get("input")
    items = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise BadRequest("input: a string or a list of items is required")
    for item in items:
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                system.append(ir.texts(_parts(item.get("content"))))
            elif role in ("user", "assistant"):
                messages.append(ir.Message(role, list(_parts(item.get("content")))))
            else:
                raise BadRequest(f"input: unknown role {role!r}")
        elif kind == "function_call":
            call = ir.ToolCall(
                str(item.get("call_id")), _flat(item), str(item.get("arguments") or "")
            )
            messages.append(ir.Message("assistant", [call]))
        elif kind == "function_call_output":
            output = item.get("output")
            content: list[ir.Text | ir.Image] = (
                [ir.Text(output)] if isinstance(output, str) else _parts(output or [])
            )
            messages.append(ir.Message("user", [ir.ToolResult(str(item.get("call_id")), content)]))
        elif kind == "custom_tool_call":
            args = ir.dumps({"input": str(item.get("input") or "")})
            call = ir.ToolCall(str(item.get("call_id")), _flat(item), args)
            messages.append(ir.Message("assistant", [call]))
        elif kind == "custom_tool_call_output":
            output = item.get("output")
            content = [ir.Text(output)] if isinstance(output, str) else _parts(output or [])
            messages.append(ir.Message("user", [ir.ToolResult(str(item.get("call_id")), content)]))
        elif kind == "reasoning":
            continue  # encrypted by OpenAI: no other family can read it
        else:
            raise Untranslatable(f"Responses input items of type {kind!r} have no counterpart")
    request = ir.Request(
        messages=ir.merge_messages(messages), system=system, model=body.get("model")
    )
    for tool in body.get("tools") or []:
        if tool.get("type") == "namespace":
            # A group of the client's own tools (Codex's MCP servers): flattened as
            # `{namespace}__{name}`, and given back under their namespace in the answer.
            space = str(tool.get("name"))
            for inner in tool.get("tools") or []:
                flat = f"{space}__{inner.get('name')}"
                request.namespaced[flat] = (space, str(inner.get("name")))
                _add_tool(request, inner | {"name": flat})
            continue
        _add_tool(request, tool, body.get("tool_choice"))
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        request.tool_choice = choice
    elif isinstance(choice, dict) and choice.get("type") in ("function", "custom"):
        request.tool_choice, request.tool_choice_is_name = str(choice.get("name")), True
    request.parallel_tool_calls = body.get("parallel_tool_calls")
    request.max_tokens = body.get("max_output_tokens")
    request.temperature = body.get("temperature")
    request.top_p = body.get("top_p")
    fmt = (body.get("text") or {}).get("format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            request.output = ir.OutputFormat()
        elif fmt.get("type") == "json_schema":
            request.output = ir.OutputFormat(
                fmt.get("schema"), str(fmt.get("name", "response")), fmt.get("strict")
            )
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        if reasoning.get("effort") in ("minimal", "low", "medium", "high"):
            request.effort = reasoning["effort"]
        request.wants_reasoning = bool(reasoning.get("summary"))
    request.stream = bool(body.get("stream"))
    return request


# --- responses ----------------------------------------------------------------------


def response_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("resp_") else f"resp_{upstream_id}"


def usage_out(usage: ir.Usage) -> Json:
    return {
        "input_tokens": usage.input,
        "input_tokens_details": {"cached_tokens": usage.cache_read},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.input + usage.output,
    }


def _envelope(ident: str, model: str, request: ir.Request, status: str) -> Json:
    return {
        "id": ident,
        "object": "response",
        "created_at": request.created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": request.max_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "tool_choice": "auto",
        "tools": [],
        "metadata": {},
        "usage": None,
    }


def _finished(envelope: Json, stop: ir.Stop, usage: ir.Usage) -> Json:
    if stop in ("length", "filter"):
        envelope["status"] = "incomplete"
        reason = "max_output_tokens" if stop == "length" else "content_filter"
        envelope["incomplete_details"] = {"reason": reason}
    else:
        envelope["status"] = "completed"
    envelope["usage"] = usage_out(usage)
    return envelope


def _items(rid: str, response: ir.Response, request: ir.Request) -> list[Json]:
    """Output items; ids derive from the response id so a stream gives the same ones."""
    items: list[Json] = []
    shown = [p for p in response.parts if request.wants_reasoning or not isinstance(p, ir.Thinking)]
    for n, part in enumerate(shown):
        if isinstance(part, ir.Text):
            content = {"type": "output_text", "text": part.text, "annotations": [], "logprobs": []}
            items.append(
                {"id": f"msg_{rid}_{n}", "type": "message", "status": "completed",
                 "role": "assistant", "content": [content]}
            )  # fmt: skip
        elif isinstance(part, ir.ToolCall) and part.name in request.custom_tools:
            items.append(
                {"id": f"ctc_{rid}_{n}", "type": "custom_tool_call", "status": "completed",
                 "call_id": part.id, **_named(request, part.name), "input": _custom_input(part)}
            )  # fmt: skip
        elif isinstance(part, ir.ToolCall):
            items.append(
                {"id": f"fc_{rid}_{n}", "type": "function_call", "status": "completed",
                 "call_id": part.id, **_named(request, part.name),
                 "arguments": part.arguments or "{}"}
            )  # fmt: skip
        else:
            summary = [{"type": "summary_text", "text": part.text}]
            items.append({"id": f"rs_{rid}_{n}", "type": "reasoning", "summary": summary})
    return items


def build_response(response: ir.Response, request: ir.Request) -> Json:
    rid = response_id(response.id)
    envelope = _envelope(rid, response.model, request, "completed")
    envelope["output"] = _items(rid.removeprefix("resp_"), response, request)
    return _finished(envelope, response.stop, response.usage)


class Encoder:
    """IR events -> Responses SSE events, one output item per text run / call / thought."""

    def __init__(self, request: ir.Request) -> None:
        self._request = request
        self._seq = 0
        self._rid = ""
        self._envelope: Json = {}
        self._acc = ir.Accumulator()
        self._open: Json | None = None  # the item being streamed
        self._index = -1  # its output_index (== its part number)
        self._done: list[Json] = []
        self._calls: dict[int, int] = {}  # tool call index -> part number

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq} | fields
        self._seq += 1
        return ir.sse(data, kind)

    def _close(self) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        i, iid = self._index, item["id"]
        part = self._acc.response.parts[i]
        out = b""
        if item["type"] == "message" and isinstance(part, ir.Text):
            text = part.text
            done = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            out += self._event("response.output_text.done", item_id=iid, output_index=i,
                               content_index=0, text=text, logprobs=[])  # fmt: skip
            out += self._event("response.content_part.done", item_id=iid, output_index=i,
                               content_index=0, part=done)  # fmt: skip
            item = item | {"status": "completed", "content": [done]}
        elif item["type"] == "function_call" and isinstance(part, ir.ToolCall):
            if not part.arguments:  # a whole answer gives "{}" too
                part.arguments = "{}"
                out += self._event("response.function_call_arguments.delta", item_id=iid,
                                   output_index=i, delta="{}")  # fmt: skip
            out += self._event("response.function_call_arguments.done", item_id=iid,
                               output_index=i, arguments=part.arguments,
                               **_named(self._request, part.name))  # fmt: skip
            item = item | {"status": "completed", "arguments": part.arguments}
        elif item["type"] == "custom_tool_call" and isinstance(part, ir.ToolCall):
            # The input arrives as JSON text of {"input": ...}: told whole, once complete.
            text = _custom_input(part)
            if text:
                out += self._event("response.custom_tool_call_input.delta", item_id=iid,
                                   output_index=i, delta=text)  # fmt: skip
            out += self._event("response.custom_tool_call_input.done", item_id=iid,
                               output_index=i, input=text)  # fmt: skip
            item = item | {"status": "completed", "input": text}
        elif isinstance(part, ir.Thinking):
            summary = {"type": "summary_text", "text": part.text}
            out += self._event("response.reasoning_summary_text.done", item_id=iid,
                               output_index=i, summary_index=0, text=part.text)  # fmt: skip
            out += self._event("response.reasoning_summary_part.done", item_id=iid,
                               output_index=i, summary_index=0, part=summary)  # fmt: skip
            item = item | {"summary": [summary]}
        self._done.append(item)
        return out + self._event("response.output_item.done", output_index=i, item=item)

    def _open_item(self, item: Json) -> bytes:
        self._open = item
        self._index = len(self._acc.response.parts) - 1
        return self._event("response.output_item.added", output_index=self._index, item=item)

    def encode(self, event: ir.Event) -> bytes:
        if isinstance(event, ir.StreamError):
            error = chat.error_type(event.status)
            return error_event(StreamKind.OPENAI_RESPONSES, event.message, error_type=error,
                               sequence_number=self._seq)  # fmt: skip
        before = len(self._acc.response.parts)
        if isinstance(event, ir.ThinkingDelta) and not self._request.wants_reasoning:
            return b""
        self._acc.add(event)
        new = len(self._acc.response.parts) > before
        base = self._rid.removeprefix("resp_")
        n = len(self._acc.response.parts) - 1
        if isinstance(event, ir.Start):
            self._rid = response_id(event.id)
            self._envelope = _envelope(self._rid, event.model, self._request, "in_progress")
            return self._event("response.created", response=self._envelope) + self._event(
                "response.in_progress", response=self._envelope
            )
        if isinstance(event, ir.TextDelta):
            out = b""
            if new:
                item = {"id": f"msg_{base}_{n}", "type": "message", "status": "in_progress",
                        "role": "assistant", "content": []}  # fmt: skip
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                out = self._close() + self._open_item(item)
                out += self._event("response.content_part.added", item_id=item["id"],
                                   output_index=n, content_index=0, part=part)  # fmt: skip
            return out + self._event("response.output_text.delta", item_id=f"msg_{base}_{n}",
                                     output_index=n, content_index=0, delta=event.text,
                                     logprobs=[])  # fmt: skip
        if isinstance(event, ir.ThinkingDelta):
            out = b""
            if new:
                item = {"id": f"rs_{base}_{n}", "type": "reasoning", "summary": []}
                out = self._close() + self._open_item(item)
                out += self._event("response.reasoning_summary_part.added", item_id=item["id"],
                                   output_index=n, summary_index=0,
                                   part={"type": "summary_text", "text": ""})  # fmt: skip
            return out + self._event("response.reasoning_summary_text.delta",
                                     item_id=f"rs_{base}_{n}", output_index=n,
                                     summary_index=0, delta=event.text)  # fmt: skip
        if isinstance(event, ir.ToolStart):
            self._calls[event.index] = n
            if event.name in self._request.custom_tools:
                item = {"id": f"ctc_{base}_{n}", "type": "custom_tool_call",
                        "status": "in_progress", "call_id": event.id,
                        **_named(self._request, event.name), "input": ""}  # fmt: skip
                return self._close() + self._open_item(item)
            item = {"id": f"fc_{base}_{n}", "type": "function_call", "status": "in_progress",
                    "call_id": event.id, **_named(self._request, event.name),
                    "arguments": ""}  # fmt: skip
            return self._close() + self._open_item(item)
        if isinstance(event, ir.ToolDelta):
            i = self._calls[event.index]
            call = self._acc.response.parts[i]
            custom = isinstance(call, ir.ToolCall) and call.name in self._request.custom_tools
            if not event.arguments or custom:
                return b""
            return self._event("response.function_call_arguments.delta", item_id=f"fc_{base}_{i}",
                               output_index=i, delta=event.arguments)  # fmt: skip
        assert isinstance(event, ir.Finish)
        out = self._close()
        final = _finished(dict(self._envelope), event.stop, event.usage)
        final["output"] = self._done
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return out + self._event(kind, response=final)
