"""`WireFormat`: everything hydrallm knows about one streamed wire format, in one object.

Generic code (the engine's peek, the relay, mid-stream recovery) is handed a format
object by `formats/registry.py` and asks it; it never tests which format it has.
A format owns:

- the pre-commit judgement of the first events (`peeker()`, `first_event`, `first_message`);
- reading a stream as events (`reader()`), in-stream error detection
  (`is_error_event`, `maybe_error`) and terminal-event recognition (`is_terminal`);
- the error event hydrallm writes to a client after commit (`error_event`);
- token usage from a JSON body or from stream events (`usage_from_body`, `usage_from_event`);
- capabilities as data (`supports_recovery`, `writes_errors`, `terminal_event`);
- recovery, by delegation to transcript/splice/prefill (`new_transcript`, `prefill_body`,
  `splicer`): those modules keep their own logic and are keyed by `kind`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, NamedTuple, Protocol

from hydrallm.config import PrefillFlag
from hydrallm.formats import frames, prefill, splice
from hydrallm.formats.eventstream import Message
from hydrallm.formats.frames import Event, EventSplitter, parse_event
from hydrallm.formats.peek import (
    COMMIT,
    DEFAULT_MAX_BYTES,
    Codec,
    Peeker,
    StreamKind,
    Verdict,
)
from hydrallm.formats.splice import Splicer
from hydrallm.formats.sse import SSEEvent
from hydrallm.formats.transcript import Transcript

__all__ = [
    "EventReader",
    "SSEFormat",
    "SSEReader",
    "Usage",
    "WireFormat",
    "int_field",
    "sse_json",
    "usage_of",
]


class Usage(NamedTuple):
    """Tokens one answer used, as the upstream reported them (None: not reported).

    A named tuple, not a frozen dataclass: one is made per answer on the journal's path,
    and a tuple is built several times faster.

    ``input_tokens`` are the input tokens neither read from nor written to the prompt
    cache (Anthropic's and Bedrock's meaning); OpenAI's ``prompt_tokens`` /
    ``input_tokens`` include the cached ones, so its formats subtract them. Each field
    then merges on its own (see `merged`), and `total_input` is the same sum for every
    API. OpenAI reports no cache writes.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None

    def merged(self, later: Usage | None) -> Usage:
        """This usage updated by a later report: each field the later one has wins.

        Streams report usage in steps (Anthropic: input at `message_start`, the final
        output count at `message_delta`); each step's numbers are cumulative.
        """
        if later is None:
            return self
        return Usage(
            later.input_tokens if later.input_tokens is not None else self.input_tokens,
            later.output_tokens if later.output_tokens is not None else self.output_tokens,
            later.cache_read_tokens
            if later.cache_read_tokens is not None
            else self.cache_read_tokens,
            later.cache_write_tokens
            if later.cache_write_tokens is not None
            else self.cache_write_tokens,
        )

    @property
    def total_input(self) -> int | None:
        """Every input token, cached or not (None when the input was not reported)."""
        if self.input_tokens is None:
            return None
        return self.input_tokens + (self.cache_read_tokens or 0) + (self.cache_write_tokens or 0)

    @property
    def empty(self) -> bool:
        return (
            self.input_tokens is None
            and self.output_tokens is None
            and self.cache_read_tokens is None
            and self.cache_write_tokens is None
        )


