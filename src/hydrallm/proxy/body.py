"""Byte-exact handling of JSON request bodies.

The proxy must replace the top-level `model` of a JSON object body and leave every other
byte as the client sent it (key order, whitespace, number formatting, escapes).  We walk
only the *top level* of the object with the stdlib's C scanner: each value is scanned once
(which also validates the whole document), and we remember the character span of every
top-level `model` value.  A body that is not a valid JSON object is never touched.

Cost: one C-level scan of the body (about 0.9 ms for 1 MiB on this machine), no
re-serialisation; the rewrite itself is two slices and a join.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.decoder import JSONDecodeError
from typing import Any


def _reject_constant(name: str) -> Any:
    # NaN / Infinity are not JSON; a body using them is forwarded untouched.
    raise ValueError(f"non-standard JSON constant {name}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
# scan_once(s, idx) -> (value, end): the C scanner json.loads itself uses.
_SCAN: Any = _DECODER.scan_once  # type: ignore[attr-defined]
_SCANSTRING: Any = json.decoder.scanstring  # type: ignore[attr-defined]
_WS = " \t\n\r"
_WS_RE = re.compile(r"[ \t\n\r]*")
_COLON_RE = re.compile(r"[ \t\n\r]*:[ \t\n\r]*")
# After a member's value: either "," (more members) or "}" and then only whitespace to the
# end of the body.
_AFTER_VALUE_RE = re.compile(r"[ \t\n\r]*(,)[ \t\n\r]*|[ \t\n\r]*(})[ \t\n\r]*\Z")


# Not frozen: a frozen slots dataclass sets each field through object.__setattr__,
# about 0.15 µs a field on every request.  Treated as immutable all the same.
@dataclass(slots=True)
class JsonBody:
    """A request body that is a JSON object, with what the proxy needs to know about it."""

    text: str  # the body decoded as UTF-8 (the bytes, losslessly)
    model_spans: tuple[tuple[int, int], ...]  # character spans of top-level `model` values
    close_at: int  # index of the object's closing brace
    empty: bool  # the object has no members
    requested_model: str | None  # the client's `model` when it is a string
    stream: bool  # top-level "stream": true
    raw: bytes

    def with_model(self, model: str) -> bytes:
        """The body with every top-level `model` set to `model` (added last when absent).

        Splices bytes, not text: for a 1 MiB body this saves ~1.2 ms over rebuilding the
        string and encoding it again.
        """
        encoded = json.dumps(model).encode()
        raw = self.raw
        if not self.model_spans:
            at = self._byte_offset(self.close_at)
            sep = b"" if self.empty else b","
            return b"".join((raw[:at], sep, b'"model":', encoded, raw[at:]))
        parts: list[bytes] = []
        pos = 0
        for start, end in self.model_spans:
            b_start, b_end = self._byte_offset(start), self._byte_offset(end)
            parts.append(raw[pos:b_start])
            parts.append(encoded)
            pos = b_end
        parts.append(raw[pos:])
        return b"".join(parts)

    def _byte_offset(self, index: int) -> int:
        # Character and byte offsets agree for ASCII bodies (the common case); otherwise
        # encode only the prefix, which is short when `model` comes early.
        if len(self.text) == len(self.raw):
            return index
        return len(self.text[:index].encode("utf-8"))


def _skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _WS:
        i += 1
    return i


def parse_body(raw: bytes) -> JsonBody | None:
    """Return a `JsonBody` when `raw` is exactly one JSON object, else None."""
    # Cheap rejections first: most non-JSON bodies do not start with "{".
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "{":
        return None
    try:
        return _walk_object(text, i + 1, raw)
    except (JSONDecodeError, StopIteration, IndexError, ValueError, RecursionError):
        return None


def _walk_object(s: str, i: int, raw: bytes) -> JsonBody | None:
    # Separators are matched by compiled regexes (one C call each); values are scanned by
    # the C scanner.  A typical SDK body takes ~3.5 µs, most of it building `messages`.
    spans: list[tuple[int, int]] = []
    requested: str | None = None
    stream = False
    i = _WS_RE.match(s, i).end()  # type: ignore[union-attr]
    empty = False
    if s[i] == "}":
        empty = True
        close_at = i
    else:
        colon = _COLON_RE.match
        after = _AFTER_VALUE_RE.match
        while True:
            if s[i] != '"':
                return None
            key, i = _SCANSTRING(s, i + 1, True)
            m = colon(s, i)
            if m is None:
                return None
            i = m.end()
            value, end = _SCAN(s, i)
            if key == "model":
                spans.append((i, end))
                requested = value if isinstance(value, str) else None
            elif key == "stream":
                stream = value is True
            m = after(s, end)
            if m is None:
                return None
            if m.group(1) == ",":
                i = m.end()
                continue
            close_at = m.start(2)  # the "}" alternative; \Z made sure nothing follows
            break
    if empty and _WS_RE.match(s, close_at + 1).end() != len(s):  # type: ignore[union-attr]
        return None
    return JsonBody(
        text=s,
        model_spans=tuple(spans),
        close_at=close_at,
        empty=empty,
        requested_model=requested,
        stream=stream,
        raw=raw,
    )
