"""Issue 16 end to end: the real proxy, the official SDKs as clients, chains across families.

Every client API (Anthropic Messages, OpenAI chat, OpenAI Responses) against every upstream
type (anthropic, openai chat, openai Responses where that is native, gemini), streaming
and not, with a tool call: the SDK reads a correct answer and the fake received its own
API's request (the Gemini fake refuses any field it does not know).
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from hydrallm.app.lifecycle import start
from hydrallm.config.load import parse_config
from hydrallm.observe.events import Logger
from hydrallm.testing import FakeUpstream, faults
from hydrallm.testing import gemini as g
from hydrallm.testing.gemini import FakeGemini

GEMINI_KEY = "test-gemini-key"
CITY = {"city": "Paris"}


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    url: str
    type: str
    api: str | None = None
    key: str | None = None


@dataclass(slots=True)
class Running:
    url: str
    log: io.StringIO

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="sk-test", max_retries=0)

    def anthropic(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.url, api_key="sk-test", max_retries=0)


def config_text(entries: tuple[Entry, ...]) -> str:
    lines = [
        "[retry]",
        "max_cycles = 1",
        'default_interval = "10ms"',
        'first_token_timeout = "5s"',
        'stream_idle_timeout = "5s"',
        "[cooldown]",
        "enabled = false",
    ]
    for e in entries:
        lines += [f"[providers.{e.id}]", f"url = {json.dumps(e.url)}"]
        if e.key:
            lines.append(f"api_key = {json.dumps(e.key)}")
    for e in entries:
        lines += [
            f"[models.{e.id}]",
            f"provider = {json.dumps(e.id)}",
            f"type = {json.dumps(e.type)}",
            f'model = "{e.id}-model"',
            "attempts = 1",
        ]
        if e.api:
            lines.append(f"api = {json.dumps(e.api)}")
    ids = ", ".join(json.dumps(e.id) for e in entries)
    lines += ["[[listeners]]", 'name = "main"', "port = 8080", f"models = [{ids}]"]
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def running(*entries: Entry) -> AsyncIterator[Running]:
    config = parse_config(config_text(entries), env={})
    config = replace(config, listeners=tuple(replace(lc, port=0) for lc in config.listeners))
    log = io.StringIO()
    proxy = await start(config, logger=Logger("info", stream=log))
    host, port = proxy.addresses()["main"]
    try:
        yield Running(f"http://{host}:{port}", log)
    finally:
        await proxy.close()


# --- the three client APIs, through their official SDKs ------------------------------------

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


async def final(api: Any, stream: bool, kwargs: dict[str, Any], accumulated: str) -> Any:
    """The SDK's whole answer (`client.messages` or `client.responses`): the non-streaming
    one, or what the stream's `accumulated` method (`get_final_…`) made of its events."""
    if not stream:
        return await api.create(**kwargs)
    async with api.stream(**kwargs) as events:
        return await getattr(events, accumulated)()


async def ask_anthropic(run: Running, stream: bool, tools: bool) -> dict[str, Any]:
    """What the user's program reads: the text and the tool call, via the SDK."""
    kwargs: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 200,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    }
    if tools:
        kwargs["tools"] = [
            {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}
        ]
    async with run.anthropic() as client:
        message = await final(client.messages, stream, kwargs, "get_final_message")
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [(b.name, b.input) for b in message.content if b.type == "tool_use"]
    return {"text": text, "calls": calls, "stop": message.stop_reason}


