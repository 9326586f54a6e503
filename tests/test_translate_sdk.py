"""The official SDKs read translated answers: every client API x every upstream API.

A small translating relay (this package's translator between an aiohttp server and
an aiohttp client) stands where the engine will: the SDK talks to it, it talks to a
fake upstream of another family.  What the SDKs parse is what a user would see.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web

from hydrallm.formats.translate import Untranslatable, client_api_for_path, translator_for
from hydrallm.testing import CANONICAL_TEXT, FakeUpstream, faults
from hydrallm.testing import gemini as g
from hydrallm.testing.gemini import FakeGemini
from hydrallm.testing.service import WebFake

KEY = "gemini-secret-key"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()
TOOL_ARGS = {"city": "Paris"}


class Relay(WebFake):
    """Client API in, `upstream` API out, translated both ways."""

    def __init__(self, upstream: str, url: str) -> None:
        self.upstream = upstream
        self.upstream_url = url
        self.skipped: list[str] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await super().start()
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await super().close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        client = client_api_for_path(request.path)
        assert client is not None and self._session is not None
        t = translator_for(client, self.upstream)  # type: ignore[arg-type]
        try:
            call = t.request(await request.json(), "up-model")
        except Untranslatable as exc:
            self.skipped.append(str(exc))
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        headers = {"x-goog-api-key": KEY, "x-api-key": "k", "Authorization": "Bearer k"}
        url = self.upstream_url + call.path + (f"?{call.query}" if call.query else "")
        async with self._session.post(url, json=call.body, headers=headers) as up:
            if up.status != 200:
                err = t.error(up.status, await up.read())
                return web.Response(
                    status=err.status,
                    body=err.body,
                    headers=dict(err.headers),
                    content_type=err.content_type,
                )
            if not call.stream:
                return web.Response(
                    body=t.response(await up.read()), content_type="application/json"
                )
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
            stream = t.stream()
            try:
                async for piece in up.content.iter_any():
                    await out.write(stream.feed(piece))
            except aiohttp.ClientPayloadError:
                pass  # a cut upstream: the client gets no terminal event
            await out.write(stream.close())
            await out.write_eof()
            return out


@pytest.fixture(params=["gemini", "chat", "anthropic"])
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Any]]:
    if request.param == "gemini":
        async with FakeGemini(key=KEY, require_signatures=True) as fake:
            yield "gemini", fake
            assert fake.problems == []  # every translated body was one Gemini takes
    else:
        async with FakeUpstream() as fake:
            yield request.param, fake


def answer_with_tool(kind: str, fake: Any) -> None:
    if kind == "gemini":
        fake.script(g.answer(text="Let me look.", calls=(("get_weather", TOOL_ARGS),)))
    else:
        fake.script(faults.tool_call("get_weather", TOOL_ARGS))


TOOLS_ANTHROPIC: Any = [
    {
        "name": "get_weather",
        "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
ANTHROPIC_MESSAGES: Any = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Weather where this was taken?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        ],
    },
]


async def test_anthropic_sdk(upstream: tuple[str, Any]) -> None:
    kind, fake = upstream
    if kind == "anthropic":
        pytest.skip("same family: passed through, not translated")
    async with (
        Relay(kind, fake.url) as relay,
        anthropic.AsyncAnthropic(base_url=relay.url, api_key="client-key", max_retries=0) as client,
    ):
        plain = await client.messages.create(
            model="claude", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert plain.content[0].type == "text" and plain.content[0].text
        assert plain.stop_reason == "end_turn"
        assert plain.usage.output_tokens > 0

        answer_with_tool(kind, fake)
        async with client.messages.stream(
            model="claude", max_tokens=100, messages=ANTHROPIC_MESSAGES, tools=TOOLS_ANTHROPIC
        ) as stream:
            final = await stream.get_final_message()
        uses = [b for b in final.content if b.type == "tool_use"]
        assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].input == TOOL_ARGS
        assert final.stop_reason == "tool_use"
        # The tool result goes back with the id the client was given.
        history: Any = [
            *ANTHROPIC_MESSAGES,
            {"role": "assistant", "content": [b.model_dump() for b in final.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "18C"}],
            },
        ]
        again = await client.messages.create(
            model="claude", max_tokens=100, messages=history, tools=TOOLS_ANTHROPIC
        )
        assert again.content[0].type == "text"
    sent = fake.requests[-1].body if kind == "gemini" else fake.requests[-1].json()
    text = json.dumps(sent)
    assert uses[0].id in text or kind == "gemini"
    assert "18C" in text


TOOLS_OPENAI: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CHAT_MESSAGES: Any = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Weather?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ],
    },
]


async def test_openai_chat_sdk(upstream: tuple[str, Any]) -> None:
    kind, fake = upstream
    if kind == "chat":
        pytest.skip("same family: passed through, not translated")
    async with (
        Relay(kind, fake.url) as relay,
        openai.AsyncOpenAI(
            base_url=relay.url + "/v1", api_key="client-key", max_retries=0
        ) as client,
    ):
        plain = await client.chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": "hi"}]
        )
        assert plain.choices[0].message.content
        assert plain.choices[0].finish_reason == "stop"

        text = ""
        stream = await client.chat.completions.create(
            model="gpt", messages=CHAT_MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        usage = None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        expected = "Hello from the fake Gemini." if kind == "gemini" else CANONICAL_TEXT
        assert text == expected
        assert usage is not None and usage.completion_tokens > 0

        answer_with_tool(kind, fake)
        async with client.chat.completions.stream(
            model="gpt", messages=CHAT_MESSAGES, tools=TOOLS_OPENAI
        ) as s:
            done = await s.get_final_completion()
        calls = done.choices[0].message.tool_calls or []
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
            ("get_weather", TOOL_ARGS)
        ]
        assert done.choices[0].finish_reason == "tool_calls"


async def test_openai_responses_sdk(upstream: tuple[str, Any]) -> None:
    kind, fake = upstream
    async with (
        Relay(kind, fake.url) as relay,
        openai.AsyncOpenAI(
            base_url=relay.url + "/v1", api_key="client-key", max_retries=0
        ) as client,
    ):
        plain = await client.responses.create(model="gpt", input="hi", instructions="Be brief.")
        assert plain.output_text
        assert plain.status == "completed"

        answer_with_tool(kind, fake)
        tools: Any = [
            {
                "type": "function",
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {}},
            }
        ]
        async with client.responses.stream(
            model="gpt",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Weather?"},
                        {
                            "type": "input_image",
                            "image_url": f"data:image/png;base64,{PNG}",
                            "detail": "auto",
                        },
                    ],
                }
            ],
            tools=tools,
            store=False,
        ) as stream:
            final = await stream.get_final_response()
        calls = [item for item in final.output if item.type == "function_call"]
        assert len(calls) == 1 and json.loads(calls[0].arguments) == TOOL_ARGS
        assert final.usage is not None and final.usage.output_tokens > 0

        follow: Any = [
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "get_weather",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18C"},
        ]
        again = await client.responses.create(model="gpt", input=follow, tools=tools)
        assert again.output_text


async def test_gemini_errors_reach_each_sdk_as_its_own_errors() -> None:
    async with FakeGemini(key=KEY) as fake, Relay("gemini", fake.url) as relay:
        async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="c", max_retries=0) as ac:
            fake.script(g.rate_limited("7.5s"))
            with pytest.raises(anthropic.RateLimitError) as info:
                await ac.messages.create(
                    model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
                )
            assert info.value.response.headers["retry-after"] == "8"
            assert "exceeded your current quota" in info.value.message

            fake.script(g.error_in_stream(after_chunks=1))
            with pytest.raises(anthropic.APIStatusError, match="overloaded"):
                async with ac.messages.stream(
                    model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
                ) as s:
                    await s.get_final_message()
        async with openai.AsyncOpenAI(base_url=relay.url + "/v1", api_key="c", max_retries=0) as oc:
            fake.script(g.unavailable())
            with pytest.raises(openai.InternalServerError) as err:
                await oc.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
            assert err.value.status_code == 503
            fake.script(g.error_in_stream(after_chunks=2))
            with pytest.raises(openai.APIError, match="overloaded"):
                stream = await oc.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                async for _ in stream:
                    pass


async def test_a_cut_gemini_stream_gives_no_terminal_event() -> None:
    async with FakeGemini(key=KEY) as fake, Relay("gemini", fake.url) as relay:
        fake.script(g.cut_stream(after_chunks=2))
        async with aiohttp.ClientSession() as session:
            body = {
                "model": "c",
                "max_tokens": 5,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
            async with session.post(relay.url + "/v1/messages", json=body) as r:
                data = await r.read()
        assert b"content_block_delta" in data
        assert b"message_stop" not in data  # the engine sees a cut stream, as it is


PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch\n"
APPLY_PATCH: Any = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files.",
    "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch"'},
}


@pytest.mark.parametrize("streaming", [True, False])
async def test_codex_freeform_tool_calls_come_back_as_custom_tool_calls(
    upstream: tuple[str, Any], streaming: bool
) -> None:
    kind, fake = upstream
    if kind == "gemini":
        fake.script(g.answer(text="", calls=(("apply_patch", {"input": PATCH}),)))
    else:
        fake.script(faults.tool_call("apply_patch", {"input": PATCH}))
    history: Any = [
        {"role": "user", "content": [{"type": "input_text", "text": "Add a.txt"}]},
        {"type": "custom_tool_call", "call_id": "call_p0", "name": "apply_patch", "input": "x"},
        {"type": "custom_tool_call_output", "call_id": "call_p0", "output": "error: bad patch"},
    ]
    async with (
        Relay(kind, fake.url) as relay,
        openai.AsyncOpenAI(
            base_url=relay.url + "/v1", api_key="client-key", max_retries=0
        ) as client,
    ):
        if streaming:
            async with client.responses.stream(
                model="gpt", input=history, tools=[APPLY_PATCH]
            ) as s:
                final = await s.get_final_response()
        else:
            final = await client.responses.create(model="gpt", input=history, tools=[APPLY_PATCH])
    calls = [item for item in final.output if item.type == "custom_tool_call"]
    assert len(calls) == 1
    assert (calls[0].name, calls[0].input) == ("apply_patch", PATCH)
    sent = json.dumps(fake.requests[-1].body if kind == "gemini" else fake.requests[-1].json())
    assert "error: bad patch" in sent and "Begin Patch" in sent  # history and grammar went along
