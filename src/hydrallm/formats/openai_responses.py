"""OpenAI Responses streams (`POST /v1/responses`, `"stream": true`).

Named events (`response.created`, `response.output_text.delta`, ...) each carrying a
`type` and a `sequence_number`. The stream ends with `response.completed`,
`response.incomplete` or `response.failed`, whose `response` holds the `usage`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from hydrallm.formats.base import SSEFormat, Usage, sse_json, usage_of
from hydrallm.formats.frames import Event
from hydrallm.formats.peek import COMMIT, Failed, StreamKind, Verdict, error_failure, parse_data
from hydrallm.formats.sse import SSEEvent

__all__ = ["OPENAI_RESPONSES", "OpenAIResponses"]

# Events that only announce what is coming.
_PREAMBLE = frozenset({"response.created", "response.queued", "response.in_progress"})
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class OpenAIResponses(SSEFormat):
    name: ClassVar[str] = "openai_responses"
    kind: ClassVar[StreamKind] = StreamKind.OPENAI_RESPONSES
    # `response.completed` carries the whole response: hydrallm cannot make one up.
    terminal_event: ClassVar[bytes | None] = None

    def first_event(self, event: SSEEvent) -> Verdict | None:
        if event.data.strip() == "[DONE]":
            return COMMIT
        data = parse_data(event)
        if isinstance(data, Failed):
            return data
        name = data.get("type") if isinstance(data.get("type"), str) else event.event
        if name == "error" or event.event == "error":
            # The live API nests the fields under "error"; the reference has them flat.
            nested = data.get("error")
            flat = {key: value for key, value in data.items() if key != "type"}
            return error_failure(
                nested if isinstance(nested, dict) else flat, "error", prefer_code=True
            )
        if name == "response.failed":
            response = data.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            detail = error_failure(error, "response.failed", prefer_code=True)
            label = detail.kind if detail.kind != "response.failed" else ""
            message = f"{label}: {detail.message}" if label else detail.message
            return Failed("response.failed", message, detail.retryable)
        if not isinstance(name, str):
            return Failed("undecodable_event", "Responses event without a type")
        if name in _PREAMBLE or name.endswith((".added", ".in_progress")):
            return None
        return COMMIT

    def is_terminal(self, event: Event) -> bool:
        return event.type in _TERMINAL

    def error_event(
        self, message: str, *, error_type: str = "server_error", sequence_number: int = 0
    ) -> bytes:
        # "server_error" is OpenAI's own type for a failure on its side; agents retry on it
        # (opencode does not retry an "api_error" event).
        # Both the documented flat fields and the nested `error` object the live API
        # sends: the nested one makes the Python SDK raise, the flat ones typed clients read.
        detail = {"type": error_type, "code": error_type, "message": message, "param": None}
        event = {
            "type": "error",
            "code": error_type,
            "message": message,
            "param": None,
            "sequence_number": sequence_number,
            "error": detail,
        }
        return f"event: error\ndata: {sse_json(event)}\n\n".encode()

    def usage_from_body(self, body: Mapping[str, Any]) -> Usage | None:
        return usage_of(body.get("usage"))

    def usage_from_event(self, event: Event) -> Usage | None:
        if event.data is None or event.type not in _TERMINAL:
            return None
        response = event.data.get("response")
        return usage_of(response.get("usage")) if isinstance(response, Mapping) else None


OPENAI_RESPONSES = OpenAIResponses()
