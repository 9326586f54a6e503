"""Property tests: requests keep their meaning; a stream reads as the whole answer."""

from __future__ import annotations

import base64
import json
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hydrallm.formats.sse import SSEDecoder
from hydrallm.formats.translate import (
    BadRequest,
    MalformedUpstream,
    Untranslatable,
    anthropic,
    anthropic_stream,
    chat,
    chat_stream,
    gemini,
    ir,
    translator_for,
)
from hydrallm.testing import answers
from hydrallm.testing.gemini import Answer, answer_chunks, validate, whole_answer

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLIENTS = ("anthropic", "chat", "responses")
UPSTREAMS = ("anthropic", "chat", "gemini")
PAIRS = [(c, u) for c in CLIENTS for u in UPSTREAMS if c != u]

text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24).filter(
    str.strip
)
names = st.sampled_from(["get_weather", "search", "run_cmd"])
args = st.dictionaries(
    st.sampled_from(["city", "q", "n"]), st.one_of(st.integers(-5, 99), text), max_size=3
)


@st.composite
def conversations(draw: st.DrawFn) -> ir.Request:
    """A plausible conversation: user turns, assistant text and calls, their results."""
    messages: list[ir.Message] = []
    serial = 0
    for _ in range(draw(st.integers(1, 3))):
        user: list[ir.Part] = [ir.Text(draw(text))]
        if draw(st.booleans()):
            data = base64.b64encode(draw(st.binary(min_size=1, max_size=12))).decode()
            user.append(ir.Image(draw(st.sampled_from(["image/png", "image/jpeg"])), data))
        messages.append(ir.Message("user", user))
        parts: list[ir.Part] = []
        if draw(st.booleans()):
            parts.append(ir.Text(draw(text)))
        calls = []
        for _ in range(draw(st.integers(0, 2))):
            serial += 1
            calls.append(ir.ToolCall(f"call_{serial}", draw(names), ir.dumps(draw(args))))
        parts.extend(calls)
        if not parts:
            parts.append(ir.Text(draw(text)))
        messages.append(ir.Message("assistant", parts))
        if calls:
            results: list[ir.Part] = [ir.ToolResult(c.id, [ir.Text(draw(text))]) for c in calls]
            messages.append(ir.Message("user", results))
    messages.append(ir.Message("user", [ir.Text(draw(text))]))
    tools = [
        ir.Tool(n, draw(st.one_of(st.none(), text)), {"type": "object", "properties": {}})
        for n in ("get_weather", "search", "run_cmd")
    ]
    choice = draw(st.sampled_from([None, "auto", "none", "required", "search"]))
    schema = draw(
        st.sampled_from([None, {"type": "object", "properties": {"a": {"type": "string"}}}])
    )
    return ir.Request(
        messages=ir.merge_messages(messages),
        system=draw(st.lists(text, max_size=2)),
        tools=tools,
        tool_choice=choice,
        tool_choice_is_name=choice == "search",
        max_tokens=draw(st.integers(1, 100_000)),
        temperature=draw(st.one_of(st.none(), st.floats(0, 1))),
        stop=draw(st.lists(text, max_size=2)),
        output=draw(st.sampled_from([None, ir.OutputFormat(schema, "answer")])),
    )


def responses_body(request: ir.Request) -> dict[str, Any]:
    """The conversation as a Responses client writes it."""
    items: list[dict[str, Any]] = []
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, ir.Image):
                image = {"type": "input_image", "image_url": ir.data_url(part), "detail": "auto"}
                items.append({"type": "message", "role": "user", "content": [image]})
            elif isinstance(part, ir.Text):
                kind = "input_text" if message.role == "user" else "output_text"
                items.append(
                    {
                        "type": "message",
                        "role": message.role,
                        "content": [{"type": kind, "text": part.text}],
                    }
                )
            elif isinstance(part, ir.ToolCall):
                items.append(
                    {
                        "type": "function_call",
                        "call_id": part.id,
                        "name": part.name,
                        "arguments": part.arguments,
                    }
                )
            elif isinstance(part, ir.ToolResult):
                items.append(
                    {
                        "type": "function_call_output",
                        "call_id": part.id,
                        "output": ir.texts(part.content),
                    }
                )
    body: dict[str, Any] = {"model": "m", "input": items, "max_output_tokens": request.max_tokens}
    if request.system:
        body["instructions"] = "\n\n".join(request.system)
    body["tools"] = [
        {"type": "function", "name": t.name, "parameters": t.parameters}
        | ({"description": t.description} if t.description else {})
        for t in request.tools
    ]
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tool_choice_is_name:
        body["tool_choice"] = {"type": "function", "name": request.tool_choice}
    elif request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if request.output is not None:
        fmt = {"type": "json_schema", "name": "answer", "schema": request.output.schema}
        body["text"] = {"format": fmt if request.output.schema else {"type": "json_object"}}
    return body


