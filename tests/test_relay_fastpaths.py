"""The relay's fast paths give what the plain ones give.

`EventSplitter.feed` scans LF-only data with bytes.find, `feed_whole` hands on complete
events in one piece, and `Transcript` reads what it was fed only when asked: each is
checked here against the straightforward reading of the same bytes, cut at random places.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from hydrallm.formats.frames import EventSplitter, EventTooLong
from hydrallm.formats.peek import StreamKind
from hydrallm.formats.transcript import LAZY_LIMIT, Transcript, TranscriptState

_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def _events_by_regex(data: bytes) -> tuple[list[bytes], bytes]:
    """The reference: every event ending at the leftmost blank line, and the rest."""
    out, start = [], 0
    for m in _END.finditer(data):
        out.append(data[start : m.end()])
        start = m.end()
    return out, data[start:]


def _cuts(rng: random.Random, data: bytes) -> list[bytes]:
    points = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(0, 12))))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


_PIECES = [b"data: x", b"a", b"\n", b"\n\n", b"\n\n\n", b"\r\n", b"\r\n\r\n", b"\r\r", b":c"]


@pytest.mark.parametrize("crlf", [False, True])
def test_feed_gives_the_events_a_regex_finds(crlf: bool) -> None:
    rng = random.Random(7)
    pieces = _PIECES if crlf else [p for p in _PIECES if b"\r" not in p]
    for _ in range(3000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 20)))
        split = EventSplitter()
        # With CR in play an end cut in two can read differently (as it always did): the
        # LF-only path, the one that changed, is checked on cut data.
        parts = [data] if crlf else _cuts(rng, data)
        got = [e for part in parts for e in split.feed(part)]
        events, rest = _events_by_regex(data)
        assert got == events
        assert split.pending == rest


def test_feed_whole_passes_the_same_bytes_up_to_blank_lines() -> None:
    rng = random.Random(8)
    for _ in range(3000):
        data = b"".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 20)))
        whole, plain = EventSplitter(), EventSplitter()
        a = b = b""
        for part in _cuts(rng, data):
            a += whole.feed_whole(part)
            b += b"".join(plain.feed(part))
            longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
            # Only a blank line (no event) may pass earlier or later.
            assert longer.startswith(shorter) and set(longer[len(shorter) :]) <= {10}
        assert a + whole.flush() == b + plain.flush() == data


def test_feed_whole_holds_a_partial_event_and_bounds_it() -> None:
    split = EventSplitter(max_event=100)
    assert split.feed_whole(b'data: {"a":1}\n\ndata: {"b"') == b'data: {"a":1}\n\n'
    assert split.feed_whole(b":2}\n") == b""
    assert split.feed_whole(b"\ndata") == b'data: {"b":2}\n\n'
    with pytest.raises(EventTooLong):
        split.feed_whole(b"x" * 200)


def _chat_stream(rng: random.Random, events: int) -> bytes:
    out = []
    for i in range(events):
        delta: dict[str, object] = {"content": rng.choice(["hel", "lo ", "wörld", "\u2028", ""])}
        if i == 0:
            delta["role"] = "assistant"
        if i % 7 == 3:
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": '{"x"'}}]}
        chunk = {"id": "c1", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        out.append(b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


@pytest.mark.parametrize("events", [3, 40, 400])
def test_lazy_transcript_reads_as_the_eager_one(events: int) -> None:
    rng = random.Random(events)
    data = _chat_stream(rng, events)
    lazy, eager = Transcript(StreamKind.OPENAI_CHAT), TranscriptState(StreamKind.OPENAI_CHAT)
    for part in _cuts(rng, data):
        lazy.feed(part)
        eager.feed(part)
    if len(data) > 2 * LAZY_LIMIT:
        # What is held unread stays bounded.
        assert lazy._held_size <= LAZY_LIMIT
    assert lazy.done and lazy.done == eager.done
    assert lazy.events == eager.events == events + 1
    assert [(b.key, b.kind, b.text) for b in lazy.blocks] == [
        (b.key, b.kind, b.text) for b in eager.blocks
    ]
    assert lazy.text == eager.text
    snap = lazy.snapshot()
    lazy.feed(b'data: {"choices":[{"index":0,"delta":{"content":"more"}}]}\n\n')
    assert snap.text == eager.text  # a snapshot does not see later bytes
    assert lazy.text == eager.text + "more"
