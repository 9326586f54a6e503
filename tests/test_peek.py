from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hydrallm.formats.anthropic_messages import ANTHROPIC_MESSAGES
from hydrallm.formats.base import WireFormat
from hydrallm.formats.bedrock_eventstream import BEDROCK_EVENTSTREAM
from hydrallm.formats.eventstream import encode_message
from hydrallm.formats.openai_chat import OPENAI_CHAT
from hydrallm.formats.openai_responses import OPENAI_RESPONSES
from hydrallm.formats.passthrough import PASSTHROUGH
from hydrallm.formats.peek import (
    Commit,
    Failed,
    Peeker,
)
from hydrallm.formats.registry import FORMATS, select_format


def sse(event: str | None, data: object) -> bytes:
    head = f"event: {event}\n" if event else ""
    body = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {body}\n\n".encode()


def chat_chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return sse(
        None,
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        },
    )


def responses_event(kind: str, seq: int, **fields: Any) -> bytes:
    return sse(kind, {"type": kind, "sequence_number": seq, **fields})


RESPONSE = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
MESSAGE_START = sse(
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        },
    },
)
BLOCK_START = sse(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
PING = sse("ping", {"type": "ping"})
TEXT_DELTA = sse(
    "content_block_delta",
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
)


def bedrock_event(event_type: str, body: object) -> bytes:
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, json.dumps(body).encode())


def bedrock_exception(name: str, message: str) -> bytes:
    headers = {
        ":exception-type": name,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, json.dumps({"message": message}).encode())


def run(kind: WireFormat, *chunks: bytes, max_bytes: int = 64 * 1024) -> Commit | Failed | None:
    """Feed chunks one by one, stopping at the first verdict, as the proxy does."""
    peeker = Peeker(kind, max_bytes=max_bytes)
    for chunk in chunks:
        verdict = peeker.feed(chunk)
        if verdict is not None:
            return verdict
    return None


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- select_format ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "path", "api_type", "expected"),
    [
        ("text/event-stream", "/v1/messages", "anthropic", ANTHROPIC_MESSAGES),
        (
            "text/event-stream; charset=utf-8",
            "/v1/chat/completions",
            "openai",
            OPENAI_CHAT,
        ),
        ("Text/Event-Stream", "/v1/responses", "openai", OPENAI_RESPONSES),
        (
            "application/vnd.amazon.eventstream",
            "/model/x/converse-stream",
            "bedrock",
            BEDROCK_EVENTSTREAM,
        ),
        ("application/json", "/v1/chat/completions", "openai", None),
        ("", "/v1/messages", "anthropic", None),
    ],
)
def test_select_format(
    content_type: str, path: str, api_type: str, expected: WireFormat | None
) -> None:
    assert select_format(content_type, api=api_type, path=path, streaming=False) is expected


# --- OpenAI chat --------------------------------------------------------------


def test_chat_commits_on_first_chunk_even_with_empty_role_delta() -> None:
    assert run(OPENAI_CHAT, b": keep-alive\n\n", chat_chunk(None)) == Commit()


def test_chat_keepalives_stay_pending() -> None:
    assert run(OPENAI_CHAT, b": PROCESSING\n\n", b":\n\n") is None


def test_chat_error_chunk_fails_with_its_type() -> None:
    error = {"error": {"message": "Overloaded", "type": "server_error", "code": None}}
    assert run(OPENAI_CHAT, sse(None, error)) == Failed("server_error", "Overloaded")


def test_chat_rate_limit_is_labelled_by_its_code() -> None:
    error = {"error": {"message": "slow down", "type": "tokens", "code": "rate_limit_exceeded"}}
    verdict = run(OPENAI_CHAT, *bytewise(sse(None, error)))
    assert verdict == Failed("rate_limit_exceeded", "slow down")


def test_chat_invalid_request_error_is_not_retryable() -> None:
    error = {"error": {"message": "too long", "type": "invalid_request_error"}}
    verdict = run(OPENAI_CHAT, sse(None, error))
    assert isinstance(verdict, Failed)
    assert not verdict.retryable


def test_chat_done_first_commits() -> None:
    assert run(OPENAI_CHAT, b"data: [DONE]\n\n") == Commit()


def test_chat_non_json_first_event_is_undecodable() -> None:
    verdict = run(OPENAI_CHAT, b"data: <html>oops</html>\n\n")
    assert isinstance(verdict, Failed)
    assert verdict.kind == "undecodable_event"


def test_chat_eof_before_any_event_fails() -> None:
    peeker = Peeker(OPENAI_CHAT)
    assert peeker.feed(b": keep-alive\n\n") is None
    verdict = peeker.eof()
    assert isinstance(verdict, Failed)
    assert verdict.kind == "closed_before_first_event"


def test_chat_unterminated_done_at_eof_commits() -> None:
    peeker = Peeker(OPENAI_CHAT)
    assert peeker.feed(b"data: [DONE]\n") is None
    assert peeker.eof() == Commit()


# --- OpenAI Responses ----------------------------------------------------------