def client_body(client: str, request: ir.Request) -> dict[str, Any]:
    if client == "anthropic":
        return anthropic.build_request(request)
    if client == "chat":
        return chat.build_request(request)
    return responses_body(request)


def read_gemini(body: dict[str, Any]) -> ir.Request:
    """What a Gemini request says, in IR terms (ids are Gemini's to lose)."""
    messages = []
    for content in body["contents"]:
        parts: list[ir.Part] = []
        for part in content["parts"]:
            if "text" in part:
                parts.append(ir.Text(part["text"]))
            elif "inlineData" in part:
                inline = part["inlineData"]
                parts.append(ir.Image(inline["mimeType"], inline["data"]))
            elif "functionCall" in part:
                call = part["functionCall"]
                parts.append(ir.ToolCall("", call["name"], ir.dumps(call["args"])))
            elif "functionResponse" in part:
                response = part["functionResponse"]
                parts.append(
                    ir.ToolResult(response["name"], [ir.Text(response["response"]["result"])])
                )
        messages.append(ir.Message("assistant" if content["role"] == "model" else "user", parts))
    config = body.get("generationConfig", {})
    system = body.get("systemInstruction", {}).get("parts", [])
    tools = body.get("tools", [{}])[0].get("functionDeclarations", [])
    calling = body.get("toolConfig", {}).get("functionCallingConfig", {})
    allowed = calling.get("allowedFunctionNames")
    mode = {"AUTO": "auto", "NONE": "none", "ANY": "required"}.get(calling.get("mode", ""))
    output = None
    if config.get("responseMimeType") == "application/json":
        output = ir.OutputFormat(config.get("responseJsonSchema"))
    return ir.Request(
        messages=messages,
        tool_choice=allowed[0] if allowed else mode,
        tool_choice_is_name=bool(allowed),
        output=output,
        system=[p["text"] for p in system],
        tools=[ir.Tool(t["name"], t.get("description"), t["parametersJsonSchema"]) for t in tools],
        max_tokens=config.get("maxOutputTokens"),
        temperature=config.get("temperature"),
        stop=config.get("stopSequences", []),
    )


def meaning(request: ir.Request, ids: bool) -> Any:
    """What a model is asked, independent of wire format."""
    turns = []
    names = ir.tool_names(request.messages)
    for message in ir.merge_messages(request.messages):
        parts: list[Any] = []
        for part in message.parts:
            if isinstance(part, ir.Text):
                parts.append(("text", part.text))
            elif isinstance(part, ir.Image):
                parts.append(("image", part.media_type, part.data))
            elif isinstance(part, ir.ToolCall):
                parts.append(
                    ("call", part.id if ids else "", part.name, json.loads(part.arguments))
                )
            elif isinstance(part, ir.ToolResult):
                who = part.id if ids else names.get(part.id, part.id)
                parts.append(("result", who, ir.texts(part.content)))
        # Every family puts a turn's tool results first.
        parts.sort(key=lambda p: p[0] != "result")
        turns.append((message.role, parts))
    return {
        "system": "\n\n".join(request.system),
        "turns": turns,
        "tools": [(t.name, t.description or None, t.parameters) for t in request.tools],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "tool_choice": (request.tool_choice, request.tool_choice_is_name),
        # Anthropic takes a schema only: "any JSON object" is the schema of an object.
        "output": None if request.output is None else (request.output.schema or {"type": "object"}),
    }


@SETTINGS
@given(conversations(), st.sampled_from(PAIRS))
def test_a_translated_request_keeps_its_meaning(request: ir.Request, pair: tuple[Any, Any]) -> None:
    client, upstream = pair
    if client == "responses":
        request.stop = []  # Responses has no stop sequences
    body = json.loads(json.dumps(client_body(client, request)))
    call = translator_for(client, upstream).request(body, "target-model")
    out = json.loads(json.dumps(call.body))
    if upstream == "anthropic":
        back = anthropic.parse_request(out)
    elif upstream == "chat":
        back = chat.parse_request(out)
    else:
        assert validate(out, require_signatures=True) == []
        back = read_gemini(out)
    keep_ids = upstream != "gemini"
    expected = meaning(request, keep_ids)
    if not keep_ids:
        # A Gemini result names its function; the client's result named the call.
        for _, parts in expected["turns"]:
            parts[:] = [
                p
                if p[0] != "result"
                else (
                    "result",
                    ir.tool_names(request.messages)[p[1]]
                    if p[1] in ir.tool_names(request.messages)
                    else p[1],
                    p[2],
                )
                for p in parts
            ]
    assert meaning(back, keep_ids) == expected
    assert back.stop == request.stop


