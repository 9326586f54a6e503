"""Mid-stream recovery across API families (issue 16): a stream that breaks after commit is
finished by the next model of ANY family that serves the client's API.

The chain is [broken model of family A, healthy model of family B] for A/B among an
Anthropic model, an OpenAI chat model and a Gemini model; the client is the official
`anthropic` Messages stream, `openai` chat stream or `openai` Responses stream.  The fakes
behave as their providers do with a prefill (Claude 4.5 continues one unless thinking is
on, Claude 4.6 refuses it, OpenAI answers anew unless flagged; Gemini is never offered
one under `auto`).  The client gets one coherent answer with the ids it first saw, or the
honest give-up: never two answers glued together.  Tool arguments are a JSON value: spelled
alike or otherwise (spaces, `\\uXXXX`), the same value is finished; another value gives up.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hydrallm.testing import (
    CANONICAL_TEXT,
    FakeUpstream,
    Fault,
    Reset,
    ToolCall,
    faults,
    split_text,
)
from hydrallm.testing import gemini as g
from hydrallm.testing.bedrock import FakeBedrock
from hydrallm.testing.gemini import FakeGemini
from hydrallm.testing.harness import ProxyHarness
from hydrallm.testing.upstream import sample_text
from recoveryhelp import APIS, Seen, ask, assert_clean_error, warm_sdks

FAMILIES = ["anthropic", "chat", "gemini"]
PAIRS = [(a, b) for a in FAMILIES for b in FAMILIES if a != b]
CUT = 5  # content chunks the client has before the break
GEMINI_KEY = "test-gemini-key"
CALL = faults.tool_call()
ARGS = {"city": "Paris"}
# What the client's API calls a finished text answer and a finished tool call.
STOP = {"messages": "end_turn", "chat": "stop", "responses": "completed"}
TOOL_STOP = {"messages": "tool_use", "chat": "tool_calls", "responses": "completed"}
# Anthropic models by their prefill behaviour: 4.5 continues (thinking off), 4.6 refuses.
CONTINUES, REFUSES = "claude-sonnet-4-5", "claude-sonnet-4-6"


@dataclass
class Member:
    """One chain entry: its fake and the config that points at it."""

    family: str
    fake: FakeUpstream | FakeGemini
    model: str
    endpoint: str = ""  # extra endpoint lines (prefill, prefill_flag)

    def toml(self, n: int) -> str:
        kind = {"anthropic": "anthropic", "gemini": "gemini"}.get(self.family, "openai")
        url = self.fake.url + ("/v1" if kind == "openai" else "")
        key = GEMINI_KEY if self.family == "gemini" else f"k{n}"
        # "responses": an OpenAI model called with the Responses API (native for such clients).
        api = 'api = "responses"\n' if self.family == "responses" else ""
        return (
            f'[endpoints.e{n}]\nurl = "{url}"\napi_key = "{key}"\n{self.endpoint}\n'
            f'[[models]]\nendpoint = "e{n}"\ntype = "{kind}"\nmodel = "{self.model}"\n{api}'
        )


def config(*members: Member) -> str:
    head = (
        '[retry]\nmax_cycles = 1\ndefault_interval = "10ms"\nfirst_token_timeout = "5s"\n'
        'stream_idle_timeout = "400ms"\n[cooldown]\nenabled = false\n'
    )
    return head + "\n".join(m.toml(n) for n, m in enumerate(members))


def fake_for(family: str, name: str, content: str, **options: Any) -> FakeUpstream | FakeGemini:
    """A healthy fake of `family` that answers `content` as the others do."""
    if family == "gemini":
        if content == "tool":
            return gemini_calling(ARGS).fake
        return FakeGemini(key=GEMINI_KEY, default=g.Answer(text=CANONICAL_TEXT))
    default = CALL if content == "tool" else faults.ok()
    return FakeUpstream(name=name, default=default, **options)


def gemini_calling(args: dict[str, Any]) -> Member:
    """A healthy Gemini entry whose answer is one call with `args`."""
    answer = g.Answer(text="", calls=(("get_weather", args),))
    return Member("gemini", FakeGemini(key=GEMINI_KEY, default=answer), model_for("gemini"))


def model_for(family: str) -> str:
    return {
        "anthropic": CONTINUES,
        "chat": "gpt-5.2",
        "responses": "gpt-5.2-codex",
        "gemini": "gemini-2.5-flash",
    }[family]


def break_on(
    fake: FakeUpstream | FakeGemini,
    brk: str,
    content: str,
    after: int,
    call: ToolCall | None = CALL.tool_call,
) -> None:
    """Script the broken model's answer: `after` content chunks, then the break."""
    if isinstance(fake, FakeGemini):
        answer = g.Answer(text=CANONICAL_TEXT, chunk_chars=12)
        broken = g.cut_stream(after) if brk == "cut" else g.error_in_stream(after)
        fake.script(replace(broken, answer=answer))
        return
    fault = (
        Fault(kind="cut", reset=Reset.MID_STREAM, after_chunks=after)
        if brk == "cut"
        else faults.error_event_after(after)
    )
    fake.script(replace(fault, tool_call=call) if content == "tool" else fault)


