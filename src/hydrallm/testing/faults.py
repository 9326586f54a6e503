"""The fault vocabulary of the fake upstream.

A `Fault` says how the fake answers one request. Build them with the functions
below (`ok()`, `status(429, retry_after=1)`, `reset_mid_stream(after_chunks=3)`, ...)
and queue them with `FakeUpstream.script(...)`. A fault is plain data: combine two
with `dataclasses.replace`, e.g. `replace(stall(2, 0.2), gzip=True)`.

`FailureMix` picks a fault at random (from a seeded `random.Random`) for the
requests that no script covers; `hydrallm demo` uses it to play a flaky provider.
"""

from __future__ import annotations

import enum
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydrallm.testing.answers import ToolCall

__all__ = [
    "MIX_KINDS",
    "FailureMix",
    "Fault",
    "Reset",
    "error_event_after",
    "error_event_first",
    "gzip",
    "hang",
    "no_done",
    "ok",
    "overloaded",
    "rate_limited",
    "reset_after_headers",
    "reset_before_headers",
    "reset_mid_stream",
    "slow_chunks",
    "slow_first_token",
    "stall",
    "status",
    "thinking",
    "tool_call",
]


class Reset(enum.Enum):
    """Where the fake aborts the connection (TCP RST)."""

    BEFORE_HEADERS = "before_headers"
    AFTER_HEADERS = "after_headers"
    MID_STREAM = "mid_stream"


@dataclass(frozen=True, slots=True)
class Fault:
    """How to answer one request. The default value answers normally.

    "Chunks" are content events of a stream (one per text chunk or tool-argument
    fragment). A non-streaming answer counts as two chunks: the two halves of its
    body, so `after_chunks=1` cuts it in the middle.
    """

    kind: str = "ok"  # a short label, for logs and the demo
    delay: float = 0.0  # before anything is sent
    text: str | None = None  # answer text instead of the upstream's
    tool_call: ToolCall | None = None  # answer with a function call instead of text
    thinking: str | None = None  # reasoning the answer starts with
    status_code: int = 200
    anthropic_status: int | None = None  # status on Anthropic paths, if different
    body: bytes | None = None  # error body instead of the provider-shaped default
    headers: tuple[tuple[str, str], ...] = ()  # added to the response
    reset: Reset | None = None
    after_chunks: int = 0  # where MID_STREAM resets, stalls and later error events happen
    stall: float = 0.0  # silence after `after_chunks` chunks
    first_event_delay: float = 0.0  # silence between the headers and the first byte of body
    chunk_interval: float = 0.0  # silence between content chunks
    error_kind: str | None = None  # send an in-stream error event of this kind
    error_first: bool = False  # ... as the very first event (else after `after_chunks`)
    error_message: str = "Overloaded"
    hang: bool = False  # never answer; wait for the client to go away
    omit_done: bool = False  # end the stream cleanly but without its terminal event
    gzip: bool = False  # Content-Encoding: gzip


