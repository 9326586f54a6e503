"""Pre-commit peek: decide when a 2xx stream has really started.

The proxy reads an upstream stream ahead, holding the bytes, until the first
*meaningful* event arrives (the commit point). Until then an error event or a
stream that closes early is a failure of that attempt, which may still be
retried or fall back to another model; after it, bytes go to the client as
they are. :class:`Peeker` is the pure state machine that makes the call; it
knows the codecs (SSE, AWS event-stream, raw bytes) and asks the wire format
(a :class:`Judge`, see `formats/base.py`) what each decoded event means.

Also here: the verdict types, `StreamKind` (the key the recovery modules
transcript/splice/prefill/frames still switch on) and the helpers the format
modules share to read error objects.
"""

from __future__ import annotations

import enum
import json
from typing import Any, Literal, Protocol

from hydrallm.dataclass import dataclass
from hydrallm.formats.eventstream import EventStreamDecoder, EventStreamError, Message
from hydrallm.formats.sse import SSEDecoder, SSEError, SSEEvent

__all__ = [
    "COMMIT",
    "DEFAULT_MAX_BYTES",
    "NON_RETRYABLE_ERROR_TYPES",
    "Codec",
    "Commit",
    "Failed",
    "Judge",
    "Peeker",
    "StreamKind",
    "Verdict",
    "error_failure",
    "parse_data",
]

DEFAULT_MAX_BYTES = 64 * 1024

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

COMMIT = Commit()

Codec = Literal["sse", "eventstream", "raw"]
"""How a stream's bytes are cut into events: SSE, AWS event-stream frames, or not at all."""


class Judge(Protocol):
    """What the peek asks a wire format (every `WireFormat` is one)."""

    @property
    def codec(self) -> Codec: ...

    def first_event(self, event: SSEEvent) -> Verdict | None:
        """An SSE event before commit: commit, fail, or None (still pending)."""
        ...

    def first_message(self, message: Message) -> Verdict:
        """The first event-stream message: commit or fail."""
        ...


class Peeker:
    """Feed the held bytes of one upstream stream; get a verdict or None (pending).

    ``judge`` is the stream's wire format. ``max_bytes`` bounds how much is
    held: past it, a stream that has shown well-formed SSE commits (the proxy
    never holds a stream forever), while one that has not produced a single
    line fails as undecodable. Once given, the verdict is sticky: later calls
    return it again.
    """

    def __init__(self, judge: Judge, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._judge = judge
        self._max_bytes = max_bytes
        self._seen = 0
        self._verdict: Verdict | None = None
        codec = judge.codec
        self._sse = SSEDecoder() if codec == "sse" else None
        self._frames = EventStreamDecoder() if codec == "eventstream" else None

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
        return COMMIT

    def _decide_sse(self, decoder: SSEDecoder, chunk: bytes) -> Verdict | None:
        try:
            verdict = self._judge_events(decoder.feed(chunk))
        except SSEError as exc:
            return Failed("undecodable_event", str(exc))
        if verdict is None and self._seen > self._max_bytes:
            if decoder.lines_seen:
                return COMMIT
            return Failed("undecodable_event", f"no SSE line in the first {self._seen} bytes")
        return verdict

    def _judge_events(self, events: list[SSEEvent]) -> Verdict | None:
        for event in events:
            verdict = self._judge.first_event(event)
            if verdict is not None:
                return verdict
        return None

    def _decide_frames(self, decoder: EventStreamDecoder, chunk: bytes) -> Verdict | None:
        try:
            messages = decoder.feed(chunk)
        except EventStreamError as exc:
            return Failed("corrupt_frame", str(exc))
        return self._judge.first_message(messages[0]) if messages else None


def parse_data(event: SSEEvent) -> dict[str, Any] | Failed:
    """An SSE event's data as a JSON object, or the failure to read it as one."""
    try:
        data = json.loads(event.data)
    except ValueError:
        return Failed("undecodable_event", f"event data is not JSON: {event.data[:200]!r}")
    if not isinstance(data, dict):
        return Failed("undecodable_event", f"event data is not a JSON object: {event.data[:200]!r}")
    return data


def error_failure(error: object, fallback_kind: str, *, prefer_code: bool = False) -> Failed:
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
