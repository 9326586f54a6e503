"""The journal's optional C module (`hydrallm.observe._rowcodec`) and its Python twin
(`hydrallm.observe.rowcodec`): the same bytes read back, the same usage slice, and the
same journal rows from a real `hydrallm serve` with the C module and without it."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hydrallm.observe import rowcodec
from hydrallm.observe import usage as usage_py
from hydrallm.testing import FakeUpstream, faults
from opshelp import ServeProcess, free_port
from test_journal import config, rows

try:
    from hydrallm.observe import _rowcodec as native
except ImportError:  # not built here (no C compiler at install)
    native = None  # type: ignore[assignment]

needs_native = pytest.mark.skipif(native is None, reason="the C module is not built here")


def test_the_c_module_is_built_and_used_where_a_compiler_was_there() -> None:
    # .ci/run sets HYDRALLM_EXPECT_NATIVE when the machine has a C compiler and Python's
    # headers: there the install must have built the module, and the journal use it.
    if not os.environ.get("HYDRALLM_EXPECT_NATIVE"):
        pytest.skip("no C compiler expected here")
    assert native is not None
    assert rowcodec.NATIVE and rowcodec.usage_slice is native.usage_slice


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**31), max_value=2**31 - 1)
    | st.integers()  # larger ones: left to marshal
    | st.floats(allow_nan=False)
    | st.text()
    | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))  # surrogates
    | st.binary()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.lists(inner, max_size=300).map(tuple),
    max_leaves=400,
)


@given(values)
@settings(max_examples=300, deadline=None)
def test_encode_is_read_back_by_marshal_as_what_was_written(value: Any) -> None:
    data = rowcodec.encode(value)
    back = marshal.loads(data)
    assert back == value
    assert _types(back) == _types(value)


@needs_native
@given(values)
@settings(max_examples=300, deadline=None)
def test_the_c_encoder_writes_what_marshal_reads_or_leaves_it_to_marshal(value: Any) -> None:
    try:
        data = native.encode(value)
    except ValueError:
        assert _has_big_int(value)  # the one thing it leaves to marshal
        return
    assert marshal.loads(data) == value
    assert _types(marshal.loads(data)) == _types(value)


def test_float_edge_values_and_long_strings_survive() -> None:
    value = (
        float("inf"),
        float("-inf"),
        -0.0,
        5e-324,
        "a" * 255,
        "a" * 256,
        "é" * 300,
        b"\x00" * 70_000,
        (1,) * 256,
    )
    back = marshal.loads(rowcodec.encode(value))
    assert back == value
    assert str(back[2]) == "-0.0"
    nan = marshal.loads(rowcodec.encode((float("nan"),)))[0]
    assert nan != nan


class Row(NamedTuple):
    request_id: str
    status: int
    usage: tuple[int, ...] | None


def test_a_namedtuple_row_is_written_as_the_plain_tuple_it_is() -> None:
    # The journal queues a request's event (a NamedTuple) as it is when the C module is
    # in use; marshal writes no tuple subclass: either way the spool holds plain tuples.
    message = ("rows", [Row("r1", 200, (1, 2)), Row("r2", 2**40, None)])
    assert marshal.loads(rowcodec.encode(message)) == (
        "rows",
        [("r1", 200, (1, 2)), ("r2", 2**40, None)],
    )


def test_a_value_neither_can_write_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        rowcodec.encode(("rows", [object()]))
    deep: Any = 1
    for _ in range(12):
        deep = (deep,)
    assert marshal.loads(rowcodec.encode(deep)) == deep  # marshal's turn
    if native is not None:
        with pytest.raises(ValueError):
            native.encode(deep)  # nested deeper than a row and its trail ever are


bodies = st.lists(
    st.sampled_from(
        [b'"usage"', b'"usage":{"prompt_tokens":3}', b'"amazon-bedrock-invocationMetrics"', b'"']
    )
    | st.binary(max_size=40),
    max_size=12,
).map(b"".join)


@needs_native
@given(bodies)
@settings(max_examples=500, deadline=None)
def test_the_c_usage_slice_is_the_python_one(body: bytes) -> None:
    assert native.usage_slice(body) == usage_py.usage_slice(body)


@needs_native
def test_the_c_usage_slice_is_bounded_like_the_python_one() -> None:
    assert native.CARRY == usage_py.USAGE_CARRY
    body = b'{"choices":[],"usage":{"x":1}' + b" " * 100_000 + b"}"
    assert native.usage_slice(body) == usage_py.usage_slice(body)
    assert len(native.usage_slice(body) or b"") == usage_py.USAGE_CARRY
    with pytest.raises(TypeError):
        native.usage_slice("not bytes")  # type: ignore[arg-type]


@needs_native
def test_the_appender_queues_the_usual_row_and_hands_the_rest_to_python() -> None:
    queue: deque[tuple[Any, ...]] = deque(maxlen=8)
    full: list[int] = []
    slow: list[tuple[Any, ...]] = []
    append = native.Appender(queue, 4, lambda: full.append(len(queue)), slow.append)
    usual = ("id", *[None] * 25)
    with_error = (*usual[:17], "boom", *usual[18:])
    with_trail = (*usual[:21], [("step",)], *usual[22:])
    append(usual)
    assert (list(queue), slow) == ([], [usual])  # not `plain` yet: Python decides
    append.plain = True
    for _ in range(9):
        append(usual)
    # Full at each multiple of the batch, and at every row once the queue is at its bound
    # (the sink counts the oldest row dropped there), as `JournalSink.request` does.
    assert (len(queue), full) == (8, [4, 8, 8])
    assert all(marshal.loads(row) == usual for row in queue)  # encoded at its request
    big = ("id", 2**40, *usual[2:])  # a value the C encoder leaves to marshal: Python's
    append(big)
    assert slow[-1] == big
    del slow[-1]
    append(with_error)
    append(with_trail)
    append(("short",))
    assert slow[1:] == [with_error, with_trail, ("short",)]
    with pytest.raises(TypeError):
        append()  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        append.batch = 3  # type: ignore[misc]


def test_the_rows_message_reads_back_whichever_way_its_rows_were_queued() -> None:
    usual = ("r1", 1.5, *[None] * 24)
    fixed = ("r2", 2.5, *[None] * 19, [("step", 503)], *[None] * 4)
    wide = Row("r3", 2**40, (1, 2))  # an int over 32 bits: marshal's, and a NamedTuple
    queued: list[Any] = [usual, fixed, wide]
    if native is not None:
        queued.insert(0, native.encode(usual))  # as Appender queues it
    kind, rows = marshal.loads(rowcodec.rows_message(queued))
    assert kind == "rows"
    assert rows == [tuple(r) if not isinstance(r, bytes) else usual for r in queued]


def test_without_the_c_module_the_python_functions_are_used() -> None:
    code = (
        "from hydrallm.observe import rowcodec, usage\n"
        "print(rowcodec.NATIVE, rowcodec.usage_slice is usage.usage_slice, rowcodec.Appender)"
    )
    env = dict(os.environ, HYDRALLM_NO_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "True", "None"], out.stderr


async def _serve_and_ask(tmp_path: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """The journal rows of the same requests through a real `hydrallm serve`: a whole
    answer, a stream, one with a session header, one retried, one that fails."""
    tmp_path.mkdir()
    db = tmp_path / "j.db"
    port = free_port()
    async with FakeUpstream() as up:
        path = tmp_path / "config.toml"
        text = (
            config(db, up.url, attempts=2) + f'[server]\nport = {port}\nshutdown_timeout = "2s"\n'
        )
        path.write_text(text)
        proc = ServeProcess(path, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            await proc.wait_ready(base)
            async with aiohttp.ClientSession() as s:

                async def ask(stream: bool = False, headers: dict[str, str] | None = None) -> int:
                    body: dict[str, Any] = {
                        "model": "asked-model",
                        "messages": [{"role": "user", "content": "hi"}],
                    }
                    if stream:
                        body |= {"stream": True, "stream_options": {"include_usage": True}}
                    async with s.post(
                        base + "/v1/chat/completions",
                        data=json.dumps(body),
                        headers={"Content-Type": "application/json", **(headers or {})},
                    ) as r:
                        await r.read()
                        return r.status

                assert await ask() == 200
                assert await ask(stream=True) == 200
                assert await ask(headers={"x-claude-code-session-id": "s-1"}) == 200
                up.script(faults.status(503))
                assert await ask() == 200
                up.script(faults.status(400))
                assert await ask() == 400
            assert await proc.stop() == 0
        finally:
            proc.kill()
    return rows(db)


_VARY = {"id", "time", "latency_ms", "ttft_ms"}


async def test_the_journal_rows_are_the_same_with_and_without_the_c_module(
    tmp_path: Path,
) -> None:
    with_c = await _serve_and_ask(tmp_path / "c", {})
    without = await _serve_and_ask(tmp_path / "py", {"HYDRALLM_NO_NATIVE": "1"})
    assert len(with_c) == len(without) == 5
    for a, b in zip(with_c, without, strict=True):
        assert {k: v for k, v in a.items() if k not in _VARY} == {
            k: v for k, v in b.items() if k not in _VARY
        }
    whole, stream, session, retried, failed = with_c
    assert whole["input_tokens"] and stream["input_tokens"]  # usage read from both
    assert session["session"] is not None and whole["session"] is None
    assert (retried["retries"], failed["status"]) == (1, 400)


def _types(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return (type(value), [_types(v) for v in value])
    return type(value)


def _has_big_int(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return any(_has_big_int(v) for v in value)
    return type(value) is int and not -(2**31) <= value < 2**31
