from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import EventStreamError as BotocoreEventStreamError
from botocore.session import Session
from hypothesis import given
from hypothesis import strategies as st

from hydrallm.formats.errors import error_event
from hydrallm.formats.eventstream import (
    EventStreamDecoder,
    EventStreamError,
    HeaderValue,
    Message,
    encode_message,
)
from hydrallm.formats.peek import StreamKind


def frame(header_block: bytes, payload: bytes) -> bytes:
    """An independent frame builder, so the decoder is not checked against itself."""
    prelude = struct.pack(">II", 16 + len(header_block) + len(payload), len(header_block))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + header_block + payload
    return body + struct.pack(">I", zlib.crc32(body))


def header(name: str, type_code: int, value: bytes) -> bytes:
    return bytes([len(name)]) + name.encode() + bytes([type_code]) + value


ALL_TYPES = b"".join(
    [
        header("t", 0, b""),
        header("f", 1, b""),
        header("byte", 2, struct.pack(">b", -7)),
        header("short", 3, struct.pack(">h", -300)),
        header("int", 4, struct.pack(">i", 70000)),
        header("long", 5, struct.pack(">q", -(2**40))),
        header("bytes", 6, struct.pack(">H", 3) + b"\x00\x01\x02"),
        header("string", 7, struct.pack(">H", 4) + "héj".encode()),
        header("ts", 8, struct.pack(">q", 1_700_000_000_000)),
        header("uuid", 9, bytes(range(16))),
    ]
)


def botocore_messages(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(dict(m.headers), bytes(m.payload)) for m in buffer]


def decode_all(*chunks: bytes) -> list[Message]:
    decoder = EventStreamDecoder()
    out: list[Message] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    decoder.close()
    return out


def test_every_header_type_decodes_like_botocore() -> None:
    data = frame(ALL_TYPES, b'{"bytes":"x"}')
    [message] = decode_all(data)
    assert dict(message.headers) == {
        "t": True,
        "f": False,
        "byte": -7,
        "short": -300,
        "int": 70000,
        "long": -(2**40),
        "bytes": b"\x00\x01\x02",
        "string": "héj",
        "ts": 1_700_000_000_000,
        "uuid": bytes(range(16)),
    }
    assert message.payload == b'{"bytes":"x"}'
    [(headers, payload)] = botocore_messages(data)
    assert headers == dict(message.headers)
    assert payload == message.payload


def test_encoded_frames_parse_identically_in_botocore() -> None:
    headers: dict[str, HeaderValue] = {
        ":message-type": "event",
        ":event-type": "chunk",
        ":content-type": "application/json",
        "flag": True,
        "off": False,
        "small": 5,
        "big": 2**40,
        "raw": b"\xff\x00",
    }
    data = encode_message(headers, b'{"bytes":"eyJ0eXBlIjoi"}') + encode_message({}, b"")
    ours = decode_all(data)
    assert [(dict(m.headers), m.payload) for m in ours] == botocore_messages(data)
    assert ours[0].message_type == "event"
    assert ours[0].event_type == "chunk"
    assert ours[0].exception_type is None
    assert ours[1] == Message({}, b"")


def test_a_real_bedrock_chunk_frame() -> None:
    # Shape of an InvokeModelWithResponseStream event: base64 JSON in "bytes".
    payload = b'{"bytes":"eyJ0eXBlIjoibWVzc2FnZV9zdG9wIn0=","p":"abcd"}'
    data = frame(
        header(":event-type", 7, struct.pack(">H", 5) + b"chunk")
        + header(":content-type", 7, struct.pack(">H", 16) + b"application/json")
        + header(":message-type", 7, struct.pack(">H", 5) + b"event"),
        payload,
    )
    [message] = decode_all(*[data[i : i + 1] for i in range(len(data))])
    assert (message.message_type, message.event_type, message.payload) == (
        "event",
        "chunk",
        payload,
    )


@pytest.mark.parametrize("position", ["prelude", "headers", "payload", "message_crc"])
def test_any_flipped_bit_is_detected(position: str) -> None:
    data = bytearray(encode_message({":event-type": "chunk"}, b"hello"))
    index = {"prelude": 2, "headers": 14, "payload": len(data) - 6, "message_crc": len(data) - 1}
    data[index[position]] ^= 0x10
    with pytest.raises(EventStreamError, match="CRC"):
        EventStreamDecoder().feed(bytes(data))


def test_decoder_stays_broken_after_an_error() -> None:
    bad = bytearray(encode_message({}, b"x"))
    bad[-1] ^= 1
    decoder = EventStreamDecoder()
    with pytest.raises(EventStreamError):
        decoder.feed(bytes(bad))
    with pytest.raises(EventStreamError):
        decoder.feed(encode_message({}, b"fine"))


