"""Pre-commit peek: decide when a 2xx stream has really started.

The proxy reads an upstream stream ahead, holding the bytes, until the first
*meaningful* event arrives (the commit point). Until then an error event or a
stream that closes early is a failure of that attempt, which may still be
retried or fall back to another model; after it, bytes go to the client as
they are. :class:`Peeker` is the pure state machine that makes the call.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from hydrallm.formats.eventstream import EventStreamDecoder, EventStreamError, Message
from hydrallm.formats.sse import SSEDecoder, SSEError, SSEEvent

__all__ = [
    "DEFAULT_MAX_BYTES",
    "NON_RETRYABLE_ERROR_TYPES",
    "RETRYABLE_EXCEPTIONS",
    "Commit",
    "Failed",
    "Peeker",
    "StreamKind",
    "Verdict",
    "stream_kind",
]

DEFAULT_MAX_BYTES = 64 * 1024

RETRYABLE_EXCEPTIONS = frozenset(
    {
        "throttlingException",
        "serviceUnavailableException",
        "internalServerException",
        "modelStreamErrorException",
    }
)
"""Bedrock stream exceptions worth another try; others (validationException…) are not."""

NON_RETRYABLE_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "invalid_api_key",
    }
)
"""SSE error types that describe the request itself; the same request fails again."""


class StreamKind(enum.Enum):
    """Wire format of a streamed response body."""

    OPENAI_CHAT = "openai_chat"
    OPENAI_RESPONSES = "openai_responses"
    ANTHROPIC = "anthropic"
    EVENTSTREAM = "eventstream"
    UNKNOWN = "unknown"


def stream_kind(content_type: str, path: str, api_type: str) -> StreamKind | None:
    """Which stream format a response carries, or None when it is not a stream.

    ``api_type`` is the endpoint's type ("openai", "anthropic", "bedrock").
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/vnd.amazon.eventstream":
        return StreamKind.EVENTSTREAM
    if media != "text/event-stream":
        return None
    if api_type == "anthropic":
        return StreamKind.ANTHROPIC
    if "/responses" in path:
        return StreamKind.OPENAI_RESPONSES
    return StreamKind.OPENAI_CHAT


@dataclass(frozen=True, slots=True)
class Commit:
    """The first meaningful event was seen: send what was held and relay the rest."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The attempt failed before commit.

    ``kind`` is a short label: the upstream's error type or exception name
    ("overloaded_error", "throttlingException", "response.failed"), or the
    proxy's own ("closed_before_first_event", "corrupt_frame",
    "undecodable_event"). ``retryable`` is False when the upstream said the
    request itself is at fault.
    """

    kind: str
    message: str
    retryable: bool = True


Verdict = Commit | Failed

_COMMIT = Commit()

# Responses API events that only announce what is coming.
_RESPONSES_PREAMBLE = frozenset({"response.created", "response.queued", "response.in_progress"})
_ANTHROPIC_PREAMBLE = frozenset({"message_start", "content_block_start", "ping"})
_ANTHROPIC_CONTENT = frozenset(
    {"content_block_delta", "content_block_stop", "message_delta", "message_stop"}
)