@asynccontextmanager
async def chain(*members: Member) -> AsyncIterator[ProxyHarness]:
    """The proxy in front of the members' fakes (all started here); on the way out,
    checks that the Gemini fake refused nothing it was sent."""
    async with AsyncExitStack() as stack:
        for m in members:
            await stack.enter_async_context(m.fake)
        yield await stack.enter_async_context(ProxyHarness(config(*members)))
    for m in members:
        if isinstance(m.fake, FakeGemini):
            assert m.fake.problems == [], m.fake.problems


def member(family: str, name: str, content: str, model: str = "", **options: Any) -> Member:
    """A healthy chain entry of `family` (its usual model unless named) that answers
    `content`."""
    fake = fake_for(family, name, content, **options)
    return Member(family, fake, model or model_for(family))


async def run(api: str, *members: Member, **extra: Any) -> tuple[Seen, str]:
    """The chain asked once through `api`'s SDK: what the client read, and the logs."""
    async with chain(*members) as px:
        got = await ask(px.url(), api, **extra)
        return got, px.logs()


@pytest.fixture(autouse=True)
async def warm() -> None:
    await warm_sdks()


def recovery_line(logs: str) -> str:
    [line] = [ln for ln in logs.splitlines() if "stream_recovered" in ln or "gave_up" in ln]
    return line


def expected_mode(healthy: str) -> str:
    """`prefill = "auto"` by the TARGET's rules: an Anthropic 4.5 model without thinking
    continues a prefill; a chat model without `prefill_flag` and Gemini are restarted."""
    return "prefill" if healthy == "anthropic" else "restart"


def assert_coherent(got: Seen, api: str, content: str) -> None:
    assert got.error is None, got.error
    assert (got.starts, got.finishes) == (1, 1)
    assert len(got.answer_ids) == 1, got.answer_ids  # one message / response / chat id
    if content == "tool":
        assert json.loads(got.tool_args) == ARGS
        assert len(got.call_ids) == 1 and got.final_call_ids == got.call_ids
        assert got.finish_reason == TOOL_STOP[api]
    else:
        assert got.text == got.final_text == CANONICAL_TEXT
        assert got.finish_reason == STOP[api]


@pytest.mark.parametrize("brk", ["cut", "error_event"])
@pytest.mark.parametrize(("broken", "healthy"), PAIRS)
@pytest.mark.parametrize("api", APIS)
async def test_a_text_answer_broken_on_one_family_is_finished_on_another(
    api: str, broken: str, healthy: str, brk: str
) -> None:
    first = member(broken, "primary", "text")
    second = member(healthy, "fallback", "text")
    break_on(first.fake, brk, "text", CUT)
    got, logs = await run(api, first, second)
    assert_coherent(got, api, "text")
    line = recovery_line(logs)
    assert f"recovered={expected_mode(healthy)}" in line
    assert f"served_by=e1/{model_for(healthy)}" in line
    if isinstance(second.fake, FakeUpstream):
        # Offered a prefill only where the target continues one.
        assert len(second.fake.prefills) == (1 if healthy == "anthropic" else 0)
    else:
        [asked] = second.fake.requests  # restarted: the conversation ends with the user
        assert asked.body["contents"][-1]["role"] == "user"


