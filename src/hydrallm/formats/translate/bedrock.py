"""Anthropic Messages on Bedrock: InvokeModel / InvokeModelWithResponseStream (issue 16).

The body is the Anthropic body less what Bedrock does not take (`model` is in the path,
`stream` is the operation, `anthropic_version` is Bedrock's own); the answer is Anthropic's
JSON as is; the stream is event-stream frames whose `chunk` events carry the Anthropic
stream events base64-encoded in `bytes`, unwrapped here into Anthropic SSE.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

from hydrallm.formats.eventstream import EventStreamDecoder, EventStreamError, Message
from hydrallm.formats.frames import json_bytes
from hydrallm.formats.translate.errors import (
    ClientError,
    UpstreamError,
    client_error,
    read_error,
)
from hydrallm.formats.translate.ir import BadRequest, Json

BEDROCK_VERSION = "bedrock-2023-05-31"
# What InvokeModel takes for Claude (docs.aws.amazon.com/bedrock, "Anthropic Claude Messages
# API"); the rest (`metadata`, `service_tier`, `context_management`, `container`,
# `mcp_servers`...) is Anthropic-API-only and dropped rather than refused.
KEPT = frozenset(
    {
        "anthropic_beta",
        "max_tokens",
        "system",
        "messages",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "thinking",
    }
)
# Bedrock's in-stream exceptions, as the Anthropic error type a client expects.
_EXCEPTIONS = {
    "throttlingException": ("rate_limit_error", 429),
    "serviceUnavailableException": ("overloaded_error", 529),
    "modelStreamErrorException": ("api_error", 500),
    "internalServerException": ("api_error", 500),
    "validationException": ("invalid_request_error", 400),
    "modelTimeoutException": ("api_error", 500),
}


def request(body: Json, model: str) -> tuple[str, bytes, bool]:
    """(path, body, stream) of the InvokeModel call for an Anthropic Messages body."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    stream = body.get("stream") is True
    out: dict[str, Any] = {"anthropic_version": BEDROCK_VERSION}
    out.update((k, v) for k, v in body.items() if k in KEPT)
    action = "invoke-with-response-stream" if stream else "invoke"
    path = f"/model/{quote(model, safe='')}/{action}"
    return path, json_bytes(out), stream


def error(status: int, body: bytes) -> ClientError:
    return client_error("anthropic", read_error(status, body))


class BedrockStream:
    """Event-stream frames in, Anthropic SSE out (the `StreamTranslator` interface)."""

    def __init__(self) -> None:
        self._frames = EventStreamDecoder()
        self.finished = False
        self.error: UpstreamError | None = None

    def feed(self, data: bytes) -> bytes:
        try:
            messages = self._frames.feed(data)
        except EventStreamError as exc:
            raise ValueError(f"broken event-stream frame ({exc})") from exc
        out = bytearray()
        for message in messages:
            if self.finished or self.error is not None:
                break
            out += self._event(message)
        return bytes(out)

    def _event(self, message: Message) -> bytes:
        payload = json.loads(message.payload or b"{}")
        if message.message_type != "event":
            exc = message.exception_type or "internalServerException"
            kind, status = _EXCEPTIONS.get(exc, ("api_error", 500))
            text = str(payload.get("message") or exc) if isinstance(payload, dict) else exc
            self.error = UpstreamError(status, text)
            data = {"type": "error", "error": {"type": kind, "message": text}}
            return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"
        raw = base64.b64decode(payload["bytes"]) if isinstance(payload, dict) else b""
        event = json.loads(raw)
        name = event.get("type") if isinstance(event, dict) else None
        if not isinstance(name, str):
            raise ValueError("a Bedrock chunk without an Anthropic event type")
        if name == "message_stop":
            self.finished = True
            # Bedrock adds its own metrics to the last event; the Anthropic SDK ignores them.
            event.pop("amazon-bedrock-invocationMetrics", None)
        return f"event: {name}\ndata: ".encode() + anthropic_dumps(event) + b"\n\n"

    def close(self) -> bytes:
        return b""


def anthropic_dumps(event: Json) -> bytes:
    return json_bytes(event)


class BedrockTranslator:
    """The answer side of an Anthropic client on a Bedrock model (`Translator`'s shape)."""

    def response(self, body: bytes | Json) -> bytes:
        data = json.loads(body) if isinstance(body, (bytes, str)) else body
        if not isinstance(data, dict) or data.get("type") != "message":
            raise ValueError("the Bedrock answer is not an Anthropic message")
        return body if isinstance(body, bytes) else anthropic_dumps(data)

    def stream(self) -> BedrockStream:
        return BedrockStream()

    def error(self, status: int, body: bytes) -> ClientError:
        return error(status, body)


__all__ = ["BEDROCK_VERSION", "BedrockStream", "BedrockTranslator", "error", "request"]
