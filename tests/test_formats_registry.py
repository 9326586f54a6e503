"""The registry picks one wire format per response; each format reads back what it writes."""

from __future__ import annotations

import base64
import json

import pytest

from hydrallm.formats.anthropic_messages import ANTHROPIC_MESSAGES
from hydrallm.formats.base import WireFormat
from hydrallm.formats.bedrock_eventstream import BEDROCK_EVENTSTREAM
from hydrallm.formats.eventstream import encode_message
from hydrallm.formats.openai_chat import OPENAI_CHAT
from hydrallm.formats.openai_responses import OPENAI_RESPONSES
from hydrallm.formats.passthrough import PASSTHROUGH
from hydrallm.formats.peek import Commit, Failed
from hydrallm.formats.registry import FORMATS, for_kind, select_format
from hydrallm.testing.answers import AnswerSpec, Api, stream_answer

SSE = "text/event-stream"
EVENTSTREAM = "application/vnd.amazon.eventstream"


@pytest.mark.parametrize(
    ("content_type", "api", "path", "streaming", "encoding", "expected"),
    [
        (SSE, "anthropic", "/v1/messages", True, "", ANTHROPIC_MESSAGES),
        (SSE + "; charset=utf-8", "openai", "/v1/chat/completions", True, "", OPENAI_CHAT),
        ("Text/Event-Stream", "openai", "/v1/responses", True, "", OPENAI_RESPONSES),
        (SSE, "openai", "/openai/v1/responses?x=1", True, "", OPENAI_RESPONSES),
        (EVENTSTREAM, "bedrock", "/model/m/converse-stream", True, "", BEDROCK_EVENTSTREAM),
        (
            EVENTSTREAM,
            "bedrock",
            "/model/m/invoke-with-response-stream",
            True,
            "",
            BEDROCK_EVENTSTREAM,
        ),
        # The peek reads gzip and deflate; the format stays.
        (SSE, "openai", "/v1/chat/completions", True, "gzip", OPENAI_CHAT),
        (SSE, "anthropic", "/v1/messages", True, "deflate", ANTHROPIC_MESSAGES),
        # Compressed beyond what the peek reads: relayed from the first byte.
        (SSE, "openai", "/v1/chat/completions", True, "br", PASSTHROUGH),
        (EVENTSTREAM, "bedrock", "/model/m/converse-stream", True, "zstd", PASSTHROUGH),
        # A streaming request answered in a media type no format reads (Ollama's NDJSON).
        ("application/x-ndjson", "openai", "/api/chat", False, "", PASSTHROUGH),
        ("application/json", "openai", "/v1/chat/completions", True, "", PASSTHROUGH),
        # Whole bodies are no stream, compressed or not: buffered before commit.
        ("application/json", "openai", "/v1/chat/completions", False, "", None),
        ("application/json", "anthropic", "/v1/messages", False, "br", None),
        ("", "bedrock", "/model/m/converse", False, "", None),
    ],
)
def test_select_format_picks_one_format_per_response(
    content_type: str,
    api: str,
    path: str,
    streaming: bool,
    encoding: str,
    expected: WireFormat | None,
) -> None:
    found = select_format(content_type, api=api, path=path, streaming=streaming, encoding=encoding)
    assert found is expected


def test_every_format_is_registered_once_and_found_by_its_kind() -> None:
    assert len({fmt.name for fmt in FORMATS}) == len(FORMATS) == 5
    for fmt in FORMATS:
        assert for_kind(fmt.kind) is fmt


def test_capabilities_are_data() -> None:
    recoverable = {fmt.name for fmt in FORMATS if fmt.supports_recovery}
    assert recoverable == {"openai_chat", "openai_responses", "anthropic_messages"}
    silent = {fmt.name for fmt in FORMATS if not fmt.writes_errors}
    assert silent == {"passthrough"}
    assert {fmt.codec for fmt in FORMATS} == {"sse", "eventstream", "raw"}


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.writes_errors], ids=lambda f: f.name)
def test_the_error_event_a_format_writes_is_one_error_event_for_it(fmt: WireFormat) -> None:
    wire = fmt.error_event("upstream stalled", error_type="overloaded_error")
    events = fmt.reader().feed(wire)
    assert len(events) == 1
    assert fmt.is_error_event(events[0])
    assert not fmt.is_terminal(events[0])
    if fmt.codec == "sse":
        assert fmt.maybe_error(events[0].raw)
    # Before commit, the same bytes are a failure of the attempt, not a start.
    verdict = fmt.peeker().feed(wire)
    assert isinstance(verdict, Failed)
    assert "upstream stalled" in verdict.message


