from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hydrallm.formats.sse import SSEDecoder, SSEError, SSEEvent


def decode(*chunks: bytes, max_size: int = 1024 * 1024) -> list[SSEEvent]:
    decoder = SSEDecoder(max_size=max_size)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.flush()


def test_named_event_with_id_and_multiline_data() -> None:
    events = decode(b'event: message_start\nid: 7\ndata: {"a":\ndata: 1}\n\n')
    assert events == [SSEEvent("message_start", '{"a":\n1}', "7")]


def test_data_only_event_has_no_name() -> None:
    assert decode(b"data: [DONE]\n\n") == [SSEEvent(None, "[DONE]")]


def test_comments_and_keepalives_produce_no_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b": keep-alive\n\n:\n\n: OPENROUTER PROCESSING\n\n") == []
    assert decoder.lines_seen == 6
    assert decoder.feed(b"data: x\n\n") == [SSEEvent(None, "x")]


def test_field_without_space_keeps_extra_spaces() -> None:
    # Only one leading space is part of the separator.
    assert decode(b"event:ping\ndata:a\ndata:  b\n\n") == [SSEEvent("ping", "a\n b")]


def test_field_without_colon_is_an_empty_value() -> None:
    assert decode(b"data\ndata\n\n") == [SSEEvent(None, "\n")]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_all_line_endings(eol: bytes) -> None:
    stream = eol.join([b"event: e", b"data: 1", b"", b"data: 2", b"", b""])
    assert decode(stream) == [SSEEvent("e", "1"), SSEEvent(None, "2")]


def test_crlf_split_between_cr_and_lf_is_one_line_ending() -> None:
    # Reading the CR as a line end and the LF as a blank line would dispatch
    # "a" early and then merge the next line into a second event.
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r\n") == [SSEEvent(None, "a\nb")]


def test_multibyte_character_split_across_chunks() -> None:
    raw = "data: héllo – 世界 🎉\n\n".encode()
    chunks = [raw[i : i + 1] for i in range(len(raw))]
    assert decode(*chunks) == [SSEEvent(None, "héllo – 世界 🎉")]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert decode(b"data: a\xff\xfeb\n\n") == [SSEEvent(None, "a\ufffd\ufffdb")]


def test_leading_bom_is_ignored() -> None:
    assert decode(b"\xef\xbb\xbfevent: e\ndata: 1\n\n") == [SSEEvent("e", "1")]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode(b"event: lonely\nid: 3\n\ndata: next\n\n") == [SSEEvent(None, "next")]


def test_flush_dispatches_an_unterminated_last_event() -> None:
    assert decode(b"data: a\n\ndata: [DONE]") == [SSEEvent(None, "a"), SSEEvent(None, "[DONE]")]
    assert decode(b"data: [DONE]\r") == [SSEEvent(None, "[DONE]")]


def test_overlong_line_raises_even_when_it_arrives_in_pieces() -> None:
    decoder = SSEDecoder(max_size=100)
    decoder.feed(b"data: " + b"x" * 60)
    with pytest.raises(SSEError):
        decoder.feed(b"x" * 60)


def test_overlong_event_raises() -> None:
    decoder = SSEDecoder(max_size=100)
    with pytest.raises(SSEError):
        decoder.feed(b"data: 0123456789\n" * 20)


def test_line_at_the_limit_is_fine() -> None:
    line = b"data: " + b"x" * 94
    assert decode(line + b"\n\n", max_size=100) == [SSEEvent(None, "x" * 94)]


def test_many_small_chunks_of_a_long_line() -> None:
    body = b"data: " + b"y" * 200_000 + b"\n\n"
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    assert decode(*chunks) == [SSEEvent(None, "y" * 200_000)]


# Text without line terminators (they separate lines) and without a leading
# colon (that would make it a comment).
_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=30,
)
_names = _values.filter(lambda s: not s.startswith(" "))
_events = st.builds(
    SSEEvent,
    event=st.none() | _names.filter(bool),
    data=st.lists(_values, min_size=1, max_size=4).map("\n".join),
    id=st.none() | _names.filter(lambda s: "\0" not in s),
)


def _encode(events: list[SSEEvent], eols: list[bytes]) -> bytes:
    lines: list[str] = []
    for event in events:
        lines.append(": comment")
        if event.event is not None:
            lines.append(f"event: {event.event}")
        if event.id is not None:
            lines.append(f"id: {event.id}")
        lines += [f"data: {part}" for part in event.data.split("\n")]
        lines.append("")
    out = b""
    for i, line in enumerate(lines):
        eol = eols[i % len(eols)]
        if not line and eol == b"\n" and out.endswith(b"\r"):
            # CR then LF would read as one CRLF line ending, losing this line.
            eol = b"\r\n"
        out += line.encode() + eol
    return out


@given(
    events=st.lists(_events, max_size=6),
    eols=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_chunking_never_changes_the_events(
    events: list[SSEEvent], eols: list[bytes], cuts: list[int]
) -> None:
    stream = _encode(events, eols)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert decode(*chunks) == events
    assert decode(stream) == events


@given(st.lists(st.binary(max_size=64), max_size=10))
def test_random_bytes_only_raise_sse_error(chunks: list[bytes]) -> None:
    decoder = SSEDecoder(max_size=48)
    try:
        for chunk in chunks:
            for event in decoder.feed(chunk):
                assert isinstance(event.data, str)
        decoder.flush()
    except SSEError:
        pass