@pytest.mark.parametrize("brk", ["cut", "error_event"])
@pytest.mark.parametrize(("broken", "healthy"), [("anthropic", "chat"), ("chat", "anthropic")])
@pytest.mark.parametrize("api", APIS)
async def test_a_tool_call_cut_midway_is_restarted_on_another_family_with_its_ids(
    api: str, broken: str, healthy: str, brk: str
) -> None:
    # Half the call's arguments are out; the other family's restart repeats them and the
    # client reads one call, under the id it first saw, with valid JSON arguments.
    first = member(broken, "primary", "tool")
    second = member(healthy, "fallback", "tool")
    break_on(first.fake, brk, "tool", 1)
    got, logs = await run(api, first, second)
    assert_coherent(got, api, "tool")
    assert "primary" in got.call_ids[0]  # the broken model's name for the call
    assert "recovered=restart" in recovery_line(logs)
    assert isinstance(second.fake, FakeUpstream) and second.fake.prefills == []


# A tool call's arguments as OpenAI streams them (compact JSON, which is also how Gemini's
# argument object reads back) and as Anthropic's partial_json spells them (with spaces).
COMPACT = ToolCall(arguments=json.dumps(ARGS, separators=(",", ":")))
SPACED = ToolCall(arguments=json.dumps(ARGS))


def assert_args(got: Seen, api: str, value: dict[str, Any]) -> None:
    """The client's concatenated arguments and its SDK's accumulated call both carry
    `value`, the fallback's call (Anthropic's accumulator parses them itself)."""
    assert json.loads(got.tool_args) == value
    assert got.final_inputs == [value]
    if api != "messages":
        assert got.final_args == [got.tool_args]  # Responses `.done` / chat accumulator


# (broken, healthy, the broken model's spelling): Gemini and OpenAI read back compact,
# Anthropic's partial_json (and the chat fake, json.dumps' default) spaced.
RESPELT = [
    *[
        (broken, "gemini", spelled)
        for broken in ("anthropic", "chat")
        for spelled in (COMPACT, SPACED)
    ],
    ("anthropic", "chat", COMPACT),
    ("chat", "anthropic", COMPACT),
]


@pytest.mark.parametrize(("broken", "healthy", "spelled"), RESPELT)
@pytest.mark.parametrize("api", APIS)
async def test_a_tool_call_cut_midway_is_finished_in_the_clients_spelling(
    api: str, broken: str, healthy: str, spelled: ToolCall
) -> None:
    # The client has half a call, `{"city":"Pa` or `{"city": "Pa`; the healthy model's
    # restart spells it alike (it goes on) or otherwise (the same value, re-spelled the
    # client's way; Gemini sends its call whole).  Either way one call goes out, under
    # the id the client first saw, in the spelling the client began with.
    first = member(broken, "primary", "tool")
    second = member(healthy, "fallback", "tool")
    break_on(first.fake, "cut", "tool", 2, spelled)
    got, logs = await run(api, first, second)
    assert_coherent(got, api, "tool")
    assert got.tool_args == spelled.arguments
    assert_args(got, api, ARGS)
    assert "primary" in got.call_ids[0]
    assert "recovered=restart" in recovery_line(logs)
    assert len(second.fake.requests) == 1


@pytest.mark.parametrize("api", APIS)
async def test_non_ascii_arguments_escaped_on_one_side_and_raw_on_the_other_are_finished(
    api: str,
) -> None:
    # The client has `{"city": "Orl\u0` (json.dumps escapes é); Gemini's call reads back
    # with a raw `é`.  The rest goes out escaped, as the client's began.
    value = {"city": "Orléans"}
    escaped = ToolCall(arguments=json.dumps(value))
    first = member("chat", "primary", "tool")
    second = gemini_calling(value)
    break_on(first.fake, "cut", "tool", 2, escaped)
    got, _ = await run(api, first, second)
    assert got.error is None, got.error
    assert "\\u00e9" in got.tool_args[:20]  # what the client had before the break
    assert got.tool_args == escaped.arguments
    assert_args(got, api, value)