async def ask_chat(run: Running, stream: bool, tools: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": "gpt-4.1",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris?"},
        ],
        "max_tokens": 200,
    }
    if tools:
        kwargs["tools"] = [
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA},
            }
        ]
    async with run.openai() as client:
        if not stream:
            done = await client.chat.completions.create(**kwargs)
            msg = done.choices[0].message
            calls = [
                (c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls or []
            ]
            return {
                "text": msg.content or "",
                "calls": calls,
                "stop": done.choices[0].finish_reason,
            }
        text, finish = "", None
        names: dict[int, str] = {}
        args: dict[int, str] = {}
        async for chunk in await client.chat.completions.create(stream=True, **kwargs):
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            text += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                if tc.function and tc.function.name:
                    names[tc.index] = tc.function.name
                if tc.function and tc.function.arguments:
                    args[tc.index] = args.get(tc.index, "") + tc.function.arguments
            finish = choice.finish_reason or finish
    calls = [(names[i], json.loads(args.get(i) or "{}")) for i in sorted(names)]
    return {"text": text, "calls": calls, "stop": finish}


async def ask_responses(run: Running, stream: bool, tools: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": "gpt-5",
        "instructions": "You are terse.",
        "input": "Weather in Paris?",
        "max_output_tokens": 200,
    }
    if tools:
        kwargs["tools"] = [
            {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}
        ]
    async with run.openai() as client:
        response = await final(client.responses, stream, kwargs, "get_final_response")
    calls = [
        (item.name, json.loads(item.arguments))
        for item in response.output
        if item.type == "function_call"
    ]
    return {"text": response.output_text, "calls": calls, "stop": response.status}


ASK = {"anthropic": ask_anthropic, "chat": ask_chat, "responses": ask_responses}
CLIENT_PATH = {
    "anthropic": "/v1/messages",
    "chat": "/v1/chat/completions",
    "responses": "/v1/responses",
}
# The upstream kinds: (model type, openai api, the path the fake must receive).
UPSTREAMS = {
    "anthropic": ("anthropic", None, "/v1/messages"),
    "chat": ("openai", "chat", "/v1/chat/completions"),
    "responses": ("openai", "responses", "/v1/responses"),
    "gemini": ("gemini", None, None),
}
PAIRS = [
    (client, upstream)
    for client in ASK
    for upstream in UPSTREAMS
    # A Responses upstream is only ever spoken to a Responses client (DECISIONS: Families).
    if upstream != "responses" or client == "responses"
]


@asynccontextmanager
async def upstream_of(kind: str) -> AsyncIterator[tuple[Entry, FakeUpstream | FakeGemini]]:
    model_type, api, _ = UPSTREAMS[kind]
    if model_type == "gemini":
        async with FakeGemini(key=GEMINI_KEY) as gem:
            yield Entry(kind, gem.url, "gemini", key=GEMINI_KEY), gem
    else:
        async with FakeUpstream(name=kind, text="Sunny in Paris today.") as fake:
            yield Entry(kind, fake.url, model_type, api=api), fake


def script_tool_call(fake: FakeUpstream | FakeGemini) -> None:
    if isinstance(fake, FakeGemini):
        fake.script(g.answer(text="", calls=(("get_weather", CITY),)))
    else:
        fake.script(faults.tool_call("get_weather", CITY))


def check_received(kind: str, fake: FakeUpstream | FakeGemini, stream: bool) -> None:
    """The fake got one request in its own API, naming its configured model."""
    if isinstance(fake, FakeGemini):
        assert fake.problems == [], fake.problems  # the strict schema found nothing foreign
        (req,) = fake.requests
        assert (req.model, req.stream) == ("gemini-model", stream)
        assert req.headers.get("x-goog-api-key") == GEMINI_KEY
        assert "authorization" not in {k.lower() for k in req.headers}
        assert req.body["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
        assert req.body["systemInstruction"]["parts"][0]["text"] == "You are terse."
        return
    (req,) = [r for r in fake.requests if r.method == "POST"]
    assert req.path == UPSTREAMS[kind][2]
    assert req.model == f"{kind}-model" and req.stream == stream
    body = req.json()
    if kind == "anthropic":
        assert body["tools"][0]["name"] == "get_weather" and body["system"]
        assert isinstance(body["max_tokens"], int)
    elif kind == "chat":
        assert body["tools"][0]["function"]["name"] == "get_weather"
        assert body["messages"][0]["role"] == "system"
    else:
        assert body["tools"][0]["name"] == "get_weather"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("client", "upstream"), PAIRS, ids=[f"{c}-to-{u}" for c, u in PAIRS])
async def test_every_client_api_on_every_upstream_type(
    client: str, upstream: str, stream: bool
) -> None:
    async with upstream_of(upstream) as (entry, fake), running(entry) as run:
        script_tool_call(fake)
        got = await ASK[client](run, stream, tools=True)
        check_received(upstream, fake, stream)
    assert got["calls"] == [("get_weather", CITY)], got
    expected_stop = {"anthropic": "tool_use", "chat": "tool_calls", "responses": "completed"}
    assert got["stop"] == expected_stop[client]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("client", list(ASK))
async def test_plain_text_answer_through_gemini(client: str, stream: bool) -> None:
    async with FakeGemini(key=GEMINI_KEY) as gem:
        gem.script(g.answer(text="Sunny and mild in Paris."))
        async with running(Entry("gem", gem.url, "gemini", key=GEMINI_KEY)) as run:
            got = await ASK[client](run, stream, tools=False)
    assert got["text"] == "Sunny and mild in Paris."
    assert got["calls"] == [] and gem.problems == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("client", list(ASK))
async def test_first_model_503_healthy_fallback_of_another_family(
    client: str, stream: bool
) -> None:
    """The client's own family is down; the fallback speaks another API and answers."""
    own = "anthropic" if client == "anthropic" else "openai"
    other = "openai" if client == "anthropic" else "anthropic"
    async with (
        FakeUpstream(name="down", default=faults.status(503)) as down,
        FakeUpstream(name="up", text="From the other family.") as up,
    ):
        api = "responses" if client == "responses" else None
        entries = (Entry("down", down.url, own, api=api), Entry("up", up.url, other))
        async with running(*entries) as run:
            got = await ASK[client](run, stream, tools=False)
    assert got["text"] == "From the other family."
    assert len(down.requests) == 1 and len(up.requests) == 1
    assert up.requests[0].path == ("/v1/chat/completions" if other == "openai" else "/v1/messages")


@pytest.mark.parametrize("client", list(ASK))
async def test_translated_in_stream_error_before_commit_falls_back(client: str) -> None:
    """Gemini reports an overload as the stream's first event: the peek sees it (in the
    client's own format) before commit, and the client gets the fallback's answer only."""
    async with (
        FakeGemini(key=GEMINI_KEY) as gem,
        FakeUpstream(name="up", text="Clean answer from the fallback.") as up,
    ):
        gem.script(g.error_in_stream(after_chunks=0))
        model_type = "anthropic" if client == "anthropic" else "openai"
        api = "responses" if client == "responses" else None
        entries = (
            Entry("gem", gem.url, "gemini", key=GEMINI_KEY),
            Entry("up", up.url, model_type, api=api),
        )
        async with running(*entries) as run:
            got = await ASK[client](run, True, tools=False)
    assert got["text"] == "Clean answer from the fallback."
    assert len(gem.requests) == 1 and len(up.requests) == 1


async def test_upstream_error_reaches_the_client_in_its_own_format() -> None:
    """A Gemini 400 is what the Anthropic SDK raises, as an Anthropic error."""
    async with FakeGemini(key="another-key") as gem:
        async with running(Entry("gem", gem.url, "gemini", key=GEMINI_KEY)) as run:
            with pytest.raises(anthropic.BadRequestError) as caught:
                await ask_anthropic(run, False, tools=False)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "API key not valid" in body["error"]["message"]


async def test_a_model_that_cannot_serve_the_api_is_skipped_with_a_log_line() -> None:
    """A Bedrock-runtime path on an OpenAI model: skipped, and the chain goes on."""
    async with FakeUpstream(name="oa") as fake, running(Entry("oa", fake.url, "openai")) as run:
        async with (
            aiohttp.ClientSession() as http,
            http.post(run.url + "/model/anthropic.claude/invoke", json={"messages": []}) as r,
        ):
            status = r.status
        log = run.log.getvalue()
    assert fake.requests == []
    assert status == 502
    assert "cannot serve" in log


def test_responses_namespace_tools_are_flattened_and_given_back() -> None:
    """Codex groups its MCP tools in `namespace` tools: another family gets them flat, and
    the call comes back under its namespace."""
    from hydrallm.formats.translate import translator_for

    t = translator_for("responses", "anthropic")
    tools = [{"type": "function", "name": "read", "parameters": WEATHER_SCHEMA}]
    body = {
        "model": "gpt-5",
        "input": [
            {"type": "message", "role": "user", "content": "hi"},
            {"type": "function_call", "call_id": "c1", "namespace": "fs", "name": "read",
             "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ],
        "tools": [{"type": "namespace", "name": "fs", "description": "files", "tools": tools}],
    }  # fmt: skip
    call = t.request(body, "claude-x")
    assert isinstance(call.body, dict)
    assert [tool["name"] for tool in call.body["tools"]] == ["fs__read"]
    assert call.body["messages"][1]["content"][0]["name"] == "fs__read"
    answer = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "fs__read", "input": {}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }  # fmt: skip
    (item,) = json.loads(t.response(answer))["output"]
    assert (item["type"], item["namespace"], item["name"]) == ("function_call", "fs", "read")


@pytest.mark.parametrize(
    ("script", "served"),
    [(g.error_in_stream(after_chunks=0), "fallback"), (g.answer(text="Native hi."), "gemini")],
    ids=["error-first", "healthy"],
)
async def test_native_gemini_stream_is_peeked_as_gemini(script: object, served: str) -> None:
    """A client calling Gemini natively: an error object as the first event is judged
    before commit (the next Gemini model answers), a healthy stream is relayed as is."""
    async with FakeGemini(key=GEMINI_KEY) as gem, FakeGemini(key=GEMINI_KEY) as backup:
        gem.script(script)  # type: ignore[arg-type]
        backup.script(g.answer(text="Fallback hi."))
        entries = (
            Entry("gem", gem.url, "gemini", key=GEMINI_KEY),
            Entry("backup", backup.url, "gemini", key=GEMINI_KEY),
        )
        body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        async with running(*entries) as run, aiohttp.ClientSession() as http:
            url = run.url + "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"
            async with http.post(url, json=body) as r:
                status, raw = r.status, await r.read()
    assert status == 200
    texts = [
        part["text"]
        for line in raw.decode().splitlines()
        if line.startswith("data: ")
        for part in json.loads(line[6:])["candidates"][0]["content"]["parts"]
    ]
    assert "".join(texts) == ("Fallback hi." if served == "fallback" else "Native hi.")
    assert len(backup.requests) == (1 if served == "fallback" else 0)


async def test_foreign_thinking_is_not_replayed_to_anthropic() -> None:
    """Gemini's reasoning reached Claude Code as an unsigned thinking block; sent back in
    the history to an Anthropic model of the same (mixed) chain, it is dropped, since
    Anthropic refuses a thinking block it did not sign.  Signed ones stay."""
    async with (
        FakeUpstream(name="claude", text="Next answer.") as claude,
        FakeGemini(key=GEMINI_KEY) as gem,
    ):
        entries = (
            Entry("claude", claude.url, "anthropic"),
            Entry("gem", gem.url, "gemini", key=GEMINI_KEY),
        )
        history = [
            {"role": "user", "content": "First?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Gemini thought.", "signature": ""},
                    {"type": "thinking", "thinking": "Claude thought.", "signature": "c2ln"},
                    {"type": "text", "text": "First answer."},
                ],
            },
            {"role": "user", "content": "Second?"},
        ]
        async with running(*entries) as run, run.anthropic() as client:
            message = await client.messages.create(
                model="claude-sonnet-4-5", max_tokens=100, messages=history
            )
        sent = claude.requests[0].json()["messages"][1]["content"]
    assert message.content[0].type == "text" and message.content[0].text == "Next answer."
    assert [b.get("thinking") for b in sent if b["type"] == "thinking"] == ["Claude thought."]
    assert sent[-1] == {"type": "text", "text": "First answer."}


