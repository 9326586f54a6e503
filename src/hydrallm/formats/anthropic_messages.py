"""Anthropic Messages streams (`POST /v1/messages`, `"stream": true`).

Named events: `message_start` (with the input `usage`), content blocks
(`content_block_start` / `_delta` / `_stop`), `message_delta` (stop reason and the
cumulative output `usage`), `message_stop`; `ping` any time; `error` for failures.
Bedrock's invoke-with-response-stream carries these same events inside its chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from hydrallm.formats.base import SSEFormat, Usage, sse_json, usage_of
from hydrallm.formats.frames import Event
from hydrallm.formats.peek import COMMIT, Failed, StreamKind, Verdict, error_failure, parse_data
from hydrallm.formats.sse import SSEEvent

__all__ = ["ANTHROPIC_MESSAGES", "AnthropicMessages", "anthropic_event_usage"]

_CONTENT = frozenset({"content_block_delta", "content_block_stop", "message_delta", "message_stop"})


class AnthropicMessages(SSEFormat):
    name: ClassVar[str] = "anthropic_messages"
    kind: ClassVar[StreamKind] = StreamKind.ANTHROPIC
    terminal_event: ClassVar[bytes | None] = (
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )

    def first_event(self, event: SSEEvent) -> Verdict | None:
        data = parse_data(event)
        if isinstance(data, Failed):
            return data
        name = event.event or data.get("type")
        if not isinstance(name, str):
            return Failed("undecodable_event", "Anthropic event without a type")
        if name == "error":
            return error_failure(data.get("error"), "error")
        if name in _CONTENT:
            return COMMIT
        # message_start, content_block_start, ping, and event types added later
        # are all pending; the peek's byte bound keeps the wait finite.
        return None

    def is_terminal(self, event: Event) -> bool:
        return event.type == "message_stop"

    def error_event(
        self, message: str, *, error_type: str = "api_error", sequence_number: int = 0
    ) -> bytes:
        # `event: error`: the SDK raises an APIStatusError on it.
        body = {"type": "error", "error": {"type": error_type, "message": message}}
        return f"event: error\ndata: {sse_json(body)}\n\n".encode()

    def usage_from_body(self, body: Mapping[str, Any]) -> Usage | None:
        return usage_of(body.get("usage"))

    def usage_from_event(self, event: Event) -> Usage | None:
        return anthropic_event_usage(event.data) if event.data is not None else None


def anthropic_event_usage(data: Mapping[str, Any]) -> Usage | None:
    """Usage in one Messages stream event: `message_start`'s message, `message_delta`'s own."""
    kind = data.get("type")
    if kind == "message_start":
        message = data.get("message")
        return usage_of(message.get("usage")) if isinstance(message, Mapping) else None
    if kind == "message_delta":
        return usage_of(data.get("usage"))
    return None


ANTHROPIC_MESSAGES = AnthropicMessages()