@pytest.mark.parametrize("api", APIS)
async def test_a_fallback_that_calls_with_other_arguments_ends_in_the_honest_give_up(
    api: str,
) -> None:
    # Spelled otherwise AND another value (Lyon, not Paris): no spelling reproduces what
    # the client has, so nothing of the fallback's call is glued on.
    first = member("anthropic", "primary", "tool", CONTINUES)
    second = gemini_calling({"city": "Lyon"})
    break_on(first.fake, "cut", "tool", 2, SPACED)
    got, logs = await run(api, first, second)
    assert_clean_error(got, SPACED.arguments)
    assert got.tool_args == '{"city": "Pa'
    assert "gave_up" in logs
    assert isinstance(second.fake, FakeGemini) and len(second.fake.requests) == 1


@pytest.mark.parametrize(("broken", "healthy"), [("anthropic", "chat"), ("chat", "anthropic")])
@pytest.mark.parametrize("api", APIS)
async def test_another_familys_different_answer_is_never_glued_on(
    api: str, broken: str, healthy: str
) -> None:
    # The healthy model samples another answer (same opening, another middle).  A restart
    # cannot reproduce what the client has: the plain-words give-up, nothing appended.
    cut = len(split_text(CANONICAL_TEXT)) - 3  # past the point where samples part
    first = member(broken, "primary", "text")
    model = REFUSES if healthy == "anthropic" else model_for(healthy)
    second = member(healthy, "fallback", "text", model, vary=True)
    break_on(first.fake, "cut", "text", cut)
    got, logs = await run(api, first, second)
    assert_clean_error(got, CANONICAL_TEXT)
    assert "sample" not in got.text
    assert "gave_up" in logs


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_a_claude_that_refuses_prefill_is_restarted_and_remembered(api: str) -> None:
    first = member("chat", "primary", "text")
    second = member("anthropic", "fallback", "text", REFUSES)
    assert isinstance(first.fake, FakeUpstream) and isinstance(second.fake, FakeUpstream)
    first.fake.script(faults.reset_mid_stream(CUT), faults.reset_mid_stream(CUT))
    async with chain(first, second) as px:
        got = await ask(px.url(), api)
        assert_coherent(got, api, "text")
        # Asked once with the prefill in Anthropic's terms, refused (400), then restarted.
        assert [r.fault.kind for r in second.fake.requests] == ["status_400", "ok"]
        [prefilled] = second.fake.prefills
        assert CANONICAL_TEXT.startswith(prefilled) and prefilled == prefilled.rstrip()
        assert "recovered=restart" in recovery_line(px.logs())
        # Remembered: the next break goes straight to a restart.
        again = await ask(px.url(), api)
        assert_coherent(again, api, "text")
        assert len(second.fake.prefills) == 1 and len(second.fake.requests) == 3


async def test_a_prefill_to_claude_is_in_anthropics_terms() -> None:
    first = member("chat", "primary", "text")
    second = member("anthropic", "fallback", "text", CONTINUES)
    break_on(first.fake, "cut", "text", CUT)
    got, _ = await run("chat", first, second)
    assert_coherent(got, "chat", "text")
    assert isinstance(second.fake, FakeUpstream)
    sent = second.fake.requests[-1].json()
    assert second.fake.requests[-1].path.endswith("/v1/messages")
    last = sent["messages"][-1]
    assert last["role"] == "assistant" and CANONICAL_TEXT.startswith(last["content"])
    assert "max_tokens" in sent and "messages" in sent and "stream_options" not in sent


