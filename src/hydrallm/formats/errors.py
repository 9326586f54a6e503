"""Error events the proxy appends when a stream fails after commit.

Once bytes have gone to the client the status line cannot change, so the
failure is told inside the stream, in each protocol's own error event, shaped
so that the official SDKs raise on it:

- Anthropic: ``event: error`` (the SDK raises an APIStatusError).
- OpenAI chat: a ``data:`` chunk with an ``error`` key (the SDK raises APIError).
- OpenAI Responses: ``event: error`` carrying both the documented flat fields
  and the nested ``error`` object the live API sends; the nested one is what
  makes the Python SDK raise, the flat ones what typed clients read.
- Bedrock: an event-stream exception frame (botocore raises EventStreamError).
"""

from __future__ import annotations

import json

from hydrallm.formats.eventstream import encode_message
from hydrallm.formats.peek import StreamKind

__all__ = ["error_event"]

_BEDROCK_DEFAULT = "internalServerException"


def _json(value: object) -> str:
    # ASCII-only output keeps the frame valid whatever the message holds, and
    # json escapes newlines, so the payload stays on one SSE data line.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def error_event(
    kind: StreamKind,
    message: str,
    *,
    error_type: str = "api_error",
    sequence_number: int = 0,
) -> bytes:
    """The bytes of one error event for a stream of ``kind``.

    ``error_type`` is the API's error type ("api_error", "overloaded_error");
    for Bedrock it names the exception, and the default becomes
    ``internalServerException``. ``sequence_number`` is used by the
    Responses API only. An UNKNOWN stream has no error event: returns b"".
    """
    if kind is StreamKind.ANTHROPIC:
        body = {"type": "error", "error": {"type": error_type, "message": message}}
        return f"event: error\ndata: {_json(body)}\n\n".encode()
    if kind is StreamKind.OPENAI_CHAT:
        body = {"error": {"message": message, "type": error_type, "code": None}}
        return f"data: {_json(body)}\n\n".encode()
    if kind is StreamKind.OPENAI_RESPONSES:
        detail = {"type": error_type, "code": error_type, "message": message, "param": None}
        event = {
            "type": "error",
            "code": error_type,
            "message": message,
            "param": None,
            "sequence_number": sequence_number,
            "error": detail,
        }
        return f"event: error\ndata: {_json(event)}\n\n".encode()
    if kind is StreamKind.EVENTSTREAM:
        name = _BEDROCK_DEFAULT if error_type == "api_error" else error_type
        headers = {
            ":message-type": "exception",
            ":exception-type": name,
            ":content-type": "application/json",
        }
        return encode_message(headers, _json({"message": message}).encode())
    return b""