# --- streams --------------------------------------------------------------------------

thoughts = st.builds(ir.Thinking, text)
texts_ = st.builds(ir.Text, text)


@st.composite
def answers_(draw: st.DrawFn) -> ir.Response:
    parts: list[ir.Text | ir.ToolCall | ir.Thinking] = []
    if draw(st.booleans()):
        parts.append(draw(thoughts))
    parts.extend(draw(st.lists(texts_, max_size=2)))
    for n in range(draw(st.integers(0, 2))):
        parts.append(ir.ToolCall(f"call_x{n}", draw(names), ir.dumps(draw(args))))
    stop: ir.Stop = draw(st.sampled_from(["end", "length", "filter"]))
    if any(isinstance(p, ir.ToolCall) for p in parts) and stop == "end":
        stop = "tool"
    usage = ir.Usage(draw(st.integers(0, 10**6)), draw(st.integers(0, 10**5)))
    usage.cache_read = draw(st.integers(0, usage.input))
    return ir.Response("up1", "model-x", parts, stop, None, usage)


_GEMINI_FINISH = {"end": "STOP", "tool": "STOP", "length": "MAX_TOKENS", "filter": "SAFETY"}


def gemini_answer(response: ir.Response) -> tuple[dict[str, Any], list[bytes]]:
    """(whole body, stream events) of `response` as Gemini sends it."""
    parts: list[dict[str, Any]] = []
    for part in response.parts:
        if isinstance(part, ir.Text):
            parts.append({"text": part.text})
        elif isinstance(part, ir.Thinking):
            parts.append({"text": part.text, "thought": True})
        else:
            call = {"id": part.id, "name": part.name, "args": json.loads(part.arguments)}
            parts.append({"functionCall": call})
    usage = {
        "promptTokenCount": response.usage.input,
        "candidatesTokenCount": response.usage.output,
        "cachedContentTokenCount": response.usage.cache_read,
    }
    head = {"responseId": response.id, "modelVersion": response.model}
    finish = _GEMINI_FINISH[response.stop]
    chunks = [head | {"candidates": [{"content": {"role": "model", "parts": [p]}}]} for p in parts]
    last = head | {
        "candidates": [{"content": {"role": "model", "parts": []}, "finishReason": finish}],
        "usageMetadata": usage,
    }
    whole = head | {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish}],
        "usageMetadata": usage,
    }
    return whole, [ir.sse(c) for c in [*chunks, last]]


def upstream_answer(upstream: str, response: ir.Response) -> tuple[dict[str, Any], bytes]:
    wants = ir.Request(messages=[], wants_reasoning=True, include_usage=True)
    if upstream == "gemini":
        whole, events = gemini_answer(response)
        return whole, b"".join(events)
    encoder: Any = (
        anthropic_stream.Encoder(wants) if upstream == "anthropic" else chat_stream.Encoder(wants)
    )
    stream = b"".join(encoder.encode(e) for e in ir.response_events(response))
    builder = anthropic.build_response if upstream == "anthropic" else chat.build_response
    return builder(response, wants), stream


def read_client_stream(client: str, data: bytes, request: ir.Request) -> Any:
    """The client's stream read back into its whole-answer JSON."""
    events = SSEDecoder().feed(data)
    if client == "responses":
        last = json.loads(events[-1].data)
        assert last["type"] in ("response.completed", "response.incomplete")
        return last["response"]
    decoder: Any = anthropic_stream.Decoder() if client == "anthropic" else chat_stream.Decoder()
    acc = ir.Accumulator()
    for event in events:
        for item in decoder.feed(event):
            acc.add(item)
    assert acc.finished
    builder = anthropic.build_response if client == "anthropic" else chat.build_response
    return builder(acc.response, request)


def normal(answer: Any) -> Any:
    """Drop creation times; read tool arguments as JSON (whitespace is not meaning)."""
    answer = json.loads(json.dumps(answer))
    answer.pop("created", None)
    answer.pop("created_at", None)
    for choice in answer.get("choices", []):
        for call in choice["message"].get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    for item in answer.get("output", []):
        if item.get("type") == "function_call":
            item["arguments"] = json.loads(item["arguments"])
    return answer


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points})
    edges = [0, *marks, len(data)]
    return [data[a:b] for a, b in pairwise(edges)]


