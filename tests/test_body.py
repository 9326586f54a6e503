"""Byte-exact model rewrite (property-tested)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hydrallm.formats.body import BodyError, _walk_object, parse_body, parse_strict

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _dump_variants(value: object, seed: int) -> str:
    """Serialise with varied but valid formatting."""
    if seed % 3 == 0:
        return json.dumps(value)
    if seed % 3 == 1:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def test_replaces_only_the_model_value_and_keeps_every_other_byte() -> None:
    raw = b'{ "stream" : true,\n  "model":"claude-x" ,"n": 1.50e3, "s":"\\u00e9" }'
    body = parse_body(raw)
    assert body is not None
    assert body.requested_model == "claude-x"
    assert body.stream is True
    assert (
        body.with_model("glm-5")
        == b'{ "stream" : true,\n  "model":"glm-5" ,"n": 1.50e3, "s":"\\u00e9" }'
    )


def test_nested_model_keys_are_not_touched() -> None:
    raw = b'{"messages":[{"model":"keep"}],"metadata":{"model":"keep"},"model":"x"}'
    body = parse_body(raw)
    assert body is not None
    assert (
        body.with_model("y")
        == b'{"messages":[{"model":"keep"}],"metadata":{"model":"keep"},"model":"y"}'
    )


def test_missing_model_is_added_last() -> None:
    body = parse_body(b'{"messages": []}')
    assert body is not None and body.requested_model is None
    assert body.with_model("m") == b'{"messages": [],"model":"m"}'
    empty = parse_body(b"{ }")
    assert empty is not None
    assert json.loads(empty.with_model("m")) == {"model": "m"}


def test_non_object_bodies_are_left_alone() -> None:
    for raw in (
        b"",
        b"[1,2]",
        b'"x"',
        b"{",
        b'{"a":1} trailing',
        b'{"a":NaN}',
        b"\xff\xfe",
        b"null",
    ):
        assert parse_body(raw) is None


def test_unicode_model_names_are_escaped_validly() -> None:
    body = parse_body('{"model":"ä","x":"日本"}'.encode())
    assert body is not None
    out = body.with_model("模型/v1")
    assert json.loads(out) == {"model": "模型/v1", "x": "日本"}
    assert out.endswith(',"x":"日本"}'.encode())


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(max_size=6), json_values, max_size=6),
    st.text(max_size=20),
    st.integers(0, 2),
)
def test_rewrite_property_for_objects(obj: dict[str, object], new_model: str, seed: int) -> None:
    raw = _dump_variants(obj, seed).encode()
    body = parse_body(raw)
    assert body is not None
    out = body.with_model(new_model)
    expected = dict(obj)
    expected["model"] = new_model
    assert json.loads(out) == expected
    if "model" in obj:
        # Everything outside the model value is byte-identical.
        start, end = body.model_spans[-1]
        text = raw.decode()
        assert out.decode().startswith(text[:start])
        assert out.decode().endswith(text[end:])
    else:
        assert out.startswith(raw.rstrip()[:-1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_and_non_objects_are_untouched(raw: bytes) -> None:
    body = parse_body(raw)
    if body is None:
        return
    parsed = json.loads(raw)
    assert isinstance(parsed, dict)
    assert json.loads(body.with_model("z")) == {**parsed, "model": "z"}


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_value_is_object_or_untouched(value: object) -> None:
    raw = json.dumps(value).encode()
    body = parse_body(raw)
    assert (body is not None) == isinstance(value, dict)


def test_model_spelled_with_escapes_is_found_and_nested_ones_are_kept() -> None:
    # The text search of the one-scan path would find the nested "model"; the top-level key
    # is spelled with a \\u escape, so the body must go the member-by-member way.
    raw = b'{"messages":[{"model":"keep"}],"mod\\u0065l":"x","note":"a \\"model\\" b"}'
    body = parse_strict(raw)
    assert body.requested_model == "x"
    out = json.loads(body.with_model("y"))
    assert out == {"messages": [{"model": "keep"}], "model": "y", "note": 'a "model" b'}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"a","mod\\u0065l":"b"}',  # the same key twice, spelled two ways
        b'{"model":"a","x":{"y":1},"model":"b"}',
    ],
)
def test_a_repeated_top_level_model_is_refused_however_spelled(raw: bytes) -> None:
    with pytest.raises(BodyError, match="more than one top-level"):
        parse_strict(raw)


_PIECES = st.sampled_from(
    [
        '"model":"m1"',
        '"model" : "m2"',
        '"mod\\u0065l":"m3"',
        '"model":{"model":"n"}',
        '"model":7',
        '"stream":true',
        '"stream":false',
        '"messages":[{"role":"user","content":"say \\"model\\""}]',
        '"x":"model"',
        '"meta":{"model":"nested"}',
        '"s":"\\u00e9\\n"',
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=5), st.sampled_from(["", " ", "\n  "]))
def test_one_scan_and_the_member_walk_agree(pieces: list[str], pad: str) -> None:
    # parse_strict takes a one-scan shortcut when it can; it must say exactly what the walk
    # over the members says, refusals included.
    text = "{" + pad + ("," + pad).join(pieces) + pad + "}"
    raw = text.encode()
    try:
        walked = _walk_object(text, 1, raw)
    except BodyError:
        with pytest.raises(BodyError):
            parse_strict(raw)
        return
    if len(walked.model_spans) > 1:
        with pytest.raises(BodyError, match="more than one top-level"):
            parse_strict(raw)
        assert parse_body(raw) == walked
        return
    assert parse_strict(raw) == walked
