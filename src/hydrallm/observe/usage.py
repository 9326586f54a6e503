"""Token usage, read from what the upstream says about itself; pure functions.

Every API reports usage in a JSON object under a `"usage"` key (Bedrock's invoke API also
in `"amazon-bedrock-invocationMetrics"`), in the body of a non-streaming answer and in
some events of a stream:

- OpenAI chat: `usage.prompt_tokens` (cached tokens included), `completion_tokens`,
  `prompt_tokens_details.cached_tokens`; in a stream only in the last chunk, and only
  with `stream_options.include_usage` (every earlier chunk then says `"usage":null`).
- OpenAI Responses: `response.usage.input_tokens` (cached included), `output_tokens`,
  `input_tokens_details.cached_tokens`; in a stream in `response.completed`.
- Anthropic Messages: `usage.input_tokens` (uncached), `output_tokens`,
  `cache_read_input_tokens`, `cache_creation_input_tokens`; in a stream in
  `message_start` and, cumulative, in `message_delta`.
- Bedrock Converse: `usage.inputTokens`, `outputTokens`, `cacheReadInputTokens`,
  `cacheWriteInputTokens`; in a stream in the `metadata` event.
- Bedrock invoke: `amazon-bedrock-invocationMetrics.inputTokenCount`, `outputTokenCount`,
  `cacheReadInputTokenCount`, `cacheWriteInputTokenCount`.

`Usage.input` is always the *uncached* input, so that input, cache reads and cache writes
add up to what was sent and each can be priced on its own.

`UsageMeter` is fed the body bytes as they are relayed.  Per chunk it does one substring
search for `"usage"` (a C-speed scan; Bedrock streams add one for their base64-wrapped
events); only a chunk that carries a usage object is decoded, and only that object.  Later figures replace earlier ones field by field, which is right for every
API above (Anthropic's `message_delta` counts are cumulative).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# base64 of `{"type":"messag`: a Bedrock invoke stream chunk carrying one of Anthropic's
# message_start / message_delta / message_stop events (compact JSON, as Bedrock sends).
_B64_MESSAGE = b"eyJ0eXBlIjoibWVzc2Fn"
_KEYS = (b'"usage"', b'"amazon-bedrock-invocationMetrics"')
# A usage object is small; one split across chunks is held up to this size, never more.
_CARRY_LIMIT = 16 * 1024
_DECODER = json.JSONDecoder()


@dataclass(slots=True)
class Usage:
    input: int | None = None  # uncached input tokens
    output: int | None = None
    cache_read: int | None = None
    cache_write: int | None = None

    def merge(self, other: Usage) -> None:
        """Take every figure `other` states (a later event's count wins)."""
        if other.input is not None:
            self.input = other.input
        if other.output is not None:
            self.output = other.output
        if other.cache_read is not None:
            self.cache_read = other.cache_read
        if other.cache_write is not None:
            self.cache_write = other.cache_write

    @property
    def known(self) -> bool:
        return self.input is not None or self.output is not None


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0, int(value))


def from_usage_object(obj: object) -> Usage | None:
    """Normalise one usage object of any API above (None when it is not one)."""
    if not isinstance(obj, dict):
        return None
    u: dict[str, Any] = obj
    if "prompt_tokens" in u or "completion_tokens" in u:  # OpenAI chat
        details = u.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
        prompt = _int(u.get("prompt_tokens"))
        return Usage(
            input=None if prompt is None else max(0, prompt - (cached or 0)),
            output=_int(u.get("completion_tokens")),
            cache_read=cached,
        )
    if "inputTokens" in u or "outputTokens" in u:  # Bedrock Converse
        return Usage(
            _int(u.get("inputTokens")),
            _int(u.get("outputTokens")),
            _int(u.get("cacheReadInputTokens")),
            _int(u.get("cacheWriteInputTokens")),
        )
    if "inputTokenCount" in u or "outputTokenCount" in u:  # Bedrock invocation metrics
        return Usage(
            _int(u.get("inputTokenCount")),
            _int(u.get("outputTokenCount")),
            _int(u.get("cacheReadInputTokenCount")),
            _int(u.get("cacheWriteInputTokenCount")),
        )
    if "input_tokens" in u or "output_tokens" in u:
        details = u.get("input_tokens_details")
        raw_input = _int(u.get("input_tokens"))
        if isinstance(details, dict):  # OpenAI Responses: input counts the cached part
            cached = _int(details.get("cached_tokens"))
            return Usage(
                input=None if raw_input is None else max(0, raw_input - (cached or 0)),
                output=_int(u.get("output_tokens")),
                cache_read=cached,
            )
        return Usage(  # Anthropic Messages: input is already the uncached part
            raw_input,
            _int(u.get("output_tokens")),
            _int(u.get("cache_read_input_tokens")),
            _int(u.get("cache_creation_input_tokens")),
        )
    return None


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
                try:
                    obj, _ = _DECODER.raw_decode(data[brace:].decode("utf-8", "replace"))
                except ValueError:
                    rest = data[brace:]
                    if rest.count(b"{") > rest.count(b"}") and len(rest) < _CARRY_LIMIT:
                        return found, start  # cut by the end of the chunk: wait for more
                    obj = None  # not JSON we understand
                usage = from_usage_object(obj)
                if usage is not None:
                    if found is None:
                        found = Usage()
                    found.merge(usage)
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
            if self.usage is None:
                self.usage = Usage()
            self.usage.merge(found)
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
                if self.usage is None:
                    self.usage = Usage()
                self.usage.merge(found)
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
    return body[at : at + _CARRY_LIMIT]


def from_body(body: bytes) -> Usage | None:
    """The usage of a whole (non-streaming) body."""
    found, _ = scan(body)
    return found


# The agents' own session headers (Claude Code, Codex, opencode), most specific first.
SESSION_HEADERS = ("x-claude-code-session-id", "session-id", "x-session-affinity")


def session_hash(headers: Mapping[str, str]) -> str | None:
    """A short hash of the client's session id (the id itself is never stored)."""
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value:
            return hashlib.sha256(value.encode()).hexdigest()[:16]
    return None
