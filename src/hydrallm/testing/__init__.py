"""Fake, fault-injecting LLM upstreams, for tests and for `hydrallm demo`.

    from hydrallm.testing import FakeUpstream, faults

    async with FakeUpstream() as fake:
        fake.script(faults.overloaded(), faults.reset_mid_stream(after_chunks=2))
        client = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="x")

`FakeUpstream` speaks the OpenAI Chat Completions, OpenAI Responses and Anthropic
Messages wire formats (streaming and not); `RawFaultServer` produces the
socket-level faults an HTTP framework cannot (garbage status line, short body...).
"""

from hydrallm.testing import answers, faults
from hydrallm.testing.answers import CANONICAL_TEXT, Api, ToolCall, split_text
from hydrallm.testing.faults import (
    MIX_KINDS,
    FailureMix,
    Fault,
    Reset,
    error_event_after,
    error_event_first,
    gzip,
    hang,
    no_done,
    ok,
    overloaded,
    rate_limited,
    reset_after_headers,
    reset_before_headers,
    reset_mid_stream,
    slow_chunks,
    slow_first_token,
    stall,
    status,
    tool_call,
)
from hydrallm.testing.rawserver import RawFaultServer, RawMode
from hydrallm.testing.upstream import FakeUpstream, RecordedRequest

__all__ = [
    "CANONICAL_TEXT",
    "MIX_KINDS",
    "Api",
    "FailureMix",
    "FakeUpstream",
    "Fault",
    "RawFaultServer",
    "RawMode",
    "RecordedRequest",
    "Reset",
    "ToolCall",
    "answers",
    "error_event_after",
    "error_event_first",
    "faults",
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
    "split_text",
    "stall",
    "status",
    "tool_call",
]