async def test_a_chat_client_asking_for_reasoning_is_not_offered_a_prefill_on_claude() -> None:
    # The translated request enables thinking: Claude would refuse a prefill (400).
    first = member("chat", "primary", "text")
    second = member("anthropic", "fallback", "text", CONTINUES)
    break_on(first.fake, "cut", "text", CUT)
    got, logs = await run("chat", first, second, reasoning_effort="low")
    assert_coherent(got, "chat", "text")
    assert isinstance(second.fake, FakeUpstream) and second.fake.prefills == []
    assert second.fake.requests[-1].json()["thinking"]["type"] == "enabled"
    assert "recovered=restart" in recovery_line(logs)


@pytest.mark.parametrize("flag", ["prefix", "continue_final_message"])
async def test_a_chat_target_with_its_continuation_flag_continues_an_anthropic_answer(
    flag: str,
) -> None:
    first = member("anthropic", "primary", "text", REFUSES)
    second = Member(
        "chat",
        fake_for("chat", "fallback", "text"),
        "deepseek-chat",
        endpoint=f'prefill_flag = "{flag}"',
    )
    break_on(first.fake, "cut", "text", CUT)
    got, logs = await run("messages", first, second)
    assert_coherent(got, "messages", "text")
    assert "recovered=prefill" in recovery_line(logs)
    assert isinstance(second.fake, FakeUpstream)
    sent = second.fake.requests[-1].json()
    last = sent["messages"][-1]
    assert last["role"] == "assistant" and CANONICAL_TEXT.startswith(last["content"])
    if flag == "prefix":
        assert last["prefix"] is True
    else:
        assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False


SIGNED = {"type": "thinking", "thinking": "Earlier reasoning.", "signature": "c2lnbmVkLWJ5LWFudGg="}
HISTORY = [
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": [SIGNED, {"type": "text", "text": "Hi."}]},
    {"role": "user", "content": "hi"},
]


@pytest.mark.parametrize("healthy", ["chat", "gemini"])
async def test_signed_thinking_is_never_replayed_to_another_family(healthy: str) -> None:
    first = member("anthropic", "primary", "text", REFUSES)
    second = member(healthy, "fallback", "text")
    break_on(first.fake, "cut", "text", CUT)
    got, _ = await run("messages", first, second, messages=HISTORY)
    assert_coherent(got, "messages", "text")
    if isinstance(second.fake, FakeUpstream):
        sent = second.fake.requests[-1].body
    else:
        sent = json.dumps(second.fake.requests[-1].body).encode()
    assert b"c2lnbmVkLWJ5LWFudGg" not in sent and b"Earlier reasoning" not in sent
    assert b"Hi." in sent  # the history itself is kept


async def test_a_cross_family_recovery_is_counted_and_shown() -> None:
    first = member("gemini", "primary", "text")
    second = member("anthropic", "fallback", "text", REFUSES)
    break_on(first.fake, "cut", "text", CUT)
    async with chain(first, second) as px:
        got = await ask(px.url(), "responses")
        async with aiohttp.ClientSession() as s:
            async with s.get(px.url() + "/_hydrallm/status.json") as r:
                doc = await r.json()
            async with s.get(px.url() + "/_hydrallm/metrics") as r:
                metrics = await r.text()
    assert_coherent(got, "responses", "text")
    assert [(e["event"], e["model"]) for e in doc["streams"]] == [
        ("restart", "e0/gemini-2.5-flash")
    ]
    [entry] = [r for r in doc["requests"] if r["path"].endswith("/responses")]
    assert (entry["served_by"], entry["recovered"]) == (f"e1/{REFUSES}", "restart")
    assert (
        'hydrallm_stream_recoveries_total{model="e0/gemini-2.5-flash",result="restart"} 1.0'
        in metrics
    )


async def test_the_differing_sample_of_a_continuing_claude_is_its_own_continuation() -> None:
    # A prefill that continues is spliced where the client's text stops, whatever the
    # model would have said had it started anew: one answer, its opening the client's.
    first = member("chat", "primary", "text")
    second = member("anthropic", "fallback", "text", CONTINUES, vary=True)
    break_on(first.fake, "cut", "text", CUT)
    got, _ = await run("responses", first, second)
    assert got.error is None and (got.starts, got.finishes) == (1, 1)
    sample = sample_text(CANONICAL_TEXT, CONTINUES, 1)
    assert isinstance(second.fake, FakeUpstream)
    [prefilled] = second.fake.prefills
    assert got.text == got.final_text
    assert got.text.startswith(prefilled) and got.text.endswith(sample[len(prefilled) :])


