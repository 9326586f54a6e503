"""Sans-IO stream handling: SSE and AWS event-stream decoders, the pre-commit
peek that decides when a stream has started, and proxy-made error events."""

from hydrallm.formats.errors import error_event
from hydrallm.formats.eventstream import (
    EventStreamDecoder,
    EventStreamError,
    Message,
    encode_message,
)
from hydrallm.formats.peek import (
    RETRYABLE_EXCEPTIONS,
    Commit,
    Failed,
    Peeker,
    StreamKind,
    Verdict,
    stream_kind,
)
from hydrallm.formats.sse import SSEDecoder, SSEError, SSEEvent

__all__ = [
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
    "Verdict",
    "encode_message",
    "error_event",
    "stream_kind",
]
