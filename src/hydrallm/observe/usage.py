"""Token usage in the bytes hydrallm relays: where the upstream's usage object is, so that
it is decoded alone, by the one usage reader (`formats.base.usage_of`, which knows every
API's names and what `Usage` means).

Every API reports usage in a JSON object under a `"usage"` key (Bedrock's invoke API also
in `"amazon-bedrock-invocationMetrics"`), in the body of a non-streaming answer and in
some events of a stream (OpenAI chat: the last chunk, with `include_usage`; Responses:
`response.completed`; Anthropic: `message_start` and, cumulative, `message_delta`;
Bedrock: the `metadata` event or the base64-wrapped Anthropic events).

A whole body: `usage_slice` (on the event loop: one `rfind`, a bounded copy) and
`from_body` (in the journal's writer: only that slice is decoded).  A stream:
`UsageMeter` is fed the body bytes as they are relayed; per chunk it does one substring
search for `"usage"` (a C-speed scan; Bedrock streams add one for their base64-wrapped
events); only a chunk that carries a usage object is decoded, and only that object.
Later figures replace earlier ones field by field, which is right for every API above
(Anthropic's `message_delta` counts are cumulative).
"""

from __future__ import annotations

import base64
import hashlib
import json
import json.scanner
from collections.abc import Callable, Mapping

from hydrallm.formats.base import Usage, usage_of

__all__ = [
    "SESSION_HEADERS",
    "SESSION_NAMES",
    "USAGE_CARRY",
    "Usage",
    "UsageMeter",
    "from_body",
    "scan",
    "session_hash",
]

# base64 of `{"type":"messag`: a Bedrock invoke stream chunk carrying one of Anthropic's
# message_start / message_delta / message_stop events (compact JSON, as Bedrock sends).
_B64_MESSAGE = b"eyJ0eXBlIjoibWVzc2Fn"
_KEYS = (b'"usage"', b'"amazon-bedrock-invocationMetrics"')
# A usage object is small; one split across chunks is held up to this size, never more.
USAGE_CARRY = 16 * 1024
_DECODER = json.JSONDecoder()
# The C scanner `raw_decode` wraps (typeshed types its argument as the class itself).
_SCAN = json.scanner.make_scanner(_DECODER)  # type: ignore[arg-type]


def scan(data: bytes) -> tuple[Usage | None, int]:
    """Every usage object in `data`, merged in order; and where an object cut short by
    the end of `data` starts (len(data) when none was)."""
    found: Usage | None = None
    for key in _KEYS:
        start = data.find(key)
        while start >= 0:
            brace = start + len(key)
            # Skip `: ` (a space is allowed by JSON) to the value.
            while brace < len(data) and data[brace] in b" :\t":
                brace += 1
            if brace >= len(data):
                return found, start
            if data[brace] == 0x7B:  # "{"; `null` and anything else carry nothing
                obj = _read_object(data, brace)
                if obj is None:
                    rest = data[brace:]
                    if rest.count(b"{") > rest.count(b"}") and len(rest) < USAGE_CARRY:
                        return found, start  # cut by the end of the chunk: wait for more
                usage = usage_of(obj)
                if usage is not None:
                    found = usage if found is None else found.merged(usage)
            start = data.find(key, brace)
    return found, len(data)


