"""What the client has received of a stream, read only when asked.

`Transcript` is `TranscriptState` (formats/transcript_state.py: the blocks, their text,
the framing) with its reading deferred: the relay feeds it every byte it writes, and
most streams end without anyone asking what was in them.
"""

from __future__ import annotations

from hydrallm.formats.frames import Event
from hydrallm.formats.peek import StreamKind
from hydrallm.formats.transcript_state import (
    OTHER,
    TEXT,
    TEXT_DELTAS,
    THINKING,
    TOOL,
    Block,
    TranscriptState,
    _anthropic_kind,
    _responses_kind,
    delta_text,
)

__all__ = [
    "LAZY_LIMIT",
    "OTHER",
    "TEXT",
    "TEXT_DELTAS",
    "THINKING",
    "TOOL",
    "Block",
    "Transcript",
    "TranscriptState",
    "_anthropic_kind",
    "_responses_kind",
    "delta_text",
]

# Bytes fed are held, unread, up to this much: most answers end (or the client's stream
# does) before, and a transcript is only read when a stream breaks.  Reading them later
# gives the same state as reading them as they came; past the limit they are read at
# once, so what is held stays bounded per stream.
LAZY_LIMIT = 16 * 1024


class Transcript:
    """Fed the client-bound bytes of one stream; see the module docstring.

    Parsing is deferred: `feed` only keeps the bytes (up to `LAZY_LIMIT`), and anything
    that reads the transcript first reads what was kept, in order.
    """

    __slots__ = ("_held", "_held_size", "_state", "kind")

    def __init__(self, kind: StreamKind, state: TranscriptState | None = None) -> None:
        self.kind = kind
        self._state = state if state is not None else TranscriptState(kind)
        self._held: list[bytes] = []
        self._held_size = 0

    def feed(self, data: bytes) -> None:
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > LAZY_LIMIT:
            self._read()

    def _read(self) -> TranscriptState:
        state = self._state
        if self._held:
            held = self._held
            self._held, self._held_size = [], 0
            state.feed(held[0] if len(held) == 1 else b"".join(held))
        return state

    def add(self, event: Event) -> None:
        self._read().add(event)

    def snapshot(self) -> Transcript:
        """A copy that later feeding does not change."""
        return Transcript(self.kind, self._read().snapshot())

    def block(self, key: object) -> Block | None:
        return self._read().block(key)

    def prefill_text(self) -> str | None:
        """The text to prefill with, or None when the client has more than one text block."""
        return self._read().prefill_text()

    @property
    def text(self) -> str:
        return self._read().text

    @property
    def blocks(self) -> list[Block]:
        return self._read().blocks

    @property
    def started(self) -> bool:
        return self._read().started

    @property
    def finished(self) -> bool:
        return self._read().finished

    @property
    def done(self) -> bool:
        return self._read().done

    @property
    def usage(self) -> bool:
        return self._read().usage

    @property
    def events(self) -> int:
        return self._read().events

    @property
    def message_id(self) -> str | None:
        return self._read().message_id

    @property
    def last_sequence(self) -> int:
        return self._read().last_sequence

    @property
    def opaque(self) -> bool:
        return self._read().opaque

    def __repr__(self) -> str:
        return f"Transcript({self._read()!r})"
