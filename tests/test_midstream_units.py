"""The sans-IO parts of mid-stream recovery: transcript, splice, prefill body, error guard."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from hydrallm.errors import StreamFailure
from hydrallm.formats.midstream import (
    Mismatch,
    Transcript,
    make_splicer,
    names_prefill,
    prefill_body,
)
from hydrallm.formats.peek import StreamKind
from hydrallm.formats.registry import for_kind
from hydrallm.proxy.recovery import GuardedResponse
from hydrallm.testing import CANONICAL_TEXT, split_text
from hydrallm.testing.answers import AnswerSpec, Api, ToolCall, error_event, stream_answer

KINDS = {
    Api.CHAT: StreamKind.OPENAI_CHAT,
    Api.RESPONSES: StreamKind.OPENAI_RESPONSES,
    Api.MESSAGES: StreamKind.ANTHROPIC,
}
WORDS = len(split_text(CANONICAL_TEXT))


def answer(api: Api, text: str = CANONICAL_TEXT, tool: ToolCall | None = None, name: str = "a"):
    spec = AnswerSpec(model="m", answer_id=name, text=text, tool_call=tool, include_usage=True)
    return stream_answer(api, spec)


def cut(api: Api, n: int, tool: ToolCall | None = None) -> bytes:
    """The bytes a client got before the upstream broke after `n` content chunks."""
    stream = answer(api, tool=tool)
    return b"".join(stream.head + stream.content[:n])


def feed_in_pieces(transcript: Transcript, data: bytes, size: int) -> None:
    for i in range(0, len(data), size):
        transcript.feed(data[i : i + size])


@pytest.mark.parametrize("api", list(KINDS))
def test_transcript_reads_what_the_client_has_in_any_chunking(api: Api) -> None:
    seen = "".join(split_text(CANONICAL_TEXT)[:7])
    for size in (1, 7, 10_000):
        t = Transcript(KINDS[api])
        feed_in_pieces(t, cut(api, 7), size)
        assert t.text == seen and t.prefill_text() == seen
        assert t.started and not t.finished and not t.done


@pytest.mark.parametrize("api", list(KINDS))
def test_a_tool_call_cannot_be_prefilled(api: Api) -> None:
    t = Transcript(KINDS[api])
    t.feed(cut(api, 1, tool=ToolCall()))
    assert t.prefill_text() is None


@settings(max_examples=40, deadline=None)
@given(
    api=st.sampled_from(list(KINDS)),
    n=st.integers(min_value=0, max_value=WORDS),
    prefill=st.booleans(),
    size=st.integers(min_value=1, max_value=400),
)
def test_splice_gives_the_client_the_whole_answer_once(
    api: Api, n: int, prefill: bool, size: int
) -> None:
    kind = KINDS[api]
    client = Transcript(kind)
    got = cut(api, n)
    client.feed(got)
    given_text = (client.prefill_text() or "").rstrip() if prefill else ""
    rest = CANONICAL_TEXT[len(given_text) :]
    continuation = b"".join(answer(api, rest, name="b").events())
    splicer = make_splicer(client, given_text or None)
    for i in range(0, len(continuation), size):
        more = splicer.feed(continuation[i : i + size])
        client.feed(more)
        got += more
    got += splicer.eof()
    # Read back from the wire bytes alone, as a client would.
    fresh = Transcript(kind)
    fresh.feed(got)
    assert fresh.text == CANONICAL_TEXT
    assert fresh.finished and fresh.done and fresh.usage
    text = got.decode()
    if api is Api.MESSAGES:
        assert text.count("event: message_start") == 1
        assert text.count("event: content_block_start") == 1
        assert text.count("event: message_stop") == 1
    elif api is Api.CHAT:
        assert text.count('"role"') == 1 and text.count("[DONE]") == 1
    else:
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert len({e["item_id"] for e in events if "item_id" in e}) == 1
        final = events[-1]["response"]
        assert final["id"] == events[0]["response"]["id"]
        assert final["output"][0]["content"][0]["text"] == CANONICAL_TEXT


@pytest.mark.parametrize("api", list(KINDS))
def test_a_restart_that_differs_is_never_spliced(api: Api) -> None:
    client = Transcript(KINDS[api])
    client.feed(cut(api, 5))
    other = b"".join(answer(api, "Hydras never regrow anything at all, sorry.").events())
    splicer = make_splicer(client, None)
    with pytest.raises(Mismatch):
        out = splicer.feed(other)
        assert out == b""  # nothing was let through before the difference showed
        splicer.eof()


@pytest.mark.parametrize("api", list(KINDS))
def test_a_restart_that_ends_before_what_the_client_has_is_a_mismatch(api: Api) -> None:
    client = Transcript(KINDS[api])
    client.feed(cut(api, 9))
    shorter = b"".join(answer(api, "".join(split_text(CANONICAL_TEXT)[:4])).events())
    with pytest.raises(Mismatch):
        make_splicer(client, None).feed(shorter)


@pytest.mark.parametrize("api", list(KINDS))
def test_a_restarted_tool_call_continues_the_arguments_only(api: Api) -> None:
    call = ToolCall()
    client = Transcript(KINDS[api])
    got = cut(api, 1, tool=call)
    client.feed(got)
    got += make_splicer(client, None).feed(b"".join(answer(api, tool=call, name="b").events()))
    text = got.decode()
    # Announced once (Responses also names it in output_item.done and response.completed).
    assert text.count("get_weather") == (3 if api is Api.RESPONSES else 1)
    fresh = Transcript(KINDS[api])
    fresh.feed(got)
    tools = [b for b in fresh.blocks if b.kind == "tool"]
    assert len(tools) == 1 and json.loads(tools[0].text) == {"city": "Paris"}


def test_prefill_body_appends_an_assistant_turn_without_trailing_space() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    out = json.loads(prefill_body(StreamKind.ANTHROPIC, body, "Hydras regrow ") or b"")
    assert out["messages"][-1] == {"role": "assistant", "content": "Hydras regrow"}
    assert out["stream"] is True and body["messages"][-1]["role"] == "user"


def test_prefill_body_follows_the_clients_own_prefill() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "{"}]}
    out = json.loads(prefill_body(StreamKind.OPENAI_CHAT, body, '"a": 1') or b"")
    assert out["messages"][-1] == {"role": "assistant", "content": '{"a": 1'}


def test_prefill_body_for_responses_turns_a_string_input_into_turns() -> None:
    out = json.loads(prefill_body(StreamKind.OPENAI_RESPONSES, {"input": "hi"}, "Hy") or b"")
    assert out["input"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hy"},
    ]
    assert prefill_body(StreamKind.OPENAI_RESPONSES, {"input": "hi"}, "   ") is None


def test_a_refusal_naming_the_prefill_is_recognised() -> None:
    assert names_prefill(
        b'{"error":{"message":"This model does not support assistant message prefill"}}'
    )
    assert names_prefill(b"The final message must be a user message")
    assert not names_prefill(b'{"error":{"message":"max_tokens: must be positive"}}')


class _Upstream:
    """A transport-level response that yields scripted chunks."""

    status = 200
    reason = "OK"
    headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def read_chunk(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def release(self) -> None:
        return None

    def abort(self) -> None:
        return None


@pytest.mark.parametrize("api", list(KINDS))
async def test_an_upstream_error_event_becomes_a_break_not_bytes(api: Api) -> None:
    stream = answer(api)
    head = b"".join(stream.head + stream.content[:3])
    failure = error_event(api, "overloaded_error", "Overloaded", spec=AnswerSpec("m", "a"))
    wire = head + failure
    # Split mid-event, so the error event arrives in two pieces.
    guard = GuardedResponse(_Upstream([wire[:-7], wire[-7:]]), for_kind(KINDS[api]))
    passed = b""
    with pytest.raises(StreamFailure, match="overloaded"):
        while chunk := await guard.read_chunk():
            passed += chunk
    assert passed == head


async def test_an_error_event_read_before_commit_is_held_back_too() -> None:
    stream = answer(Api.MESSAGES)
    head = b"".join(stream.head + stream.content[:2])
    failure = error_event(Api.MESSAGES)
    guard = GuardedResponse(_Upstream([]), for_kind(StreamKind.ANTHROPIC))
    assert guard.hold([head + failure]) == [head]
    with pytest.raises(StreamFailure):
        await guard.read_chunk()


def test_prefill_flags_only_mark_chat_completions() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    plain = json.loads(prefill_body(StreamKind.OPENAI_CHAT, body, "Hy") or b"")
    assert plain["messages"][-1] == {"role": "assistant", "content": "Hy"}
    marked = json.loads(prefill_body(StreamKind.OPENAI_CHAT, body, "Hy", "prefix") or b"")
    assert marked["messages"][-1] == {"role": "assistant", "content": "Hy", "prefix": True}
    vllm = json.loads(
        prefill_body(StreamKind.OPENAI_CHAT, body, "Hy", "continue_final_message") or b""
    )
    assert vllm["continue_final_message"] is True and vllm["add_generation_prompt"] is False
    anthropic = json.loads(prefill_body(StreamKind.ANTHROPIC, body, "Hy", "prefix") or b"")
    assert "prefix" not in anthropic["messages"][-1]


# --- issue 13: linear bookkeeping, the prefill probe, `auto`, plain give-up words ----------


@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=40))
@settings(max_examples=60, deadline=None)
def test_the_splitter_finds_every_event_end_wherever_the_chunks_are_cut(sizes: list[int]) -> None:
    from hydrallm.formats.frames import EventSplitter

    data = b"data: a\r\n\r\nevent: x\r\ndata: {}\r\n\r\ndata: b\n\ndata: tail"
    splitter, out, at = EventSplitter(), [], 0
    for size in sizes * 20:
        out += splitter.feed(data[at : at + size])
        at += size
    out += splitter.feed(data[at:])
    assert out == [b"data: a\r\n\r\n", b"event: x\r\ndata: {}\r\n\r\n", b"data: b\n\n"]
    assert splitter.flush() == b"data: tail"


def test_an_event_without_end_past_the_limit_is_refused_not_held() -> None:
    from hydrallm.formats.frames import EventSplitter, EventTooLong

    splitter = EventSplitter(max_event=1000)
    splitter.feed(b"data: " + b"a" * 500)
    with pytest.raises(EventTooLong):
        for _ in range(10):
            splitter.feed(b"a" * 100)
    assert splitter.pending_size <= 1100


def test_a_long_answer_is_kept_piece_by_piece_and_read_whole() -> None:
    transcript = Transcript(StreamKind.OPENAI_CHAT)
    pieces = [f"w{i} " for i in range(5000)]
    stream = answer(Api.CHAT, text="".join(pieces))
    for event in stream.head + stream.content:
        transcript.feed(event)
    assert transcript.prefill_text() == "".join(pieces)
    assert transcript.blocks[0].length == len("".join(pieces))


def test_a_restart_is_compared_piece_by_piece_across_the_clients_text() -> None:
    client = cut(Api.MESSAGES, 3)
    transcript = Transcript(StreamKind.ANTHROPIC)
    transcript.feed(client)
    seen = transcript.text
    # The same words in other chunks: matched across the boundary of what the client has.
    other = AnswerSpec(model="m", answer_id="b", text=CANONICAL_TEXT, chunk_words=2)
    splicer = make_splicer(transcript, None)
    out = b"".join(splicer.feed(e) for e in stream_answer(Api.MESSAGES, other).events())
    relayed = Transcript(StreamKind.ANTHROPIC)
    relayed.feed(client + out)
    assert relayed.text == CANONICAL_TEXT and seen and splicer.finished
    # One character off inside what the client has: refused.
    wrong = AnswerSpec(model="m", answer_id="c", text=CANONICAL_TEXT.replace("regrow", "regrew"))
    splicer = make_splicer(transcript, None)
    with pytest.raises(Mismatch):
        for event in stream_answer(Api.MESSAGES, wrong).events():
            splicer.feed(event)


@pytest.mark.parametrize(
    ("answer_text", "verdict"),
    [
        (CANONICAL_TEXT[len("Hydras regrow two") :], "continued"),  # goes on from the prefill
        (CANONICAL_TEXT, "restated"),  # answered anew, restating the opening
        ("  " + CANONICAL_TEXT, "restated"),
        ("Sure. " + CANONICAL_TEXT, "continued"),  # departs at once: indistinguishable
    ],
)
def test_the_probe_tells_a_continuation_from_an_answer_anew(answer_text: str, verdict: str) -> None:
    from hydrallm.formats.prefill import PrefillProbe

    for api, kind in KINDS.items():
        probe = PrefillProbe(kind, "Hydras regrow two")
        said = None
        events = answer(api, text=answer_text).events()
        for i, event in enumerate(events):
            said = probe.feed(event)
            if said is not None:
                # Decided early: before the answer was over, on its first words.
                assert i < len(events) - 2
                break
        assert (said or probe.eof()) == verdict, api


def test_an_answer_that_opens_with_a_tool_call_is_no_continuation_of_prose() -> None:
    from hydrallm.formats.prefill import PrefillProbe

    probe = PrefillProbe(StreamKind.ANTHROPIC, "Hydras regrow two")
    verdicts = [probe.feed(e) for e in answer(Api.MESSAGES, tool=ToolCall()).events()]
    assert "restated" in verdicts


@pytest.mark.parametrize(
    ("kind", "flag", "body", "expected"),
    [
        (StreamKind.ANTHROPIC, "none", {}, True),
        (StreamKind.ANTHROPIC, "none", {"thinking": {"type": "adaptive"}}, False),
        (
            StreamKind.ANTHROPIC,
            "none",
            {"thinking": {"type": "enabled", "budget_tokens": 9}},
            False,
        ),
        (StreamKind.ANTHROPIC, "none", {"thinking": {"type": "disabled"}}, True),
        (StreamKind.OPENAI_CHAT, "none", {}, False),
        (StreamKind.OPENAI_CHAT, "prefix", {}, True),
        (StreamKind.OPENAI_CHAT, "continue_final_message", {}, True),
        (StreamKind.OPENAI_RESPONSES, "prefix", {}, False),
    ],
)
def test_auto_offers_a_prefill_only_where_the_provider_continues_one(
    kind: StreamKind, flag: str, body: dict[str, object], expected: bool
) -> None:
    from hydrallm.formats.prefill import auto_prefill

    assert auto_prefill(kind, flag, body) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "reason",
    [
        "upstream body broken: Response payload is not completed: <TransferEncodingError: 400>",
        "connection error: ConnectionResetError(104, 'Connection reset by peer')",
        "upstream error event: overloaded_error: Overloaded",
        "upstream stalled: no data for 120s",
    ],
)
def test_the_give_up_message_is_plain_words(reason: str) -> None:
    from hydrallm.proxy.relay import gave_up_message

    message = gave_up_message(reason)
    assert "incomplete" in message and "could not be finished" in message
    assert "<" not in message and "Error(" not in message