def test_check_shows_which_client_apis_each_entry_serves() -> None:
    from hydrallm.cli.describe import describe_config

    text = config_text(
        (
            Entry("claude", "http://127.0.0.1:9", "anthropic"),
            Entry("codex", "http://127.0.0.1:9", "openai", api="responses"),
            Entry("gem", "http://127.0.0.1:9", "gemini", key="AIzaSyExampleKey1234"),
        )
    )
    shown = describe_config(parse_config(text, env={}))
    serves = [line.strip() for line in shown.splitlines() if "serves:" in line]
    assert serves == [
        "serves: Anthropic Messages native; OpenAI chat translated to anthropic;"
        " Responses translated to anthropic",
        "serves: Anthropic Messages translated to OpenAI chat; OpenAI chat native;"
        " Responses native",
        "serves: Anthropic Messages translated to gemini; OpenAI chat translated to gemini;"
        " Responses translated to gemini",
    ]
    assert "AIzaSyExampleKey1234" not in shown


@pytest.mark.parametrize("client", ["anthropic", "responses"])
async def test_translated_stream_broken_after_commit_is_recovered(client: str) -> None:
    """A translated stream (the client's API is not the model's) breaks after a few words:
    recovery restarts it on the next model of that family, translated too, and the client
    reads the whole answer once, relayed without the part it already had."""
    text = "One two three four five six seven eight nine ten."
    async with (
        FakeUpstream(name="first", text=text) as first,
        FakeUpstream(name="second", text=text) as second,
    ):
        first.script(faults.reset_mid_stream(after_chunks=4))
        entries = (Entry("first", first.url, "openai"), Entry("second", second.url, "openai"))
        async with running(*entries) as run:
            got = await ASK[client](run, True, tools=False)
            log = run.log.getvalue()
    assert got["text"] == text
    assert "served_by=second recovered=restart" in log
    assert all(r.path == "/v1/chat/completions" for r in second.requests)


