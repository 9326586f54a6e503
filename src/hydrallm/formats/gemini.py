"""Gemini's `streamGenerateContent?alt=sse` streams, for a native Gemini client.

Every event is a `data:` line holding one `GenerateContentResponse`; the last carries a
`finishReason` and there is no terminal marker.  An error inside the 200 stream arrives
as a data event `{"error": {"code", "message", "status"}}`.  There is no Gemini client
API to translate to, so other clients read a Gemini stream translated (proxy/translated)
and peeked in their own format; this format serves clients that call Gemini natively.
Recovery does not know it (no transcript or splice for Gemini): a break ends the stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from hydrallm.formats.base import SSEReader, Usage, WireFormat, sse_json, usage_of
from hydrallm.formats.frames import Event
from hydrallm.formats.peek import COMMIT, Codec, Failed, Verdict, parse_data
from hydrallm.formats.sse import SSEEvent

__all__ = ["GEMINI_SSE", "GeminiSSE"]

# Gemini's error statuses a retry cannot mend (the request itself is wrong).
_FINAL = frozenset(
    {"INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED", "NOT_FOUND", "UNAUTHENTICATED"}
)


def _failure(error: object) -> Failed:
    if not isinstance(error, Mapping):
        return Failed("error", "upstream sent an error event")
    status = error.get("status")
    kind = status if isinstance(status, str) and status else "error"
    message = error.get("message")
    text = message if isinstance(message, str) and message else "upstream sent an error event"
    return Failed(kind, text, kind not in _FINAL)


class GeminiSSE(WireFormat):
    name: ClassVar[str] = "gemini_sse"
    codec: ClassVar[Codec] = "sse"
    writes_errors: ClassVar[bool] = True

    def first_event(self, event: SSEEvent) -> Verdict | None:
        if not event.data.strip():
            return None
        data = parse_data(event)
        if isinstance(data, Failed):
            return data
        if "error" in data:
            return _failure(data["error"])
        return COMMIT  # any candidate chunk: the model has started

    def reader(self) -> SSEReader:
        return SSEReader()

    def maybe_error(self, raw: bytes) -> bool:
        return b'"error"' in raw

    def is_error_event(self, event: Event) -> bool:
        return event.data is not None and "error" in event.data

    def is_terminal(self, event: Event) -> bool:
        candidates = event.data.get("candidates") if event.data is not None else None
        return (
            isinstance(candidates, list)
            and bool(candidates)
            and isinstance(candidates[0], Mapping)
            and bool(candidates[0].get("finishReason"))
        )

    def error_event(
        self, message: str, *, error_type: str = "api_error", sequence_number: int = 0
    ) -> bytes:
        status = "UNAVAILABLE" if error_type in ("api_error", "overloaded_error") else "INTERNAL"
        body = {"error": {"code": 503 if status == "UNAVAILABLE" else 500, "message": message,
                          "status": status}}  # fmt: skip
        return f"data: {sse_json(body)}\n\n".encode()

    def usage_from_body(self, body: Mapping[str, Any]) -> Usage | None:
        return usage_of(body.get("usageMetadata"))

    def usage_from_event(self, event: Event) -> Usage | None:
        return usage_of(event.data.get("usageMetadata")) if event.data is not None else None


GEMINI_SSE = GeminiSSE()
