"""The internal representation every family is translated through.

Each wire format (Anthropic Messages, OpenAI Chat, OpenAI Responses, Gemini) is read
into these types and written out of them, so N families need 2N converters, not N².
Only what has a counterpart in another family is kept; the rest is dropped on read.
"""

from __future__ import annotations

import json
from dataclasses import field
from typing import Literal

from hydrallm.dataclass import dataclass
from hydrallm.formats.frames import utf8

# Defined with the package (loaded on every start) and named here as ever.
from hydrallm.formats.translate import BadRequest as BadRequest
from hydrallm.formats.translate import Json as Json
from hydrallm.formats.translate import Untranslatable as Untranslatable

Stop = Literal["end", "length", "tool", "stop_sequence", "filter"]
Effort = Literal["minimal", "low", "medium", "high"]


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Image:
    media_type: str | None = None
    data: str | None = None  # base64, when inline
    url: str | None = None  # http(s) URL, when by reference


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of an object


@dataclass(slots=True)
class ToolResult:
    id: str
    content: list[Text | Image]
    is_error: bool = False


@dataclass(slots=True)
class Thinking:
    """Reasoning text the model produced; never replayed to another family."""

    text: str


Part = Text | Image | ToolCall | ToolResult | Thinking


@dataclass(slots=True)
class Message:
    role: Literal["user", "assistant"]
    parts: list[Part]


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None
    parameters: Json


@dataclass(slots=True)
class OutputFormat:
    """`schema` None: any JSON object; else the JSON schema the answer must follow."""

    schema: Json | None = None
    name: str = "response"
    strict: bool | None = None