AWS_KEY, AWS_SECRET = "AKIDRECOVERYTEST1", "recovery-test-secret"


@pytest.mark.parametrize(
    ("model", "mode"),
    [
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "prefill"),
        ("us.anthropic.claude-sonnet-4-6", "restart"),  # refuses the prefill: 400
    ],
)
async def test_anthropic_direct_broken_is_finished_by_claude_on_bedrock(
    model: str, mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):  # no AWS setting of the machine leaks in
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    (tmp_path / "aws").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    async with (
        FakeUpstream(name="primary") as direct,
        FakeBedrock({AWS_KEY: AWS_SECRET}) as aws,
    ):
        direct.script(faults.reset_mid_stream(CUT))
        text = config(Member("anthropic", direct, REFUSES)) + (
            f'[endpoints.aws]\nurl = "{aws.url}"\naws_access_key_id = "{AWS_KEY}"\n'
            f'aws_secret_access_key = "{AWS_SECRET}"\naws_region = "us-east-1"\n'
            f'[[models]]\nendpoint = "aws"\ntype = "bedrock"\nmodel = "{model}"\n'
        )
        async with ProxyHarness(text, env=dict(os.environ)) as px:
            got = await ask(px.url(), "messages")
            logs = px.logs()
    assert_coherent(got, "messages", "text")
    assert f"recovered={mode}" in recovery_line(logs)
    assert len(aws.prefills) == 1  # offered by Claude's rules, refused or continued
    assert all(r.signed for r in aws.requests)
    assert [r.action for r in aws.requests] == ["invoke-with-response-stream"] * (
        1 if mode == "prefill" else 2
    )


@pytest.mark.parametrize(
    ("model", "mode"),
    [("gemini-2.5-flash", "prefill"), ("gemini-3.6-flash", "restart")],  # 3.6 refuses: 400
)
@pytest.mark.parametrize("api", ["messages", "responses"])
async def test_prefill_yes_on_gemini_is_a_trailing_model_turn(
    api: str, model: str, mode: str
) -> None:
    first = member("chat", "primary", "text")
    second = Member("gemini", fake_for("gemini", "fallback", "text"), model, 'prefill = "yes"')
    break_on(first.fake, "cut", "text", CUT)
    got, logs = await run(api, first, second)
    assert_coherent(got, api, "text")
    assert f"recovered={mode}" in recovery_line(logs)
    assert isinstance(second.fake, FakeGemini)
    [prefilled] = second.fake.prefills
    assert CANONICAL_TEXT.startswith(prefilled) and prefilled == prefilled.rstrip()
    asked = second.fake.requests[0].body["contents"]
    assert asked[-1] == {"role": "model", "parts": [{"text": prefilled}]}
    assert len(second.fake.requests) == (1 if mode == "prefill" else 2)
    if mode == "restart":
        assert second.fake.requests[1].body["contents"][-1]["role"] == "user"


@pytest.mark.parametrize("content", ["text", "tool"])
@pytest.mark.parametrize(
    ("broken", "healthy"),
    [("responses", "anthropic"), ("responses", "gemini"), ("anthropic", "responses")],
)
async def test_a_responses_client_crosses_between_native_responses_and_other_families(
    broken: str, healthy: str, content: str
) -> None:
    # Codex's case: native Responses on one side of the break, a translation on the other.
    first = member(broken, "primary", content)
    second = member(healthy, "fallback", content)
    break_on(first.fake, "error_event", content, 1 if content == "tool" else CUT, COMPACT)
    got, logs = await run("responses", first, second)
    assert_coherent(got, "responses", content)
    mode = "restart" if content == "tool" else expected_mode(healthy)  # a call: no prefill
    assert f"recovered={mode}" in recovery_line(logs)
    if content == "tool":
        assert "primary" in got.call_ids[0]