def test_length_below_minimum_is_rejected() -> None:
    prelude = struct.pack(">II", 12, 0)
    data = prelude + struct.pack(">I", zlib.crc32(prelude))
    with pytest.raises(EventStreamError, match="minimum"):
        EventStreamDecoder().feed(data)


def test_length_above_the_cap_is_rejected_before_buffering() -> None:
    prelude = struct.pack(">II", 1 << 30, 0)
    decoder = EventStreamDecoder(max_message=1024)
    with pytest.raises(EventStreamError, match="limit"):
        decoder.feed(prelude + struct.pack(">I", zlib.crc32(prelude)))


def test_headers_longer_than_the_message_are_rejected() -> None:
    prelude = struct.pack(">II", 20, 10)
    with pytest.raises(EventStreamError):
        EventStreamDecoder().feed(prelude + struct.pack(">I", zlib.crc32(prelude)))


def test_truncated_header_block_is_an_error_not_a_crash() -> None:
    with pytest.raises(EventStreamError, match="truncated"):
        EventStreamDecoder().feed(frame(b"\x05ab", b""))


def test_unknown_header_type_is_an_error() -> None:
    with pytest.raises(EventStreamError, match="type"):
        EventStreamDecoder().feed(frame(header("x", 42, b""), b""))


def test_truncated_stream_is_reported_at_close() -> None:
    data = encode_message({":event-type": "chunk"}, b"payload")
    decoder = EventStreamDecoder()
    assert decoder.feed(data[:-3]) == []
    assert decoder.buffered == len(data) - 3
    with pytest.raises(EventStreamError, match="ended inside"):
        decoder.close()


def test_clean_end_closes_quietly() -> None:
    decoder = EventStreamDecoder()
    assert len(decoder.feed(encode_message({}, b"a") * 3)) == 3
    decoder.close()


def test_encode_rejects_what_the_format_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode_message({"": "x"}, b"")
    with pytest.raises(ValueError):
        encode_message({"x" * 256: "x"}, b"")
    with pytest.raises(ValueError):
        encode_message({"x": "y" * 70000}, b"")


_header_values = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=40)
)
_messages = st.tuples(
    st.dictionaries(st.text(min_size=1, max_size=20), _header_values, max_size=5),
    st.binary(max_size=200),
)


@given(st.lists(_messages, max_size=5), st.lists(st.integers(min_value=0), max_size=15))
def test_chunking_never_changes_the_messages(
    messages: list[tuple[dict[str, HeaderValue], bytes]], cuts: list[int]
) -> None:
    messages = [(h, p) for h, p in messages if all(len(k.encode()) < 256 for k in h)]
    stream = b"".join(encode_message(h, p) for h, p in messages)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    decoded = decode_all(*chunks)
    assert [(dict(m.headers), m.payload) for m in decoded] == messages
    assert botocore_messages(stream) == [(dict(h), p) for h, p in messages]


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_only_raise_event_stream_error(chunks: list[bytes]) -> None:
    decoder = EventStreamDecoder(max_message=4096)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
        decoder.close()
    except EventStreamError:
        pass


@given(st.binary(min_size=1, max_size=100), st.data())
def test_any_single_byte_corruption_is_caught(payload: bytes, data: st.DataObject) -> None:
    raw = bytearray(encode_message({":event-type": "chunk"}, payload))
    index = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    decoder = EventStreamDecoder()
    with pytest.raises(EventStreamError):
        decoder.feed(bytes(raw))
        decoder.close()


class _Raw:
    """What botocore reads an HTTP body from: just enough for its EventStream."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self._data

    def close(self) -> None:
        pass


def test_proxy_error_frame_raises_in_boto_converse_stream() -> None:
    body = encode_message(
        {
            ":message-type": "event",
            ":event-type": "messageStart",
            ":content-type": "application/json",
        },
        json.dumps({"role": "assistant"}).encode(),
    ) + error_event(StreamKind.EVENTSTREAM, 'upstream "died"\n', error_type="throttlingException")

    def send(request: Any, **_: object) -> AWSResponse:
        headers = {"content-type": "application/vnd.amazon.eventstream"}
        return AWSResponse(request.url, 200, headers, _Raw(body))

    client = Session().create_client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
    )
    client.meta.events.register("before-send", send)
    response = client.converse_stream(
        modelId="m", messages=[{"role": "user", "content": [{"text": "hi"}]}]
    )
    seen: list[dict[str, Any]] = []
    with pytest.raises(BotocoreEventStreamError) as info:
        seen.extend(response["stream"])
    assert seen == [{"messageStart": {"role": "assistant"}}]
    assert info.value.response["Error"] == {
        "Code": "throttlingException",
        "Message": 'upstream "died"\n',
    }


def test_default_error_frame_is_an_internal_server_exception() -> None:
    [message] = decode_all(error_event(StreamKind.EVENTSTREAM, "boom"))
    assert message.message_type == "exception"
    assert message.exception_type == "internalServerException"
    assert json.loads(message.payload) == {"message": "boom"}