@dataclass(slots=True)
class Request:
    messages: list[Message]
    system: list[str] = field(default_factory=list)
    model: str | None = None
    tools: list[Tool] = field(default_factory=list)
    # None: the target's default; "auto", "none", "required", or a tool name.
    tool_choice: str | None = None
    tool_choice_is_name: bool = False
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    output: OutputFormat | None = None
    effort: Effort | None = None
    thinking_budget: int | None = None
    wants_reasoning: bool = False  # the client asked to see reasoning
    stream: bool = False
    include_usage: bool = False  # chat clients: stream_options.include_usage
    created: int = 0  # Unix time the answer is dated with (the translator's clock)
    # Responses "custom" (freeform) tools: offered elsewhere as a function taking
    # {"input": text}, and answered to the client as custom tool calls again.
    custom_tools: list[str] = field(default_factory=list)
    # Responses `namespace` tools, flattened: the flat name -> (namespace, name inside it).
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(slots=True)
class Usage:
    """Token counts; `input` counts every prompt token, cache reads and writes included."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


@dataclass(slots=True)
class Response:
    id: str
    model: str
    parts: list[Text | ToolCall | Thinking]
    stop: Stop = "end"
    stop_sequence: str | None = None
    usage: Usage = field(default_factory=Usage)


# --- stream events ------------------------------------------------------------------


@dataclass(slots=True)
class Start:
    id: str
    model: str
    usage: Usage | None = None


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str


@dataclass(slots=True)
class ToolStart:
    index: int  # order of the call within the answer
    id: str
    name: str


@dataclass(slots=True)
class ToolDelta:
    index: int
    arguments: str


@dataclass(slots=True)
class Finish:
    stop: Stop
    usage: Usage
    stop_sequence: str | None = None


@dataclass(slots=True)
class StreamError:
    """An error the upstream reported inside its stream."""

    status: int
    message: str


Event = Start | TextDelta | ThinkingDelta | ToolStart | ToolDelta | Finish | StreamError


def response_events(response: Response) -> list[Event]:
    """The events a stream of `response` carries (for encoders and tests)."""
    events: list[Event] = [Start(response.id, response.model)]
    calls = 0
    for part in response.parts:
        if isinstance(part, Text):
            events.append(TextDelta(part.text))
        elif isinstance(part, Thinking):
            events.append(ThinkingDelta(part.text))
        else:
            events.append(ToolStart(calls, part.id, part.name))
            events.append(ToolDelta(calls, part.arguments))
            calls += 1
    events.append(Finish(response.stop, response.usage, response.stop_sequence))
    return events


class Accumulator:
    """Builds a `Response` from stream events (the decoders' `close`, and tests)."""

    def __init__(self) -> None:
        self.response = Response("", "", [])
        self.finished = False
        self.error: StreamError | None = None
        self._calls: dict[int, ToolCall] = {}

    def add(self, event: Event) -> None:
        parts = self.response.parts
        if isinstance(event, Start):
            self.response.id, self.response.model = event.id, event.model
            if event.usage is not None:
                self.response.usage = event.usage
        elif isinstance(event, TextDelta):
            if parts and isinstance(parts[-1], Text):
                parts[-1].text += event.text
            else:
                parts.append(Text(event.text))
        elif isinstance(event, ThinkingDelta):
            if parts and isinstance(parts[-1], Thinking):
                parts[-1].text += event.text
            else:
                parts.append(Thinking(event.text))
        elif isinstance(event, ToolStart):
            call = ToolCall(event.id, event.name, "")
            self._calls[event.index] = call
            parts.append(call)
        elif isinstance(event, ToolDelta):
            self._calls[event.index].arguments += event.arguments
        elif isinstance(event, Finish):
            self.response.stop = event.stop
            self.response.usage = event.usage
            self.response.stop_sequence = event.stop_sequence
            self.finished = True
        else:
            self.error = event


def coalesce(parts: list[Text | ToolCall | Thinking]) -> list[Text | ToolCall | Thinking]:
    """Adjacent texts (and adjacent thoughts) joined, as a stream of them would read."""
    acc = Accumulator()
    calls = 0
    for part in parts:
        if isinstance(part, Text):
            acc.add(TextDelta(part.text))
        elif isinstance(part, Thinking):
            acc.add(ThinkingDelta(part.text))
        else:
            acc.add(ToolStart(calls, part.id, part.name))
            acc.add(ToolDelta(calls, part.arguments))
            calls += 1
    return acc.response.parts


def arguments_object(arguments: str) -> Json:
    """A tool call's JSON arguments as an object ({} when empty or not an object)."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sse(data: object, event: str | None = None) -> bytes:
    """One server-sent event; JSON escapes newlines, so `data` stays on one line."""
    text = data if isinstance(data, str) else dumps(data)
    head = f"event: {event}\n" if event is not None else ""
    return utf8(f"{head}data: {text}\n\n")


def texts(parts: list[Text | Image]) -> str:
    return "".join(p.text for p in parts if isinstance(p, Text))


def data_url(image: Image) -> str:
    if image.url is not None:
        return image.url
    return f"data:{image.media_type or 'image/png'};base64,{image.data or ''}"


def image_from_url(url: str) -> Image:
    """`data:` URLs become inline images; others stay references."""
    if url.startswith("data:"):
        head, _, data = url[5:].partition(",")
        media, _, encoding = head.partition(";")
        if encoding != "base64":
            raise BadRequest("image data URLs must be base64-encoded")
        return Image(media_type=media or "image/png", data=data)
    return Image(url=url)


def merge_messages(messages: list[Message]) -> list[Message]:
    """Consecutive turns of one role joined (Anthropic and Gemini want alternation)."""
    merged: list[Message] = []
    for message in messages:
        if merged and merged[-1].role == message.role:
            merged[-1].parts.extend(message.parts)
        else:
            merged.append(Message(message.role, list(message.parts)))
    return merged


def tool_names(messages: list[Message]) -> dict[str, str]:
    """Tool call id -> name, for targets whose results name the tool (Gemini)."""
    return {
        part.id: part.name
        for message in messages
        for part in message.parts
        if isinstance(part, ToolCall)
    }
