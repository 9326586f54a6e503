"""Wire formats: one module per format (openai_chat, openai_responses, anthropic_messages,
bedrock_eventstream, passthrough), their common base and the registry that picks one for
a response; the shared codecs (SSE, AWS event-stream); the pre-commit peek; and the
sans-IO recovery pieces (frames, transcript, splice, prefill) the formats delegate to."""

from hydrallm.formats.base import Usage, WireFormat
from hydrallm.formats.bedrock_eventstream import RETRYABLE_EXCEPTIONS
from hydrallm.formats.errors import error_event
from hydrallm.formats.eventstream import (
    EventStreamDecoder,
    EventStreamError,
    Message,
    encode_message,
)
from hydrallm.formats.peek import Commit, Failed, Peeker, StreamKind, Verdict
from hydrallm.formats.registry import FORMATS, for_kind, select_format
from hydrallm.formats.sse import SSEDecoder, SSEError, SSEEvent

__all__ = [
    "FORMATS",
    "RETRYABLE_EXCEPTIONS",
    "Commit",
    "EventStreamDecoder",
    "EventStreamError",
    "Failed",
    "Message",
    "Peeker",
    "SSEDecoder",
    "SSEError",
    "SSEEvent",
    "StreamKind",
    "Usage",
    "Verdict",
    "WireFormat",
    "encode_message",
    "error_event",
    "for_kind",
    "select_format",
]
