"""Re-spelled tool arguments, at the splicers (no proxy): a call the client has part of,
spelled one way, restarted by a model that spells its arguments another way.

The promise: the client ends with either the continuing model's arguments re-spelled
consistently with what it already has (its text starts with the client's part, is strict
JSON, valid UTF-8, and holds the model's very tokens: numbers as written, key order,
repeated keys), or the honest give-up (`Mismatch`) with nothing of the held call sent.
When both spellings are ones the families use, the same value is always finished.

The examples are bounded for CI; `HYDRALLM_RESPELL_EXAMPLES=3000 pytest tests/test_respell.py`
runs more.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hydrallm.formats.align import Aligner
from hydrallm.formats.frames import parse_event
from hydrallm.formats.midstream import Mismatch, Transcript, make_splicer
from hydrallm.formats.peek import StreamKind
from hydrallm.formats.respell import respell
from hydrallm.formats.transcript import TOOL
from hydrallm.testing import ToolCall
from hydrallm.testing.answers import AnswerSpec, Api, stream_answer

EXAMPLES = int(os.environ.get("HYDRALLM_RESPELL_EXAMPLES", "80"))
KINDS = {
    Api.MESSAGES: StreamKind.ANTHROPIC,
    Api.CHAT: StreamKind.OPENAI_CHAT,
    Api.RESPONSES: StreamKind.OPENAI_RESPONSES,
}


# --- The test's own JSON writer: every spelling a model might use --------------------


@dataclass(frozen=True)
class Num:
    """A number token as a model writes it (`1.0`, `1e5`, `-0` are all kept)."""

    text: str


@dataclass(frozen=True)
class Obj:
    pairs: tuple[tuple[str, Any], ...]  # order and repeated keys as written


@dataclass(frozen=True)
class Spelling:
    items: str = ", "
    colon: str = ": "
    ascii_only: bool = False
    slash: bool = False  # `\/` for `/`
    upper: bool = False  # `\u00E9` rather than `\u00e9`
    indent: int | None = None  # pretty-printed: whitespace nested in the value
    reverse: bool = False  # keys in the other order: another token stream


# What the families send: json.dumps' default (Anthropic) and compact (OpenAI, Gemini).
USED = [
    Spelling(", ", ": ", True),
    Spelling(",", ":", False),
    Spelling(",", ":", True),
    Spelling(", ", ": ", False),
]
ODD = [
    Spelling(",", ":", True, slash=True),
    Spelling(", ", ": ", True, upper=True),
    Spelling(",", ": ", False),
    Spelling(" , ", " : ", False),
    Spelling(",", ": ", False, indent=2),
    Spelling(",", ":", False, reverse=True),
]
SHORT = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _u(code: int, s: Spelling) -> str:
    return f"\\u{code:04X}" if s.upper else f"\\u{code:04x}"


def write_string(text: str, s: Spelling) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in SHORT:
            out.append(SHORT[ch])
        elif ch == "/" and s.slash:
            out.append("\\/")
        elif code < 0x20 or 0xD800 <= code <= 0xDFFF:  # controls; a lone surrogate has no UTF-8
            out.append(_u(code, s))
        elif s.ascii_only and code > 0x7E:
            if code > 0xFFFF:
                code -= 0x10000
                out.append(_u(0xD800 + (code >> 10), s) + _u(0xDC00 + (code & 0x3FF), s))
            else:
                out.append(_u(code, s))
        else:
            out.append(ch)
    return "".join(out) + '"'


def write(value: Any, s: Spelling, depth: int = 0) -> str:
    if isinstance(value, str):
        return write_string(value, s)
    if isinstance(value, Num):
        return value.text
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    items, colon = s.items, s.colon
    pad = end = ""
    if s.indent is not None:
        pad, end = "\n" + " " * (s.indent * (depth + 1)), "\n" + " " * (s.indent * depth)
        items = items.rstrip() + pad
    if isinstance(value, list):
        body = items.join(write(v, s, depth + 1) for v in value)
        return f"[{pad}{body}{end}]" if value else "[]"
    pairs = value.pairs[::-1] if s.reverse and depth == 0 else value.pairs
    body = items.join(write_string(k, s) + colon + write(v, s, depth + 1) for k, v in pairs)
    return f"{{{pad}{body}{end}}}" if pairs else "{}"


def tokens(text: str) -> Any:
    """Strict JSON's token tree (a raise for anything else): numbers as written, pairs in
    order with repeats, so `1 == 1.0 == True` and `{"a":1,"a":2} == {"a":2}` are not."""

    def constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(
        text,
        object_pairs_hook=lambda pairs: ("object", pairs),
        parse_int=lambda t: ("number", t),
        parse_float=lambda t: ("number", t),
        parse_constant=constant,
    )


def test_the_writer_spells_as_json_dumps_does() -> None:
    # The test's writer is checked against json.dumps on the spellings families use, so
    # that "a used spelling is always finished" below holds against the real thing.
    value = {"a/é": ["x\x85\x1f\u2028😀\x7f", 1, 2.5, None, True, {}], "b": []}
    tree = Obj((("a/é", ["x\x85\x1f\u2028😀\x7f", Num("1"), Num("2.5"), None, True, Obj(())]),))
    tree = Obj((*tree.pairs, ("b", [])))
    for s in USED:
        assert write(tree, s) == json.dumps(
            value, separators=(s.items, s.colon), ensure_ascii=s.ascii_only
        )
    assert json.loads(write(tree, ODD[4])) == value


# --- Values -------------------------------------------------------------------------

# Characters that broke or could break a splice: ones `str.splitlines` cuts at (\x85,
# \x1c-\x1e, \u2028), controls JSON must escape, lone surrogates, escapes and non-BMP.
AWKWARD = "\x85\x1c\x1d\x1e\x1f\x00\x0b\x0c\x7f\u2028\u2029\ud800\udfff\ud83d/\\\"'é😀 \n\t"
CHARS = st.one_of(st.sampled_from(AWKWARD), st.characters())
NUMBERS = st.one_of(
    st.sampled_from(["0", "-0", "1", "1.0", "-0.0", "1e5", "1E+2", "2.5e-3", "1e400"]),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.just("123456789012345678901234567890"),
).map(Num)
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(CHARS, max_size=6))
KEYS = st.one_of(st.sampled_from(["city", "unit", "a/b", "é"]), st.text(CHARS, max_size=4))


def objects(children: st.SearchStrategy[Any], min_size: int = 0) -> st.SearchStrategy[Obj]:
    pairs = st.lists(st.tuples(KEYS, children), min_size=min_size, max_size=4)
    return pairs.map(lambda p: Obj(tuple(p)))


VALUES = st.recursive(LEAVES, lambda c: st.lists(c, max_size=3) | objects(c), max_leaves=8)
ARGUMENTS = objects(VALUES, min_size=1)


# --- The splicers -------------------------------------------------------------------


def client_stream(api: Api, part: str, closed: bool) -> bytes:
    """What the client got: a call whose arguments so far are `part` (closed: all)."""
    stream = stream_answer(
        api, AnswerSpec(model="m", answer_id="a", tool_call=ToolCall(arguments=part))
    )
    tail = {Api.MESSAGES: 1, Api.RESPONSES: 2}.get(api, 0) if closed else 0
    return b"".join(stream.head + stream.content + stream.tail[:tail])


def events(raw: bytes) -> list[dict[str, Any]]:
    parsed = (parse_event(chunk + b"\n\n") for chunk in raw.split(b"\n\n") if chunk.strip())
    return [e.data for e in parsed if e.data is not None]


def call_text(kind: StreamKind, raw: bytes) -> str:
    fresh = Transcript(kind)
    fresh.feed(raw)
    [call] = [b for b in fresh.blocks if b.kind == TOOL]
    return call.text


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    api=st.sampled_from(list(KINDS)),
    value=ARGUMENTS,
    # Mostly the same value (a restart of the same call), else another one.
    other=st.one_of(st.none(), st.none(), st.none(), objects(VALUES)),
    had=st.sampled_from(USED + ODD),
    then=st.sampled_from(USED + ODD),
    cut=st.floats(min_value=0, max_value=1),
    closed=st.booleans(),
    size=st.integers(min_value=1, max_value=300),
)
def test_a_restarted_call_is_finished_in_the_clients_spelling_or_given_up(
    api: Api,
    value: Obj,
    other: Obj | None,
    had: Spelling,
    then: Spelling,
    cut: float,
    closed: bool,
    size: int,
) -> None:
    kind = KINDS[api]
    closed = closed and api is not Api.CHAT  # chat has no block stop
    first = write(value, had)
    part = first if closed else first[: round(len(first) * cut)]
    model = write(other if other is not None else value, then)  # the continuing model's
    sent = client_stream(api, part, closed)
    client = Transcript(kind)
    client.feed(sent)
    splicer = make_splicer(client, None)
    rest = b"".join(
        stream_answer(
            api, AnswerSpec(model="m", answer_id="b", tool_call=ToolCall(arguments=model))
        ).events()
    )
    got = b""
    try:
        for i in range(0, len(rest), size):
            got += splicer.feed(rest[i : i + size])
        got += splicer.eof()
        if not splicer.finished:
            splicer.aligner.finish()
    except Mismatch:
        # The honest give-up: what went out before it adds nothing to the held call.
        assert call_text(kind, sent + got) == part
        same = tokens(model) == tokens(first)
        assert not (same and had in USED and then in USED), (
            "a used spelling of the same value was given up"
        )
        event("given up")
        return
    held = splicer.aligner.slot(client.blocks[0].key).respelled is not None
    event("re-spelled" if held else "finished as the model spelled it")
    whole = sent + got
    text = call_text(kind, whole)
    assert text.startswith(part)
    text.encode()  # valid UTF-8: no raw lone surrogate
    assert tokens(text) == tokens(model)  # strict JSON with the model's very tokens
    assert json.loads(text) == json.loads(model)
    if closed:
        assert text == part  # the client has the call: nothing of it is sent again
    if api is Api.RESPONSES:  # `.done` and the final response repeat the client's text
        sent_events = events(whole)
        done = [e["arguments"] for e in sent_events if e["type"].endswith("arguments.done")]
        assert done == [text]
        assert sent_events[-1]["response"]["output"][0]["arguments"] == text
        # Every event of the call names the item the client knows.
        assert {e["item_id"] for e in sent_events if "item_id" in e} == {"fc_a"}
    if api is Api.CHAT:  # the SDK joins the fragments: the same text
        pieces = [
            c["function"].get("arguments") or ""
            for e in events(whole)
            for ch in e.get("choices") or []
            for c in ch["delta"].get("tool_calls") or []
        ]
        assert "".join(pieces) == text


@pytest.mark.parametrize("api", list(KINDS))
def test_a_call_with_another_value_is_never_spliced(api: Api) -> None:
    client = Transcript(KINDS[api])
    client.feed(client_stream(api, '{"city": "Pa', closed=False))
    spec = AnswerSpec(model="m", answer_id="b", tool_call=ToolCall(arguments='{"city":"Lyon"}'))
    splicer = make_splicer(client, None)
    with pytest.raises(Mismatch):
        assert splicer.feed(b"".join(stream_answer(api, spec).events())) == b""
        splicer.eof()


@pytest.mark.parametrize(
    ("model", "have"),
    [
        ('{"n":1.0}', '{"n": 1'),  # 1.0 stays 1.0, not Python's 1
        ('{"n":1e5}', '{"n": 1'),  # not 100000.0
        ('{"n":1e400}', '{"n": 1'),  # not Infinity (which is no JSON)
        ('{"n":-0}', '{"n": -'),  # not 0
        ('{"b":1,"a":2}', '{"b": 1'),  # the model's key order
        ('{"a":1,"a":2}', '{"a": 1'),  # repeats kept, as written
        ('{"s":"\\ud800"}', '{"s": "'),  # a lone surrogate stays escaped
        ('{"s":"\\u2028\\u0085"}', '{"s": "'),
    ],
)
def test_respelling_changes_spelling_only(model: str, have: str) -> None:
    spelled = respell(model, have)
    assert spelled is not None and spelled.startswith(have)
    spelled.encode()
    assert tokens(spelled) == tokens(model)


@pytest.mark.parametrize(
    ("model", "have", "whole"),
    [
        ('{"n":NaN}', '{"n": N', False),  # Python reads it; JSON has no NaN
        ('{"n":Infinity}', "{", False),
        ('{"s":"\x1f"}', '{"s": "', False),  # a raw control character is not JSON
        ('{"a":1} x', "{", False),
        ('{"a":true}', '{"a": 1}', True),  # True == 1 in Python
        ('{"a":1.0}', '{"a": 1}', True),  # another token, though 1.0 == 1 in Python
        ('{"a":2,"a":1}', '{"a": 1}', True),  # json.loads keeps the last: equal
        ('{"a":1}', '{"a":  1', False),  # no such spelling
        ('{"a":1}', '{"b"', False),
        ("[" * 100_000 + "]" * 100_000, "[", False),  # too deep to read: no traceback
    ],
)
def test_what_is_not_the_same_strict_json_is_given_up(model: str, have: str, whole: bool) -> None:
    assert respell(model, have, whole=whole) is None


def test_the_aligner_holds_a_departing_call_until_it_closes() -> None:
    # Nothing of a call spelled otherwise goes out before its value is known whole.
    client = Transcript(StreamKind.ANTHROPIC)
    client.feed(client_stream(Api.MESSAGES, '{"city": "Pa', closed=False))
    aligner = Aligner(client.blocks, {})
    key = client.blocks[0].key
    aligner.start(key, TOOL, "get_weather")
    assert aligner.delta(key, '{"city":"Paris"}') == ""
    assert not aligner.caught_up()
    assert aligner.settle(key) == 'ris"}'
    assert aligner.stop(key)
    assert aligner.client_text(key) == '{"city": "Paris"}'


@pytest.mark.parametrize("char", ["\x85", "\u2028", "\u2029"])
def test_an_event_whose_json_carries_a_unicode_line_break_is_read_whole(char: str) -> None:
    # JSON carries these raw inside strings; SSE ends lines at CR and LF only.  Read as
    # line ends (`str.splitlines`), they cut the event in two and the call's arguments
    # were lost to the transcript: the root of the invalid JSON the splice once sent.
    delta = {"type": "input_json_delta", "partial_json": f'{{"s": "{char}"}}'}
    body = {"type": "content_block_delta", "index": 0, "delta": delta}
    raw = f"event: content_block_delta\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"
    for ending in ("\n", "\r\n"):
        event = parse_event(raw.replace("\n", ending).encode())
        assert event.data == body


def chat_chunk(delta: dict[str, Any], finish: str | None = None, id_: str = "c") -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": id_, "object": "chat.completion.chunk", "choices": [choice]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


def chat_calls(calls: list[str], cut: int | None = None, finish: bool = False) -> bytes:
    """Chat chunks of one call per arguments text (the last cut at `cut`)."""
    out = chat_chunk({"role": "assistant", "content": ""})
    for i, args in enumerate(calls):
        head = {"index": i, "id": f"call_{i}", "type": "function"}
        out += chat_chunk({"tool_calls": [{**head, "function": {"name": "w", "arguments": ""}}]})
        for piece in (args[:5], args[5:cut] if i == len(calls) - 1 and cut else args[5:]):
            out += chat_chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    return out + (chat_chunk({}, "tool_calls") + b"data: [DONE]\n\n" if finish else b"")


@pytest.mark.parametrize("second", [{"city": "Lyon é"}, {"city": "Nice"}])
def test_two_chat_calls_spelled_otherwise_are_each_finished_or_given_up(
    second: dict[str, str],
) -> None:
    # Chat has no block stop: a held call is settled when the next one opens, the last
    # when the answer finishes.  The client has call 0 whole and call 1 in part.
    first = {"city": "Paris", "n": Num("1.0")}
    spaced = [write(Obj(tuple(first.items())), USED[0]), json.dumps({"city": "Lyon é"})]
    sent = chat_calls(spaced, cut=12)
    client = Transcript(StreamKind.OPENAI_CHAT)
    client.feed(sent)
    compact = [
        write(Obj(tuple(first.items())), USED[1]),
        write(Obj(tuple(second.items())), USED[1]),
    ]
    splicer = make_splicer(client, None)
    got = b""
    try:
        for byte in range(len(rest := chat_calls(compact, finish=True))):
            got += splicer.feed(rest[byte : byte + 1])
    except Mismatch:
        assert second == {"city": "Nice"}  # call 1 is another value: nothing of it goes
        fresh = Transcript(StreamKind.OPENAI_CHAT)
        fresh.feed(sent + got)
        assert [b.text for b in fresh.blocks] == [spaced[0], spaced[1][:12]]
        return
    fresh = Transcript(StreamKind.OPENAI_CHAT)
    fresh.feed(sent + got)
    # Spaced as the client's began; `é` raw, as its part (`{"city": "Ly`) does not say.
    assert [b.text for b in fresh.blocks] == [spaced[0], json.dumps(second, ensure_ascii=False)]
    assert fresh.finished