CLIENT_REQUESTS = {
    "anthropic": {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "q"}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    },
    "chat": {
        "model": "m",
        "messages": [{"role": "user", "content": "q"}],
        "stream_options": {"include_usage": True},
    },
    "responses": {"model": "m", "input": "q", "reasoning": {"summary": "auto"}},
}


def check_stream_equals_whole(
    client: Any, upstream: Any, whole: Any, stream: bytes, points: list[int]
) -> None:
    t = translator_for(client, upstream)
    t.request(dict(CLIENT_REQUESTS[client]), "m")
    expected = json.loads(t.response(json.dumps(whole).encode()))
    s = t.stream()
    out = b"".join(s.feed(piece) for piece in cut(stream, points)) + s.close()
    assert s.finished and s.error is None
    assert normal(read_client_stream(client, out, t.parsed)) == normal(expected)


@SETTINGS
@given(answers_(), st.sampled_from(PAIRS), st.lists(st.integers(0, 10**6), max_size=12))
def test_a_stream_translated_chunk_by_chunk_reads_as_the_translated_whole(
    response: ir.Response, pair: tuple[Any, Any], points: list[int]
) -> None:
    client, upstream = pair
    whole, stream = upstream_answer(upstream, response)
    check_stream_equals_whole(client, upstream, whole, stream, points)


@SETTINGS
@given(
    st.sampled_from(PAIRS),
    text,
    st.integers(1, 4),
    st.booleans(),
    st.lists(st.integers(0, 10**6), max_size=12),
)
def test_the_fakes_streams_read_as_their_whole_answers(
    pair: tuple[Any, Any], words: str, chunk: int, tool: bool, points: list[int]
) -> None:
    """The same property on answers written by the fakes, not by this package."""
    client, upstream = pair
    if upstream == "gemini":
        calls = (("get_weather", {"city": words}),) if tool else ()
        chunks = answer_chunks(
            Answer(text=words, calls=calls, chunk_chars=chunk, thought="hmm"), "g", 1
        )
        whole = whole_answer(chunks)
        stream = b"".join(f"data: {json.dumps(c)}\r\n\r\n".encode() for c in chunks)
    else:
        api = answers.Api.MESSAGES if upstream == "anthropic" else answers.Api.CHAT
        call = answers.ToolCall(arguments=json.dumps({"city": words})) if tool else None
        spec = answers.AnswerSpec(
            "m", "id1", text=words, chunk_words=chunk, tool_call=call, include_usage=True
        )
        whole = answers.json_answer(api, spec)
        stream = b"".join(answers.stream_answer(api, spec).events())
    check_stream_equals_whole(client, upstream, whole, stream, points)


def test_gemini_path_of_a_model_with_odd_characters() -> None:
    assert gemini.path("tunedModels/x y", True) == (
        "/v1beta/models/tunedModels%2Fx%20y:streamGenerateContent",
        "alt=sse",
    )


# --- hostile input ----------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=False), text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "messages",
                    "input",
                    "role",
                    "content",
                    "type",
                    "text",
                    "tools",
                    "tool_choice",
                    "name",
                    "max_tokens",
                    "system",
                    "stop",
                    "source",
                    "image_url",
                    "url",
                    "tool_calls",
                    "function",
                    "arguments",
                    "id",
                    "call_id",
                    "output",
                    "thinking",
                    "response_format",
                    "n",
                ]
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "messages",
                "input",
                "tools",
                "system",
                "stop",
                "n",
                "max_tokens",
                "tool_choice",
                "instructions",
                "reasoning",
            ]
        ),
        json_values,
        max_size=6,
    ),
    st.sampled_from(PAIRS),
)
def test_any_client_body_is_translated_or_refused_with_a_reason(
    body: dict[str, Any], pair: Any
) -> None:
    client, upstream = pair
    try:
        translator_for(client, upstream).request(body, "m")
    except (BadRequest, Untranslatable) as exc:
        assert str(exc)


@SETTINGS
@given(json_values, st.sampled_from(PAIRS))
def test_any_upstream_answer_or_event_is_translated_or_refused_as_malformed(
    value: Any, pair: Any
) -> None:
    client, upstream = pair
    t = translator_for(client, upstream)
    t.request(dict(CLIENT_REQUESTS[client]), "m")
    raw = json.dumps(value).encode()
    try:
        json.loads(t.response(raw))
    except MalformedUpstream:
        pass
    stream = t.stream()
    try:
        stream.feed(b"data: " + raw + b"\n\nevent: message_start\ndata: " + raw + b"\n\n")
        stream.close()
    except MalformedUpstream:
        pass