def usage_of(obj: object) -> Usage | None:
    """THE usage reader: one upstream ``usage`` object of any API, recognised by its names;
    None when it is not one or states no count.  Format modules find the object in their
    events and bodies; the journal's meter finds it in relayed bytes; key pools read the
    prompt-cache share from it (`routing.pooling`).  All of them read it here.

    - OpenAI chat: ``prompt_tokens`` (cached included), ``completion_tokens``,
      ``prompt_tokens_details.cached_tokens``;
    - OpenAI Responses: ``input_tokens`` (cached included), ``output_tokens``,
      ``input_tokens_details.cached_tokens``;
    - Anthropic Messages: ``input_tokens`` (uncached), ``output_tokens``,
      ``cache_read_input_tokens``, ``cache_creation_input_tokens``;
    - Bedrock Converse: ``inputTokens`` (uncached), ``outputTokens``,
      ``cacheReadInputTokens``, ``cacheWriteInputTokens`` (Nova's invoke body: ``...Count``);
    - Bedrock invocation metrics: ``inputTokenCount``, ``outputTokenCount``,
      ``cacheReadInputTokenCount``, ``cacheWriteInputTokenCount``;
    - Gemini ``usageMetadata``: ``promptTokenCount`` (cached included),
      ``candidatesTokenCount`` + ``thoughtsTokenCount`` (billed as output),
      ``cachedContentTokenCount``.
    """
    if type(obj) is not dict and not isinstance(obj, Mapping):
        return None
    get = obj.get
    if "prompt_tokens" in obj or "completion_tokens" in obj:
        found = _cached_in(
            _count(get("prompt_tokens")),
            _count(get("completion_tokens")),
            _detail(obj, "prompt_tokens_details"),
        )
    elif "input_tokens" in obj or "output_tokens" in obj:
        cached = _detail(obj, "input_tokens_details")
        if cached is not None:  # Responses: its input count includes the cached part
            found = _cached_in(_count(get("input_tokens")), _count(get("output_tokens")), cached)
        else:
            found = Usage(
                _count(get("input_tokens")),
                _count(get("output_tokens")),
                _count(get("cache_read_input_tokens")),
                _count(get("cache_creation_input_tokens")),
            )
    elif "inputTokens" in obj or "outputTokens" in obj or "inputTokenCount" in obj:
        read = _count(get("cacheReadInputTokens"))
        write = _count(get("cacheWriteInputTokens"))
        found = Usage(
            _count(get("inputTokens", get("inputTokenCount"))),
            _count(get("outputTokens", get("outputTokenCount"))),
            _count(get("cacheReadInputTokenCount")) if read is None else read,
            _count(get("cacheWriteInputTokenCount")) if write is None else write,
        )
    elif "promptTokenCount" in obj or "candidatesTokenCount" in obj:
        output = _count(get("candidatesTokenCount"))
        thoughts = _count(get("thoughtsTokenCount"))
        if output is not None and thoughts is not None:
            output += thoughts
        found = _cached_in(
            _count(get("promptTokenCount")), output, _count(get("cachedContentTokenCount"))
        )
    else:
        return None
    return None if found == _NOTHING else found


_NOTHING = Usage()


