"""Tool-call arguments re-spelled: the continuing model's JSON, in the client's spelling.

Families spell the same arguments differently: Anthropic's `partial_json` is spaced like
`json.dumps`, OpenAI and Gemini send compact JSON, non-ASCII comes raw or as `\\uXXXX`.
When a restarted call departs from what the client already has only in spelling, the
client must get the continuing model's arguments written the way its part so far is.

What may change is spelling only: the whitespace between tokens and how a string's
characters are escaped.  Everything else is kept as the model wrote it: number tokens
verbatim (`1.0` is not `1`, `1e5` is not `100000.0`; `1e400` does not become
`Infinity`), key order, repeated keys.  So the value is parsed into a tree that keeps
those (not Python objects, where `1 == 1.0 == True` and a repeated key is lost), and
the same tree decides whether the client's complete text is the same call.  Whatever
is not strict JSON (NaN, raw control characters, trailing data, too deep) is not
re-spelled: the caller gives up honestly.
"""

from __future__ import annotations

import json
import re
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import NoReturn

from hydrallm.dataclass import dataclass

__all__ = ["respell"]


@dataclass(frozen=True, slots=True)
class _Number:
    text: str  # the token as the model wrote it


@dataclass(frozen=True, slots=True)
class _Object:
    pairs: tuple[tuple[str, object], ...]  # in the model's order, repeats kept


def _reject(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# Stateless once built (the scanner keeps nothing between calls).
_DECODER = json.JSONDecoder(
    object_pairs_hook=lambda pairs: _Object(tuple(pairs)),
    parse_int=_Number,
    parse_float=_Number,
    parse_constant=_reject,
)
_INVALID = object()
_SURROGATE = re.compile("[\ud800-\udfff]")

# The spellings the families use, in the order tried when the client's part fits
# several: `json.dumps`' default separators (Anthropic) or compact (OpenAI, Gemini),
# non-ASCII raw or escaped.
_SPELLINGS = (
    (", ", ": ", False),
    (",", ":", False),
    (", ", ": ", True),
    (",", ":", True),
)


def _parse(text: str) -> object:
    """The token tree of strict JSON `text`, or `_INVALID`."""
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError):
        return _INVALID


def _string(value: str, ascii_only: bool) -> str:
    if ascii_only:
        return encode_basestring_ascii(value)
    out = encode_basestring(value)
    # A lone surrogate (valid as a `\\uD800` escape) cannot be sent raw: no UTF-8 for it.
    if _SURROGATE.search(out):
        out = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)
    return out


def _render(node: object, items: str, colon: str, ascii_only: bool, out: list[str]) -> None:
    if isinstance(node, str):
        out.append(_string(node, ascii_only))
    elif isinstance(node, _Number):
        out.append(node.text)
    elif node is None or isinstance(node, bool):
        out.append("null" if node is None else "true" if node else "false")
    elif isinstance(node, list):
        out.append("[")
        for i, item in enumerate(node):
            if i:
                out.append(items)
            _render(item, items, colon, ascii_only, out)
        out.append("]")
    elif isinstance(node, _Object):
        out.append("{")
        for i, (key, item) in enumerate(node.pairs):
            if i:
                out.append(items)
            out.append(_string(key, ascii_only))
            out.append(colon)
            _render(item, items, colon, ascii_only, out)
        out.append("}")
    else:  # pragma: no cover - the decoder builds nothing else
        raise TypeError(f"not a JSON token tree: {type(node).__name__}")


def respell(text: str, have: str, *, whole: bool = False) -> str | None:
    """`text` (the continuing model's arguments) spelled so that it starts with `have`
    (the client's part), or equals it when `whole` (the client has all of its call).

    None when `text` is not strict JSON, when no spelling of it starts with `have`, or
    when the client's whole text is another value: the caller gives up.
    """
    try:
        tree = _parse(text)
        if tree is _INVALID:
            return None
        if whole:
            # The client has the call already: the same tokens however spelled (key
            # order, numbers, repeats alike) is no change, anything else is another call.
            return have if _parse(have) == tree else None
        for items, colon, ascii_only in _SPELLINGS:
            out: list[str] = []
            _render(tree, items, colon, ascii_only, out)
            spelled = "".join(out)
            # The check after the render is the promise itself: valid JSON, same tokens.
            if spelled.startswith(have) and _parse(spelled) == tree:
                return spelled
    except RecursionError:
        return None
    return None
