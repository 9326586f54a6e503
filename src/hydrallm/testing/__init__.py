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
from hydrallm.testing.faults import *  # noqa: F403  (its __all__ is the fault vocabulary)
from hydrallm.testing.rawserver import RawFaultServer, RawMode
from hydrallm.testing.upstream import FakeUpstream, RecordedRequest

__all__ = [
    "CANONICAL_TEXT",
    "Api",
    "FakeUpstream",
    "RawFaultServer",
    "RawMode",
    "RecordedRequest",
    "ToolCall",
    "answers",
    "faults",
    "split_text",
]
__all__ += faults.__all__