class UsageMeter:
    """Fed the relayed bytes of one response; `usage` holds what the upstream reported."""

    __slots__ = ("_carry", "_tail", "bedrock", "size", "usage")

    def __init__(self, *, bedrock: bool = False) -> None:
        self.usage: Usage | None = None
        # A Bedrock stream: also look for base64-wrapped events (a second scan per chunk).
        self.bedrock = bedrock
        self.size = 0  # bytes seen
        self._carry = b""  # a usage object cut by a chunk boundary
        self._tail = b""  # the last bytes of the previous chunk: a key cut in two

    def chain(self, other: Callable[[bytes], None]) -> Callable[[bytes], None]:
        """A feed that calls `other` first, then this meter."""

        def both(chunk: bytes) -> None:
            other(chunk)
            self.feed(chunk)

        return both

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._carry:
            data = self._carry + chunk
        elif b'"usage"' in chunk:
            data = self._tail + chunk
        elif self.bedrock and _B64_MESSAGE in chunk:
            self._bedrock(chunk)
            return
        elif self._tail and b'"usage"' in self._tail + chunk[:8]:
            data = self._tail + chunk  # the key was cut in two by the chunk boundary
        else:
            # Kept only when the chunk ends mid-event: an SSE event's end cuts no key.
            if chunk.endswith(b"\n"):
                self._tail = b""
            else:
                self._tail = chunk[-8:] if len(chunk) >= 8 else (self._tail + chunk)[-8:]
            return
        found, cut = scan(data)
        if found is not None:
            self.usage = found if self.usage is None else self.usage.merged(found)
        self._carry = data[cut:] if cut < len(data) else b""
        self._tail = b"" if self._carry else data[-8:]

    def _bedrock(self, chunk: bytes) -> None:
        """Bedrock invoke streams wrap each Anthropic event in base64: decode only the
        message_* events (start, delta, stop: the ones with usage and metrics)."""
        at = chunk.find(_B64_MESSAGE)
        while at >= 0:
            start = at
            end = chunk.find(b'"', start)
            if end < 0:
                return  # cut by the chunk boundary: rare, and the stop event repeats it
            try:
                found, _ = scan(base64.b64decode(chunk[start:end]))
            except ValueError:
                found = None
            if found is not None:
                self.usage = found if self.usage is None else self.usage.merged(found)
            at = chunk.find(_B64_MESSAGE, end)


def usage_slice(body: bytes) -> bytes | None:
    """The part of a whole body where its usage is (a bounded copy), for `from_body` to
    decode later, off the event loop; None when the body states no usage.  The last
    occurrence: every API puts usage after the answer, which may itself hold the word
    as a key (an Anthropic tool call's input)."""
    at = body.rfind(b'"usage"')
    if at < 0:
        at = body.rfind(b'"amazon-bedrock-invocationMetrics"')
        if at < 0:
            return None
    return body[at : at + USAGE_CARRY]


def from_body(body: bytes) -> Usage | None:
    """The usage of a whole (non-streaming) body, or of what `usage_slice` kept of one:
    the last usage object in it (every API puts usage after the answer, which may itself
    hold the word as a key), decoded alone."""
    at = body.rfind(b'"usage"')
    if at >= 0 and body[at + 7 : at + 9] == b":{":  # compact JSON, the usual case
        found = usage_of(_read_object(body, at + 8))
        if found is not None:
            return found
    for key in _KEYS:
        end = len(body)
        for _ in range(4):  # a later "usage" that is no usage object (a string, null)
            at = body.rfind(key, 0, end)
            if at < 0:
                break
            found = _object_at(body, at + len(key))
            if found is not None:
                return found
            end = at
    return None


def _object_at(data: bytes, after: int) -> Usage | None:
    """The usage object that is the value of the key ending at `after`."""
    brace = data.find(b"{", after, after + 16)
    if brace < 0 or data[after:brace].strip(b" \t\r\n:"):
        return None  # null, or not a value of that key
    return usage_of(_read_object(data, brace))


def _read_object(data: bytes, brace: int) -> object:
    """The JSON value that starts at `brace`, decoded alone (None: no whole one there)."""
    try:
        # The C scanner itself (what `raw_decode` wraps, less its Python frame).
        obj, _ = _SCAN(data[brace : brace + USAGE_CARRY].decode("utf-8", "replace"), 0)
    except (StopIteration, ValueError):
        return None
    return obj


# The agents' own session headers (Claude Code, Codex, opencode), most specific first.
SESSION_HEADERS = ("x-claude-code-session-id", "session-id", "x-session-affinity")
# For a request whose lower-case header names are known: one C call says it carries none
# of them (most requests), with no lookup in its headers.
SESSION_NAMES = frozenset(SESSION_HEADERS)


def session_hash(headers: Mapping[str, str]) -> str | None:
    """A short hash of the client's session id (the id itself is never stored)."""
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value:
            return hashlib.sha256(value.encode()).hexdigest()[:16]
    return None