def _count(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _detail(usage: Mapping[str, Any], name: str) -> int | None:
    """OpenAI's `cached_tokens`, in the details object `name`."""
    details = usage.get(name)
    return _count(details.get("cached_tokens")) if isinstance(details, Mapping) else None


def _cached_in(total: int | None, output: int | None, cached: int | None) -> Usage:
    """An input count that includes the cached part: the rest is `input_tokens`."""
    if total is not None and cached is not None:
        total = max(0, total - cached)
    return Usage(total, output, cached)


def int_field(data: Mapping[str, Any], *path: str) -> int | None:
    """``data[path[0]][path[1]]...`` when it is a non-negative int, else None."""
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


class EventReader(Protocol):
    """Cuts a stream's bytes into events; a partial event is held until its end."""

    def feed(self, data: bytes) -> list[Event]: ...


class SSEReader:
    """SSE bytes to events (the raw bytes of each kept: see `frames.Event`)."""

    __slots__ = ("_split",)

    def __init__(self) -> None:
        self._split = EventSplitter()

    def feed(self, data: bytes) -> list[Event]:
        return [parse_event(raw) for raw in self._split.feed(data)]


class _NoEvents:
    """A stream hydrallm does not read: no events, ever."""

    __slots__ = ()

    def feed(self, data: bytes) -> list[Event]:
        return []


class WireFormat:
    """Base: a stream hydrallm cannot read. Subclasses (one module each) override.

    Instances are immutable singletons, compared with ``is``.
    """

    name: ClassVar[str] = "passthrough"
    kind: ClassVar[StreamKind] = StreamKind.UNKNOWN
    # Values of Codec: "sse" | "eventstream" | "raw".
    codec: ClassVar[Codec] = "raw"
    # The error event of `error_event` exists (else a broken stream is cut, not ended).
    writes_errors: ClassVar[bool] = False
    # A broken stream can be finished on another model (transcript/splice/prefill).
    supports_recovery: ClassVar[bool] = False
    # What hydrallm writes to end a stream whose answer was finished but whose terminal
    # event never came; None when the format has no such standalone event.
    terminal_event: ClassVar[bytes | None] = None

    def __repr__(self) -> str:
        return f"<wire format {self.name}>"

    # -- pre-commit judgement ---------------------------------------------------------

    def peeker(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Peeker:
        """A fresh pre-commit peek for one stream of this format."""
        return Peeker(self, max_bytes=max_bytes)

    def first_event(self, event: SSEEvent) -> Verdict | None:
        """Before commit, an SSE event: commit, a (retryable or final) failure, or None."""
        return COMMIT

    def first_message(self, message: Message) -> Verdict:
        """Before commit, the first event-stream message: commit or a failure."""
        return COMMIT

    # -- reading the stream -----------------------------------------------------------

    def reader(self) -> EventReader:
        """A reader that cuts this format's bytes into events."""
        return _NoEvents()

    def maybe_error(self, raw: bytes) -> bool:
        """Cheap pre-check on one event's raw bytes: could it be an error event?"""
        return False

    def is_error_event(self, event: Event) -> bool:
        """An upstream's in-stream failure (after which the answer will not go on)."""
        return False

    def is_terminal(self, event: Event) -> bool:
        """The event that ends a complete answer (nothing meaningful follows it)."""
        return False

    def error_event(
        self, message: str, *, error_type: str = "api_error", sequence_number: int = 0
    ) -> bytes:
        """The bytes of the error event hydrallm writes after commit (b"": none exists).

        ``error_type`` is the API's error type ("api_error", "overloaded_error");
        ``sequence_number`` is used by formats that number their events.
        """
        return b""

    # -- usage ------------------------------------------------------------------------

    def usage_from_body(self, body: Mapping[str, Any]) -> Usage | None:
        """Usage from a whole (non-streamed) JSON response body."""
        return None

    def usage_from_event(self, event: Event) -> Usage | None:
        """Usage reported by one stream event (cumulative; see `Usage.merged`)."""
        return None

    def stream_usage(self, chunks: Iterable[bytes]) -> Usage | None:
        """The usage a whole stream reported, its reports merged in order."""
        reader = self.reader()
        total: Usage | None = None
        for chunk in chunks:
            for event in reader.feed(chunk):
                found = self.usage_from_event(event)
                if found is not None:
                    total = found if total is None else total.merged(found)
        return total

    # -- recovery (delegation to transcript / splice / prefill) -------------------------

    def new_transcript(self) -> Transcript:
        """An empty `Transcript` of what the client received (recovery formats only)."""
        raise NotImplementedError(f"{self.name} streams are not recovered")

    def prefill_body(
        self, body: dict[str, Any], text: str, flag: PrefillFlag = "none"
    ) -> bytes | None:
        """The continuation request: ``body`` with ``text`` as the answer so far."""
        raise NotImplementedError(f"{self.name} streams are not recovered")

    def splicer(self, transcript: Transcript, prefill: str | None) -> Splicer:
        """A splicer that turns a continuation into the rest of the client's stream."""
        raise NotImplementedError(f"{self.name} streams are not recovered")


class SSEFormat(WireFormat):
    """Base of the SSE formats hydrallm can recover (OpenAI chat, Responses, Anthropic).

    Error detection and recovery delegate to `frames`, `transcript`, `splice` and
    `prefill`, which keep their own per-format logic keyed by `kind`.
    """

    codec: ClassVar[Codec] = "sse"
    writes_errors: ClassVar[bool] = True
    supports_recovery: ClassVar[bool] = True

    def reader(self) -> EventReader:
        return SSEReader()

    def maybe_error(self, raw: bytes) -> bool:
        return frames.maybe_error(self.kind, raw)

    def is_error_event(self, event: Event) -> bool:
        return frames.is_error_event(self.kind, event)

    def new_transcript(self) -> Transcript:
        return Transcript(self.kind)

    def prefill_body(
        self, body: dict[str, Any], text: str, flag: PrefillFlag = "none"
    ) -> bytes | None:
        return prefill.prefill_body(self.kind, body, text, flag)

    def splicer(self, transcript: Transcript, prefill: str | None) -> Splicer:
        return splice.make_splicer(transcript, prefill)


def sse_json(value: object) -> str:
    """JSON for one SSE data line of an error event hydrallm writes.

    ASCII-only output keeps the frame valid whatever the message holds, and json
    escapes newlines, so the payload stays on one data line.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)
