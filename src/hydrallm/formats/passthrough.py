"""Streams hydrallm does not read: relayed from their first byte, as they come.

Ollama's NDJSON, any streaming request's answer in a media type no format claims, and a
stream compressed in an encoding the standard library cannot read (br, zstd). Nothing
can be judged inside them, so the first byte commits; nothing can be said inside them
either, so a break after commit is shown by cutting the client connection.
"""

from __future__ import annotations

from hydrallm.formats.base import WireFormat

__all__ = ["PASSTHROUGH", "Passthrough"]


class Passthrough(WireFormat):
    """All of `WireFormat`'s defaults: commit at once, no events, no error event, no usage."""


PASSTHROUGH = Passthrough()
