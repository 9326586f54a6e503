"""OpenAI chat completions streams (`POST /v1/chat/completions`, `"stream": true`).

Every chunk is a `data:` line with a `chat.completion.chunk` object; the stream ends
with `data: [DONE]`. Errors arrive as a chunk with an `error` key. With
`stream_options.include_usage` the last chunk before `[DONE]` has empty `choices` and the
`usage` object (the others carry `"usage": null`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from hydrallm.formats.base import SSEFormat, Usage, int_field, sse_json
from hydrallm.formats.frames import Event
from hydrallm.formats.peek import COMMIT, Failed, StreamKind, Verdict, error_failure, parse_data
from hydrallm.formats.sse import SSEEvent

__all__ = ["OPENAI_CHAT", "OpenAIChat", "openai_usage"]


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
        return openai_usage(body.get("usage"))

    def usage_from_event(self, event: Event) -> Usage | None:
        return openai_usage(event.data.get("usage")) if event.data is not None else None


def openai_usage(
    usage: object,
    prompt_key: str = "prompt_tokens",
    output_key: str = "completion_tokens",
    details_key: str = "prompt_tokens_details",
) -> Usage | None:
    """An OpenAI ``usage`` object: chat completions' names by default, Responses' when
    given.  Its prompt count includes the cached tokens, counted here as cache reads."""
    if not isinstance(usage, Mapping):
        return None
    prompt = int_field(usage, prompt_key)
    cached = int_field(usage, details_key, "cached_tokens")
    if prompt is not None and cached is not None:
        prompt = max(0, prompt - cached)  # the cached part is counted in cache_read_tokens
    found = Usage(
        input_tokens=prompt,
        output_tokens=int_field(usage, output_key),
        cache_read_tokens=cached,
    )
    return None if found.empty else found


OPENAI_CHAT = OpenAIChat()