def _headers(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple((headers or {}).items())


def ok(
    *, delay: float = 0.0, text: str | None = None, headers: Mapping[str, str] | None = None
) -> Fault:
    """A normal answer, optionally after `delay` seconds or with another `text`."""
    return Fault(kind="ok", delay=delay, text=text, headers=_headers(headers))


def tool_call(name: str = "get_weather", arguments: Mapping[str, Any] | None = None) -> Fault:
    """A normal answer that is a function call (OpenAI tool_calls, Anthropic tool_use)."""
    args = json.dumps(dict(arguments if arguments is not None else {"city": "Paris"}))
    return Fault(kind="tool_call", tool_call=ToolCall(name=name, arguments=args))


def thinking(text: str = "Let me think about hydras and proxies step by step.") -> Fault:
    """A normal answer that starts with reasoning: a signed Anthropic `thinking` block,
    chat `reasoning_content`, a Responses `reasoning` item with a summary."""
    return Fault(kind="thinking", thinking=text)


def status(
    code: int,
    body: bytes | str | Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    retry_after: float | None = None,
) -> Fault:
    """An HTTP error answer. The body defaults to the provider's JSON error shape."""
    if isinstance(body, Mapping):
        raw: bytes | None = json.dumps(dict(body)).encode()
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = body
    extra = dict(headers or {})
    if retry_after is not None:
        extra["Retry-After"] = _seconds(retry_after)
    return Fault(kind=f"status_{code}", status_code=code, body=raw, headers=_headers(extra))


def rate_limited(retry_after: float | None = 1) -> Fault:
    """429 with `Retry-After`, in the provider's error format."""
    return status(429, retry_after=retry_after)


def overloaded() -> Fault:
    """The provider is overloaded: 529 on Anthropic paths, 503 elsewhere."""
    return Fault(kind="overloaded", status_code=503, anthropic_status=529)


def reset_before_headers() -> Fault:
    """Read the request, then reset the connection without answering."""
    return Fault(kind="reset_before_headers", reset=Reset.BEFORE_HEADERS)


def reset_after_headers() -> Fault:
    """Send 200 and the headers, then reset the connection."""
    return Fault(kind="reset_after_headers", reset=Reset.AFTER_HEADERS)


def reset_mid_stream(after_chunks: int = 2) -> Fault:
    """Send `after_chunks` content chunks, then reset the connection."""
    return Fault(kind="reset_mid_stream", reset=Reset.MID_STREAM, after_chunks=after_chunks)


def stall(after_chunks: int = 2, seconds: float = 1.0) -> Fault:
    """Send `after_chunks` content chunks, go silent for `seconds`, then finish."""
    return Fault(kind="stall", after_chunks=after_chunks, stall=seconds)


def slow_first_token(seconds: float) -> Fault:
    """Send the headers at once and the first byte of body after `seconds`."""
    return Fault(kind="slow_first_token", first_event_delay=seconds)


def slow_chunks(interval: float) -> Fault:
    """Wait `interval` seconds between content chunks."""
    return Fault(kind="slow_chunks", chunk_interval=interval)


def hang() -> Fault:
    """Accept the request and never answer, until the client goes away."""
    return Fault(kind="hang", hang=True)


def error_event_first(kind: str = "overloaded_error", message: str = "Overloaded") -> Fault:
    """A 200 stream whose first event is an error.

    Anthropic: `event: error`; OpenAI chat: `data: {"error": ...}`; Responses:
    `response.failed`. A non-streaming request gets the error object as a 200 body.
    """
    return Fault(kind="error_event_first", error_kind=kind, error_first=True, error_message=message)


def error_event_after(
    after_chunks: int = 2, kind: str = "overloaded_error", message: str = "Overloaded"
) -> Fault:
    """A 200 stream that sends `after_chunks` content chunks, then an error event."""
    return Fault(
        kind="error_event_after",
        error_kind=kind,
        after_chunks=after_chunks,
        error_message=message,
    )


def no_done() -> Fault:
    """A stream that closes cleanly without `[DONE]` / `message_stop` / `response.completed`."""
    return Fault(kind="no_done", omit_done=True)


def gzip() -> Fault:
    """The answer compressed with `Content-Encoding: gzip` (streams are flushed per event)."""
    return Fault(kind="gzip", gzip=True)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# The kinds `FailureMix` chooses from.
MIX_KINDS = ("rate_limit", "overloaded", "reset", "error_event", "slow_first_token")


@dataclass(frozen=True)
class FailureMix:
    """Random faults for requests no script covers.

    With probability `rate` a request fails; the kind of failure is drawn with
    `weights` (default: all of `MIX_KINDS` alike). The random source is passed in,
    so a seeded `random.Random` makes the sequence reproducible.
    """

    rate: float = 0.5
    weights: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(MIX_KINDS, 1.0))
    retry_after: float = 1.0
    slow_first_token: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, not {self.rate}")
        unknown = sorted(set(self.weights) - set(MIX_KINDS))
        if unknown:
            raise ValueError(f"unknown failure kinds {unknown}; known: {list(MIX_KINDS)}")
        if any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
            raise ValueError("weights must be non-negative and not all zero")

    def choose(self, rng: random.Random) -> Fault:
        """Draw the fault for one request."""
        # Always draw twice, so that the n-th request's choice does not depend on
        # whether earlier requests failed.
        roll = rng.random()
        kinds = list(self.weights)
        kind = rng.choices(kinds, weights=[self.weights[k] for k in kinds])[0]
        if roll >= self.rate:
            return ok()
        if kind == "rate_limit":
            return rate_limited(self.retry_after)
        if kind == "overloaded":
            return overloaded()
        if kind == "reset":
            return reset_before_headers()
        if kind == "error_event":
            return error_event_first()
        return slow_first_token(self.slow_first_token)