RESPONSES_PREAMBLE = [
    responses_event("response.created", 0, response=RESPONSE),
    responses_event("response.in_progress", 1, response=RESPONSE),
    responses_event(
        "response.output_item.added",
        2,
        output_index=0,
        item={"id": "msg_1", "type": "message", "role": "assistant", "content": []},
    ),
    responses_event(
        "response.content_part.added",
        3,
        item_id="msg_1",
        output_index=0,
        content_index=0,
        part={"type": "output_text", "text": ""},
    ),
]


def test_responses_preamble_is_pending_and_first_delta_commits() -> None:
    assert run(OPENAI_RESPONSES, *RESPONSES_PREAMBLE) is None
    delta = responses_event(
        "response.output_text.delta",
        4,
        item_id="msg_1",
        output_index=0,
        content_index=0,
        delta="Hi",
    )
    assert run(OPENAI_RESPONSES, *RESPONSES_PREAMBLE, delta) == Commit()


def test_responses_reasoning_delta_commits() -> None:
    delta = responses_event("response.reasoning_summary_text.delta", 2, delta="Thinking")
    assert run(OPENAI_RESPONSES, *RESPONSES_PREAMBLE[:2], delta) == Commit()


def test_responses_incomplete_is_an_answer() -> None:
    incomplete = responses_event("response.incomplete", 2, response=RESPONSE)
    assert run(OPENAI_RESPONSES, *RESPONSES_PREAMBLE[:2], incomplete) == Commit()


def test_responses_failed_before_output_fails() -> None:
    failed = responses_event(
        "response.failed",
        2,
        response={
            **RESPONSE,
            "status": "failed",
            "error": {"code": "server_error", "message": "x"},
        },
    )
    verdict = run(OPENAI_RESPONSES, *RESPONSES_PREAMBLE[:2], failed)
    assert verdict == Failed("response.failed", "server_error: x")


def test_responses_error_event_in_the_live_nested_shape() -> None:
    error = responses_event(
        "error",
        2,
        error={"type": "too_many_requests", "code": "too_many_requests", "message": "Too Many"},
    )
    verdict = run(OPENAI_RESPONSES, RESPONSES_PREAMBLE[0], error)
    assert verdict == Failed("too_many_requests", "Too Many")


def test_responses_error_event_in_the_documented_flat_shape() -> None:
    error = responses_event("error", 0, code="rate_limit_exceeded", message="slow", param=None)
    assert run(OPENAI_RESPONSES, error) == Failed("rate_limit_exceeded", "slow")


def test_responses_eof_after_preamble_fails() -> None:
    peeker = Peeker(OPENAI_RESPONSES)
    for event in RESPONSES_PREAMBLE:
        assert peeker.feed(event) is None
    verdict = peeker.eof()
    assert isinstance(verdict, Failed)
    assert verdict.kind == "closed_before_first_event"


# --- Anthropic -------------------------------------------------------------------


def test_anthropic_preamble_pending_then_delta_commits() -> None:
    assert run(ANTHROPIC_MESSAGES, MESSAGE_START, BLOCK_START, PING) is None
    assert run(ANTHROPIC_MESSAGES, MESSAGE_START, BLOCK_START, PING, TEXT_DELTA) == Commit()


def test_anthropic_whole_stream_in_one_chunk_commits() -> None:
    stop = sse("message_stop", {"type": "message_stop"})
    assert run(ANTHROPIC_MESSAGES, MESSAGE_START + PING + stop) == Commit()