class Peeker:
    """Feed the held bytes of one upstream stream; get a verdict or None (pending).

    ``max_bytes`` bounds how much is held: past it, a stream that has shown
    well-formed SSE commits (the proxy never holds a stream forever), while
    one that has not produced a single line fails as undecodable.
    Once given, the verdict is sticky: later calls return it again.
    """

    def __init__(self, kind: StreamKind, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._kind = kind
        self._max_bytes = max_bytes
        self._seen = 0
        self._verdict: Verdict | None = None
        self._sse = SSEDecoder() if _is_sse(kind) else None
        self._frames = EventStreamDecoder() if kind is StreamKind.EVENTSTREAM else None

    @property
    def verdict(self) -> Verdict | None:
        """The verdict so far, None while pending."""
        return self._verdict

    def feed(self, chunk: bytes) -> Verdict | None:
        """Add upstream bytes; return the verdict once there is one."""
        if self._verdict is None and chunk:
            self._seen += len(chunk)
            self._verdict = self._decide(chunk)
        return self._verdict

    def eof(self) -> Verdict:
        """The upstream ended; a stream with no verdict yet failed."""
        if self._verdict is not None:
            return self._verdict
        verdict: Verdict | None = None
        if self._sse is not None:
            try:
                verdict = self._judge_events(self._sse.flush())
            except SSEError as exc:
                verdict = Failed("undecodable_event", str(exc))
        elif self._frames is not None:
            try:
                self._frames.close()
            except EventStreamError as exc:
                verdict = Failed("closed_before_first_event", str(exc))
        self._verdict = verdict or Failed(
            "closed_before_first_event", "upstream closed the stream before its first event"
        )
        return self._verdict

    def _decide(self, chunk: bytes) -> Verdict | None:
        if self._sse is not None:
            return self._decide_sse(self._sse, chunk)
        if self._frames is not None:
            return self._decide_frames(self._frames, chunk)
        return _COMMIT

    def _decide_sse(self, decoder: SSEDecoder, chunk: bytes) -> Verdict | None:
        try:
            verdict = self._judge_events(decoder.feed(chunk))
        except SSEError as exc:
            return Failed("undecodable_event", str(exc))
        if verdict is None and self._seen > self._max_bytes:
            if decoder.lines_seen:
                return _COMMIT
            return Failed("undecodable_event", f"no SSE line in the first {self._seen} bytes")
        return verdict

    def _judge_events(self, events: list[SSEEvent]) -> Verdict | None:
        for event in events:
            if self._kind is StreamKind.ANTHROPIC:
                verdict = _judge_anthropic(event)
            elif self._kind is StreamKind.OPENAI_RESPONSES:
                verdict = _judge_responses(event)
            else:
                verdict = _judge_chat(event)
            if verdict is not None:
                return verdict
        return None

    def _decide_frames(self, decoder: EventStreamDecoder, chunk: bytes) -> Verdict | None:
        try:
            messages = decoder.feed(chunk)
        except EventStreamError as exc:
            return Failed("corrupt_frame", str(exc))
        return _judge_frame(messages[0]) if messages else None


def _is_sse(kind: StreamKind) -> bool:
    return kind in (StreamKind.OPENAI_CHAT, StreamKind.OPENAI_RESPONSES, StreamKind.ANTHROPIC)


def _parse(event: SSEEvent) -> dict[str, Any] | Failed:
    try:
        data = json.loads(event.data)
    except ValueError:
        return Failed("undecodable_event", f"event data is not JSON: {event.data[:200]!r}")
    if not isinstance(data, dict):
        return Failed("undecodable_event", f"event data is not a JSON object: {event.data[:200]!r}")
    return data


def _error_failure(error: object, fallback_kind: str, *, prefer_code: bool = False) -> Failed:
    """Build a Failed from an ``{"type", "code", "message"}`` error object.

    OpenAI's ``code`` is the specific one ("rate_limit_exceeded" where
    ``type`` is "tokens"), so OpenAI callers prefer it; Anthropic has ``type`` only.
    """
    kind, message = fallback_kind, ""
    if isinstance(error, dict):
        keys = ("code", "type") if prefer_code else ("type", "code")
        labels = [error.get(key) for key in keys]
        kind = next((x for x in labels if isinstance(x, str) and x), fallback_kind)
        text = error.get("message")
        message = text if isinstance(text, str) else ""
    elif isinstance(error, str):
        message = error
    retryable = kind not in NON_RETRYABLE_ERROR_TYPES
    return Failed(kind, message or "upstream sent an error event", retryable)


def _judge_chat(event: SSEEvent) -> Verdict | None:
    if event.data.strip() == "[DONE]":
        return _COMMIT
    if not event.data.strip():
        return None
    data = _parse(event)
    if isinstance(data, Failed):
        return data
    if data.get("error") or event.event == "error":
        return _error_failure(data.get("error", data), "error", prefer_code=True)
    return _COMMIT


def _judge_responses(event: SSEEvent) -> Verdict | None:
    if event.data.strip() == "[DONE]":
        return _COMMIT
    data = _parse(event)
    if isinstance(data, Failed):
        return data
    name = data.get("type") if isinstance(data.get("type"), str) else event.event
    if name == "error" or event.event == "error":
        # The live API nests the fields under "error"; the reference has them flat.
        nested = data.get("error")
        flat = {key: value for key, value in data.items() if key != "type"}
        return _error_failure(
            nested if isinstance(nested, dict) else flat, "error", prefer_code=True
        )
    if name == "response.failed":
        response = data.get("response")
        error = response.get("error") if isinstance(response, dict) else None
        detail = _error_failure(error, "response.failed", prefer_code=True)
        label = detail.kind if detail.kind != "response.failed" else ""
        message = f"{label}: {detail.message}" if label else detail.message
        return Failed("response.failed", message, detail.retryable)
    if not isinstance(name, str):
        return Failed("undecodable_event", "Responses event without a type")
    if name in _RESPONSES_PREAMBLE or name.endswith((".added", ".in_progress")):
        return None
    return _COMMIT


def _judge_anthropic(event: SSEEvent) -> Verdict | None:
    data = _parse(event)
    if isinstance(data, Failed):
        return data
    name = event.event or data.get("type")
    if not isinstance(name, str):
        return Failed("undecodable_event", "Anthropic event without a type")
    if name == "error":
        return _error_failure(data.get("error"), "error")
    if name in _ANTHROPIC_CONTENT:
        return _COMMIT
    # message_start, content_block_start, ping, and event types added later
    # are all pending; the byte bound keeps the wait finite.
    return None


def _judge_frame(message: Message) -> Verdict:
    kind = message.message_type
    if kind == "exception":
        name = message.exception_type or "exception"
        return Failed(name, _payload_message(message.payload), name in RETRYABLE_EXCEPTIONS)
    if kind == "error":
        # Protocol-level errors carry their detail in headers, not the payload.
        code = message.headers.get(":error-code")
        text = message.headers.get(":error-message")
        return Failed(
            code if isinstance(code, str) and code else "error",
            text if isinstance(text, str) else "event-stream error",
        )
    return _COMMIT


def _payload_message(payload: bytes) -> str:
    try:
        data = json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", errors="replace")
    if isinstance(data, dict):
        for key in ("message", "Message"):
            value = data.get(key)
            if isinstance(value, str):
                return value
    return payload.decode("utf-8", errors="replace")