async def test_an_image_reaches_gemini_as_inline_data() -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    async with FakeGemini(key=GEMINI_KEY) as gem:
        gem.script(g.answer(text="A single pixel."))
        async with running(Entry("gem", gem.url, "gemini", key=GEMINI_KEY)) as run:
            async with run.anthropic() as client:
                message = await client.messages.create(
                    model="claude-sonnet-4-5",
                    max_tokens=50,
                    messages=[
                        {"role": "user", "content": [image, {"type": "text", "text": "What?"}]}
                    ],
                )
    assert message.content[0].type == "text" and message.content[0].text == "A single pixel."
    parts = gem.requests[0].body["contents"][0]["parts"]
    assert parts[0] == {"inlineData": {"mimeType": "image/png", "data": png}}
    assert parts[1] == {"text": "What?"} and gem.problems == []


async def test_count_tokens_skips_a_model_of_another_family() -> None:
    """Anthropic's count_tokens: the Gemini model cannot answer it; the Anthropic one does."""
    async with (
        FakeGemini(key=GEMINI_KEY) as gem,
        FakeUpstream(name="claude") as claude,
    ):
        entries = (
            Entry("gem", gem.url, "gemini", key=GEMINI_KEY),
            Entry("claude", claude.url, "anthropic"),
        )
        async with running(*entries) as run, aiohttp.ClientSession() as http:
            body = {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(run.url + "/v1/messages/count_tokens", json=body) as r:
                status, answer = r.status, await r.json()
            log = run.log.getvalue()
    assert gem.requests == []
    assert [r.path for r in claude.requests] == ["/v1/messages/count_tokens"]
    assert "cannot count Anthropic tokens" in log
    assert status == 200 and isinstance(answer["input_tokens"], int)


# --- a chain that starts with another family than the client's ---------------------------


@pytest.mark.parametrize(
    ("path", "body", "shape"),
    [
        ("/v1/messages", b'{"model":"m","max_tokens":5,"messages":[]} trailing', "anthropic"),
        ("/v1/chat/completions", b'\xef\xbb\xbf{"model":"m","messages":[]}', "openai"),
        ("/v1/responses", b'{"model":"m","model":"n","input":"hi"}', "openai"),
    ],
    ids=["anthropic-trailing-data", "chat-bom", "responses-duplicate-model"],
)
async def test_on_a_gemini_first_chain_a_bad_body_is_refused_in_the_clients_format(
    path: str, body: bytes, shape: str
) -> None:
    # The listener's first model is Gemini; the client speaks its own API.  A body that is
    # not strict JSON must still be refused (it would dodge the model rewrite), and the
    # refusal must be in the client's error format, not Gemini's.
    async with (
        FakeGemini(key=GEMINI_KEY) as gem,
        running(Entry("gem", gem.url, "gemini", key=GEMINI_KEY)) as run,
    ):
        async with aiohttp.ClientSession() as session:
            headers = {"Content-Type": "application/json"}
            async with session.post(run.url + path, data=body, headers=headers) as resp:
                assert resp.status == 400
                doc = await resp.json()
        assert gem.requests == []  # nothing went upstream
    if shape == "anthropic":
        assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    else:
        assert "type" not in doc and doc["error"]["type"] == "invalid_request_error"