def test_anthropic_overloaded_after_message_start_fails() -> None:
    error = sse(
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    verdict = run(ANTHROPIC_MESSAGES, *bytewise(MESSAGE_START + PING + error))
    assert verdict == Failed("overloaded_error", "Overloaded")


def test_anthropic_error_event_with_crlf_line_endings() -> None:
    error = b'event: error\r\ndata: {"type":"error","error":{"type":"api_error","message":"Internal"}}\r\n\r\n'
    assert run(ANTHROPIC_MESSAGES, error) == Failed("api_error", "Internal")


def test_anthropic_undecodable_event_fails() -> None:
    verdict = run(ANTHROPIC_MESSAGES, b"event: message_start\ndata: {not json\n\n")
    assert isinstance(verdict, Failed)
    assert verdict.kind == "undecodable_event"


def test_anthropic_eof_after_message_start_fails() -> None:
    peeker = Peeker(ANTHROPIC_MESSAGES)
    assert peeker.feed(MESSAGE_START + BLOCK_START) is None
    verdict = peeker.eof()
    assert isinstance(verdict, Failed)
    assert verdict.kind == "closed_before_first_event"


# --- byte bound ----------------------------------------------------------------------


def test_huge_preamble_commits_past_the_bound() -> None:
    big_start = sse("message_start", {"type": "message_start", "pad": "x" * 5000})
    assert run(ANTHROPIC_MESSAGES, big_start, max_bytes=4096) == Commit()


def test_bytes_without_any_line_fail_past_the_bound() -> None:
    verdict = run(ANTHROPIC_MESSAGES, b"x" * 5000, max_bytes=4096)
    assert isinstance(verdict, Failed)
    assert verdict.kind == "undecodable_event"


def test_verdict_is_sticky() -> None:
    peeker = Peeker(OPENAI_CHAT)
    assert peeker.feed(chat_chunk("a")) == Commit()
    assert peeker.feed(b"garbage") == Commit()
    assert peeker.eof() == Commit()
    assert peeker.verdict == Commit()


# --- Bedrock event-stream ---------------------------------------------------------------


def test_bedrock_first_event_commits_even_split_bytewise() -> None:
    frame = bedrock_event("messageStart", {"role": "assistant"})
    assert run(BEDROCK_EVENTSTREAM, *bytewise(frame)) == Commit()


@pytest.mark.parametrize(
    ("name", "retryable"),
    [
        ("throttlingException", True),
        ("serviceUnavailableException", True),
        ("internalServerException", True),
        ("modelStreamErrorException", True),
        ("validationException", False),
    ],
)
def test_bedrock_exception_first_fails(name: str, retryable: bool) -> None:
    verdict = run(BEDROCK_EVENTSTREAM, bedrock_exception(name, "Too many tokens"))
    assert verdict == Failed(name, "Too many tokens", retryable)


def test_bedrock_corrupt_frame_fails() -> None:
    frame = bytearray(bedrock_event("chunk", {"bytes": "e30="}))
    frame[20] ^= 0xFF
    verdict = run(BEDROCK_EVENTSTREAM, bytes(frame))
    assert isinstance(verdict, Failed)
    assert verdict.kind == "corrupt_frame"


def test_bedrock_truncated_then_closed_fails() -> None:
    peeker = Peeker(BEDROCK_EVENTSTREAM)
    assert peeker.feed(bedrock_event("chunk", {"bytes": "e30="})[:-5]) is None
    verdict = peeker.eof()
    assert isinstance(verdict, Failed)
    assert verdict.kind == "closed_before_first_event"


def test_unknown_commits_on_first_byte_and_fails_on_empty() -> None:
    assert run(PASSTHROUGH, b"", b"x") == Commit()
    verdict = Peeker(PASSTHROUGH).eof()
    assert isinstance(verdict, Failed)


@given(st.lists(st.binary(max_size=80), max_size=8), st.sampled_from(list(FORMATS)))
def test_random_bytes_never_crash_the_peeker(chunks: list[bytes], kind: WireFormat) -> None:
    peeker = Peeker(kind, max_bytes=256)
    for chunk in chunks:
        peeker.feed(chunk)
    assert isinstance(peeker.eof(), Commit | Failed)


@given(st.lists(st.integers(min_value=0), max_size=10))
def test_verdict_does_not_depend_on_chunking(cuts: list[int]) -> None:
    error = sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "o"}})
    stream = MESSAGE_START + PING + error
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert run(ANTHROPIC_MESSAGES, *chunks) == Failed("overloaded_error", "o")


# --- proxy-made error events: the peeker and the official SDKs read them as errors ---


@pytest.mark.parametrize("kind", [ANTHROPIC_MESSAGES, OPENAI_CHAT, OPENAI_RESPONSES])
def test_error_events_read_back_as_failures(kind: WireFormat) -> None:
    message = 'upstream "reset"\nline two \u2028 ü'
    verdict = run(kind, kind.error_event(message, error_type="overloaded_error"))
    assert verdict == Failed("overloaded_error", message)


def test_error_event_for_unknown_stream_is_empty() -> None:
    assert PASSTHROUGH.error_event("x") == b""


def _client(body: bytes) -> httpx2.Client:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return httpx2.Client(transport=httpx2.MockTransport(handler))


def test_openai_sdk_raises_on_chat_error_event() -> None:
    body = chat_chunk("Hel") + OPENAI_CHAT.error_event("upstream reset")
    client = openai.OpenAI(api_key="k", base_url="http://upstream/v1", http_client=_client(body))
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    seen: list[str | None] = []
    with pytest.raises(openai.APIError, match="upstream reset"):
        seen.extend(chunk.choices[0].delta.content for chunk in stream)
    assert seen == ["Hel"]


def test_openai_sdk_raises_on_responses_error_event() -> None:
    body = RESPONSES_PREAMBLE[0] + OPENAI_RESPONSES.error_event("upstream reset", sequence_number=1)
    client = openai.OpenAI(api_key="k", base_url="http://upstream/v1", http_client=_client(body))
    stream = client.responses.create(model="m", input="hi", stream=True)
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="upstream reset"):
        seen.extend(event.type for event in stream)
    assert seen == ["response.created"]


def test_anthropic_sdk_raises_on_error_event() -> None:
    body = MESSAGE_START + TEXT_DELTA + ANTHROPIC_MESSAGES.error_event("upstream reset")
    client = anthropic.Anthropic(api_key="k", base_url="http://upstream", http_client=_client(body))
    stream = client.messages.create(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        seen.extend(event.type for event in stream)
    assert seen == ["message_start", "content_block_delta"]
    assert info.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "upstream reset"},
    }