def test_passthrough_commits_on_the_first_byte_and_reads_nothing() -> None:
    assert PASSTHROUGH.peeker().feed(b"{") == Commit()
    assert PASSTHROUGH.reader().feed(b'{"done": true}\n') == []
    assert PASSTHROUGH.error_event("x") == b""
    assert PASSTHROUGH.usage_from_body({"usage": {"prompt_tokens": 3}}) is None
    with pytest.raises(NotImplementedError):
        PASSTHROUGH.new_transcript()


@pytest.mark.parametrize(
    ("api", "fmt"),
    [
        (Api.CHAT, OPENAI_CHAT),
        (Api.RESPONSES, OPENAI_RESPONSES),
        (Api.MESSAGES, ANTHROPIC_MESSAGES),
    ],
)
def test_only_the_last_event_of_a_whole_answer_is_terminal(api: Api, fmt: WireFormat) -> None:
    spec = AnswerSpec(model="m", answer_id="a", text="Hydras regrow heads", include_usage=True)
    events = fmt.reader().feed(b"".join(stream_answer(api, spec).events()))
    assert len(events) > 3
    assert [fmt.is_terminal(e) for e in events] == [False] * (len(events) - 1) + [True]
    assert not any(fmt.is_error_event(e) for e in events)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.terminal_event], ids=lambda f: f.name)
def test_the_terminal_event_hydrallm_writes_reads_back_as_terminal(fmt: WireFormat) -> None:
    assert fmt.terminal_event is not None
    [event] = fmt.reader().feed(fmt.terminal_event)
    assert fmt.is_terminal(event)


def _frame(event_type: str, body: object) -> bytes:
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, json.dumps(body).encode())


def _chunk(inner: object) -> bytes:
    return _frame("chunk", {"bytes": base64.b64encode(json.dumps(inner).encode()).decode()})


def test_bedrock_terminal_events_of_both_stream_operations() -> None:
    converse = [
        _frame("messageStart", {"role": "assistant"}),
        _frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        _frame("contentBlockStop", {"contentBlockIndex": 0}),
        _frame("messageStop", {"stopReason": "end_turn"}),
        _frame("metadata", {"usage": {"inputTokens": 3, "outputTokens": 1}, "metrics": {}}),
    ]
    invoke = [
        _chunk({"type": "message_start", "message": {"id": "msg_1", "usage": {}}}),
        _chunk({"type": "content_block_delta", "index": 0, "delta": {"text": "Hi"}}),
        _chunk({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 1}}),
        _chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": {}}),
    ]
    for frames in (converse, invoke):
        events = BEDROCK_EVENTSTREAM.reader().feed(b"".join(frames))
        flags = [BEDROCK_EVENTSTREAM.is_terminal(e) for e in events]
        assert flags == [False] * (len(frames) - 1) + [True]


def test_a_corrupt_event_stream_ends_the_reading_without_an_error() -> None:
    frame = bytearray(_frame("messageStart", {"role": "assistant"}))
    frame[-1] ^= 0xFF  # break the message CRC
    reader = BEDROCK_EVENTSTREAM.reader()
    assert reader.feed(bytes(frame)) == []
    assert reader.feed(_frame("messageStop", {})) == []


def test_bedrock_exceptions_read_as_error_events_with_their_type() -> None:
    wire = BEDROCK_EVENTSTREAM.error_event("slow down", error_type="throttlingException")
    [event] = BEDROCK_EVENTSTREAM.reader().feed(wire)
    assert BEDROCK_EVENTSTREAM.is_error_event(event)
    assert event.data == {"message": "slow down", ":exception-type": "throttlingException"}
    # An ordinary event is none, whatever its name.
    [plain] = BEDROCK_EVENTSTREAM.reader().feed(_frame("messageStop", {"stopReason": "x"}))
    assert not BEDROCK_EVENTSTREAM.is_error_event(plain)


def test_recovery_is_a_provider_capability_that_matches_its_stream_formats() -> None:
    from hydrallm.providers import provider_for

    # OpenAI and Anthropic answer in SSE formats the splice reads; Bedrock in frames.
    assert provider_for("openai").supports_recovery
    assert provider_for("anthropic").supports_recovery
    assert not provider_for("bedrock").supports_recovery
    for api, path, media in [
        ("openai", "/v1/chat/completions", SSE),
        ("openai", "/v1/responses", SSE),
        ("anthropic", "/v1/messages", SSE),
        ("bedrock", "/model/m/converse-stream", EVENTSTREAM),
    ]:
        fmt = select_format(media, api=api, path=path, streaming=True)
        assert fmt is not None
        assert fmt.supports_recovery is provider_for(api).supports_recovery
