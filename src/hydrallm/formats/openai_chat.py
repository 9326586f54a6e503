"""OpenAI chat completions streams (`POST /v1/chat/completions`, `"stream": true`).

Every chunk is a `data:` line with a `chat.completion.chunk` object; the stream ends
with `data: [DONE]`. Errors arrive as a chunk with an `error` key. With
`stream_options.include_usage` the last chunk before `[DONE]` has empty `choices` and the
`usage` object (the others carry `"usage": null`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from hydrallm.formats.base import SSEFormat, Usage, sse_json, usage_of
from hydrallm.formats.frames import Event
from hydrallm.formats.peek import COMMIT, Failed, StreamKind, Verdict, error_failure, parse_data
from hydrallm.formats.sse import SSEEvent

__all__ = ["OPENAI_CHAT", "OpenAIChat"]


class OpenAIChat(SSEFormat):
    name: ClassVar[str] = "openai_chat"
    kind: ClassVar[StreamKind] = StreamKind.OPENAI_CHAT
    terminal_event: ClassVar[bytes | None] = b"data: [DONE]\n\n"

    def first_event(self, event: SSEEvent) -> Verdict | None:
        if event.data.strip() == "[DONE]":
            return COMMIT
        if not event.data.strip():
            return None
        data = parse_data(event)
        if isinstance(data, Failed):
            return data
        if data.get("error") or event.event == "error":
            return error_failure(data.get("error", data), "error", prefer_code=True)
        # Any chunk, even an empty role delta, shows the model has started.
        return COMMIT

    def is_terminal(self, event: Event) -> bool:
        return event.text.strip() == "[DONE]"

    def error_event(
        self, message: str, *, error_type: str = "server_error", sequence_number: int = 0
    ) -> bytes:
        # "server_error" is OpenAI's own type for a failure on its side; agents retry on it
        # (opencode does not retry an "api_error" event).
        # A data chunk with an `error` key: the SDK raises APIError on it.
        body = {"error": {"message": message, "type": error_type, "code": None}}
        return f"data: {sse_json(body)}\n\n".encode()

    def usage_from_body(self, body: Mapping[str, Any]) -> Usage | None:
        return usage_of(body.get("usage"))

    def usage_from_event(self, event: Event) -> Usage | None:
        # Every chunk says `"usage":null` except the last (with `include_usage`).
        return usage_of(event.data.get("usage")) if event.data is not None else None


OPENAI_CHAT = OpenAIChat()
