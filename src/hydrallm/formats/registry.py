"""The one place that picks the wire format of an upstream response.

`select_format()` looks at the response's media type and encoding, the API type of the
model that answered and the client's request path; generic code then asks the format
object and never tests which one it has. A new format is one module plus one entry in
`FORMATS` (in the order formats are asked to claim a response).
"""

from __future__ import annotations

from hydrallm.formats.anthropic_messages import ANTHROPIC_MESSAGES
from hydrallm.formats.base import WireFormat
from hydrallm.formats.bedrock_eventstream import BEDROCK_EVENTSTREAM
from hydrallm.formats.gemini import GEMINI_SSE
from hydrallm.formats.openai_chat import OPENAI_CHAT
from hydrallm.formats.openai_responses import OPENAI_RESPONSES
from hydrallm.formats.passthrough import PASSTHROUGH
from hydrallm.formats.peek import StreamKind

__all__ = ["FORMATS", "READABLE_ENCODINGS", "for_kind", "media_type", "select_format"]

SSE = "text/event-stream"
EVENTSTREAM = "application/vnd.amazon.eventstream"

FORMATS: tuple[WireFormat, ...] = (
    ANTHROPIC_MESSAGES,
    OPENAI_RESPONSES,
    OPENAI_CHAT,
    BEDROCK_EVENTSTREAM,
    PASSTHROUGH,
)
"""Every format recovery knows by its `kind`, the readable ones first.  `GEMINI_SSE` is
claimed below but not listed: it has no kind of its own (recovery does not know it), and
`for_kind` maps each listed format's kind back to it."""

READABLE_ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})
"""Content encodings the peek reads through (the standard library's zlib)."""


def media_type(content_type: str) -> str:
    """``text/event-stream`` for ``Text/Event-Stream; charset=utf-8``."""
    return content_type.split(";", 1)[0].strip().lower()


def _claim(media: str, api: str, path: str) -> WireFormat | None:
    """The format that reads a response of this media type, for this API and path."""
    if media == EVENTSTREAM:
        return BEDROCK_EVENTSTREAM
    if media != SSE:
        return None
    if api == "anthropic":
        return ANTHROPIC_MESSAGES
    if api == "gemini":
        return GEMINI_SSE  # a native Gemini client (others read Gemini translated)
    if "/responses" in path:
        return OPENAI_RESPONSES
    return OPENAI_CHAT  # any other SSE answer is read as chat completions, as before


def select_format(
    content_type: str, *, api: str, path: str, streaming: bool, encoding: str = ""
) -> WireFormat | None:
    """The wire format of a 2xx response, or None when it is a whole body, not a stream.

    ``api`` is the answering model's API type ("openai", "anthropic", "bedrock",
    "gemini"; for a translated answer, the client's family),
    ``path`` the client's request path, ``streaming`` whether the client asked for a
    stream, ``encoding`` the response's Content-Encoding. A stream no format reads (NDJSON,
    or any answer to a streaming request), or one compressed beyond what the peek can
    read, is `PASSTHROUGH`: relayed from its first byte instead of buffered as a body.
    """
    if not streaming and (
        content_type == "application/json" or content_type[:17] == "application/json;"
    ):
        return None  # the common whole answer, without the general parse below
    media = media_type(content_type)
    found = _claim(media, api, path)
    if found is None:
        return PASSTHROUGH if streaming or "ndjson" in media else None
    if encoding.strip().lower() not in READABLE_ENCODINGS:
        return PASSTHROUGH
    return found


def for_kind(kind: StreamKind) -> WireFormat:
    """The format object of a `StreamKind` (for code still keyed by kind).

    A format that recovery does not know needs no kind of its own: it keeps the base's
    UNKNOWN, which stays passthrough's.
    """
    if kind is StreamKind.UNKNOWN:
        return PASSTHROUGH
    return next(fmt for fmt in FORMATS if fmt.kind is kind)
