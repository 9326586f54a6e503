"""Error events the proxy appends when a stream fails after commit.

Each format writes its own (`WireFormat.error_event`, in the format's module); this
keeps the older call by `StreamKind` working.
"""

from __future__ import annotations

from hydrallm.formats.peek import StreamKind
from hydrallm.formats.registry import for_kind

__all__ = ["error_event"]


def error_event(
    kind: StreamKind,
    message: str,
    *,
    error_type: str = "api_error",
    sequence_number: int = 0,
) -> bytes:
    """The bytes of one error event for a stream of ``kind`` (b"" when it has none)."""
    fmt = for_kind(kind)
    return fmt.error_event(message, error_type=error_type, sequence_number=sequence_number)
