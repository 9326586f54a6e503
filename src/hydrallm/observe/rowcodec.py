"""The journal's steps on every request, in C when the optional `_rowcodec` module
was built at install (`hatch_build.py`: when a C compiler is there), else in Python; the
results are the same either way (tests/test_rowcodec.py).

- `encode(message)`: the bytes of a spooled message, as `marshal.dumps` writes them and
  `marshal.loads` reads them (a NamedTuple in it written as the plain tuple it is).
- `usage_slice(body)`: the part of a whole response body that states its usage
  (`hydrallm.observe.usage.usage_slice`).
- `Appender`: `JournalSink.request` for the usual row, a callable object instead of a
  Python call, which also encodes the row at once and queues the bytes (None without the
  C module: the method is used, and the rows are encoded by the batch).
- `rows_message(rows)`: the spooled message of the queued rows, whichever they are.

Why C: these two were ~6.5k of the journal's ~10.5k instructions a request (callgrind;
bench/RESULTS.md, ninth session), each one call at CPython's floor: `marshal` looks every
value another reference holds up in a table (the status page holds the newest rows'
values), and `bytes.rfind` parses its arguments the old way before it searches.  In C:
~2k and ~0.5k; the Python call of `request` (~1k) is gone too.  `HYDRALLM_NO_NATIVE=1` in the environment uses the Python ones (to rule
the C module out when something looks wrong)."""

from __future__ import annotations

import marshal
import operator
import os
from collections.abc import Callable
from typing import Any

from hydrallm.observe.usage import usage_slice as _py_usage_slice

__all__ = ["NATIVE", "Appender", "encode", "rows_message", "usage_slice"]

_native_encode: Callable[[Any], bytes] | None = None
_native_rows: Callable[[list[Any]], bytes] | None = None
usage_slice: Callable[[bytes], bytes | None] = _py_usage_slice
# The journal's `request` for the usual row in C (`JournalSink.request` in Python).
Appender: type[_rowcodec.Appender] | None = None
if not os.environ.get("HYDRALLM_NO_NATIVE"):
    try:
        from hydrallm.observe import _rowcodec
    except ImportError:  # not built: no C compiler at install, or another platform
        pass
    else:
        _native_encode = _rowcodec.encode
        _native_rows = _rowcodec.rows_message
        usage_slice = _rowcodec.usage_slice
        Appender = _rowcodec.Appender

# The C module is in use: the journal may queue its rows as they are (NamedTuples too).
NATIVE = _native_encode is not None


def encode(message: Any) -> bytes:
    """`marshal.dumps(message)`, any tuple subclass in it written as a plain tuple.
    Raises ValueError for a value `marshal` cannot write either."""
    if _native_encode is not None:
        try:
            return _native_encode(message)
        except ValueError:
            pass  # a value the C encoder leaves to marshal (an int over 32 bits, say)
    try:
        return marshal.dumps(message)
    except ValueError:
        return marshal.dumps(_plain(message))  # a NamedTuple in it (marshal writes none)


def rows_message(rows: list[Any]) -> bytes:
    """The spooled message of the journal's queued rows, `("rows", [row, ...])` as
    `marshal.dumps` writes it: each row a tuple of its values (a NamedTuple too), or, with
    the C module, the bytes `Appender` encoded it to at its request."""
    if _native_rows is not None:
        try:
            return _native_rows(rows)
        except ValueError:  # a value the C encoder leaves to marshal
            decoded = [marshal.loads(r) if type(r) is bytes else _plain(r) for r in rows]
            return marshal.dumps(("rows", decoded))
    return marshal.dumps(("rows", list(map(_as_tuple, rows))))


# A row as a plain tuple (`marshal` writes no tuple subclass): a request's event (a
# NamedTuple) copied by one C call; a plain tuple is itself.
_as_tuple = operator.itemgetter(slice(None))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
