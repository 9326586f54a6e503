"""AWS Bedrock runtime streams: `application/vnd.amazon.eventstream` binary frames.

Two operations stream this way:

- `converse-stream`: events `messageStart`, `contentBlockStart` / `Delta` / `Stop`,
  `messageStop`, and last `metadata` (with `usage` and `metrics`);
- `invoke-with-response-stream`: `chunk` events whose JSON payload holds the model's own
  event base64-encoded in `bytes` (for Anthropic models, a Messages stream event); the last
  chunk adds `amazon-bedrock-invocationMetrics` with Bedrock's token counts.

Failures are `exception` messages (`throttlingException`, `validationException`, ...) or,
at the protocol level, `error` messages with `:error-code` / `:error-message` headers.
Bedrock streams are not recovered mid-stream: the splice speaks SSE only.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from hydrallm.formats.anthropic_messages import anthropic_event_usage
from hydrallm.formats.base import EventReader, Usage, WireFormat, usage_of
from hydrallm.formats.eventstream import (
    EventStreamDecoder,
    EventStreamError,
    Message,
    encode_message,
)
from hydrallm.formats.frames import Event
from hydrallm.formats.peek import COMMIT, Codec, Failed, StreamKind, Verdict

__all__ = [
    "BEDROCK_EVENTSTREAM",
    "RETRYABLE_EXCEPTIONS",
    "BedrockEventStream",
    "EventStreamReader",
]

RETRYABLE_EXCEPTIONS = frozenset(
    {
        "throttlingException",
        "serviceUnavailableException",
        "internalServerException",
        "modelStreamErrorException",
    }
)
"""Bedrock stream exceptions worth another try; others (validationException…) are not."""

_DEFAULT_EXCEPTION = "internalServerException"
_METRICS = "amazon-bedrock-invocationMetrics"


class EventStreamReader:
    """Event-stream frames to events.

    An `event` message becomes an event named by its `:event-type` with its JSON
    payload as data; an `exception` message one named "exception" whose data adds the
    `:exception-type` header to the payload; a protocol `error` message one named
    "error" whose data holds its `:error-code` and `:error-message` headers. A corrupt
    frame ends the reading: nothing after it can be trusted.
    """

    __slots__ = ("_broken", "_decoder")

    def __init__(self) -> None:
        self._decoder = EventStreamDecoder()
        self._broken = False

    def feed(self, data: bytes) -> list[Event]:
        if self._broken:
            return []
        try:
            messages = self._decoder.feed(data)
        except EventStreamError:
            self._broken = True
            return []
        return [_event(message) for message in messages]


def _event(message: Message) -> Event:
    text = message.payload.decode("utf-8", errors="replace")
    data = _object(message.payload)
    kind = message.message_type
    if kind == "exception":
        name = "exception"
        data = {**(data or {}), ":exception-type": message.exception_type}
    elif kind == "error":
        name = "error"
        data = {key: message.headers.get(key) for key in (":error-code", ":error-message")}
    else:
        name = message.event_type or "event"
    return Event(name, data, text, b"")


def _object(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class BedrockEventStream(WireFormat):
    name: ClassVar[str] = "bedrock_eventstream"
    kind: ClassVar[StreamKind] = StreamKind.EVENTSTREAM
    codec: ClassVar[Codec] = "eventstream"
    writes_errors: ClassVar[bool] = True
    supports_recovery: ClassVar[bool] = False

    def first_message(self, message: Message) -> Verdict:
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
        return COMMIT

    def reader(self) -> EventReader:
        return EventStreamReader()

    def maybe_error(self, raw: bytes) -> bool:
        return b"exception" in raw or b"error" in raw

    def is_error_event(self, event: Event) -> bool:
        return event.name in ("exception", "error")

    def is_terminal(self, event: Event) -> bool:
        if event.name == "metadata":
            return True  # converse-stream: after messageStop, with the usage
        inner = _chunk(event)
        return inner is not None and (_METRICS in inner or inner.get("type") == "message_stop")

    def error_event(
        self, message: str, *, error_type: str = "api_error", sequence_number: int = 0
    ) -> bytes:
        # An exception frame: botocore raises EventStreamError on it. `error_type` names
        # the exception; the generic "api_error" becomes internalServerException.
        name = _DEFAULT_EXCEPTION if error_type == "api_error" else error_type
        headers = {
            ":message-type": "exception",
            ":exception-type": name,
            ":content-type": "application/json",
        }
        payload = json.dumps({"message": message}, separators=(",", ":"), ensure_ascii=True)
        return encode_message(headers, payload.encode())

    def usage_from_body(self, body: Mapping[str, Any]) -> Usage | None:
        return usage_of(body.get("usage"))  # Converse, or InvokeModel of an Anthropic model

    def usage_from_event(self, event: Event) -> Usage | None:
        if event.name == "metadata" and event.data is not None:
            return usage_of(event.data.get("usage"))
        inner = _chunk(event)
        if inner is None:
            return None
        metrics = inner.get(_METRICS)
        if isinstance(metrics, Mapping):
            return usage_of(metrics)
        return anthropic_event_usage(inner)


def _chunk(event: Event) -> dict[str, Any] | None:
    """The model's own event inside an invoke-with-response-stream `chunk`."""
    if event.name != "chunk" or event.data is None:
        return None
    encoded = event.data.get("bytes")
    if not isinstance(encoded, str):
        return None
    try:
        return _object(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        return None


def _payload_message(payload: bytes) -> str:
    data = _object(payload)
    if data is not None:
        for key in ("message", "Message"):
            value = data.get(key)
            if isinstance(value, str):
                return value
    return payload.decode("utf-8", errors="replace")


BEDROCK_EVENTSTREAM = BedrockEventStream()
