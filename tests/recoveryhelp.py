"""What an official SDK makes of a (recovered) stream: one reader for the recovery tests.

`test_midstream.py`, `test_recovery_truth.py` and `test_recovery_family.py` stream one
answer through the proxy with the `anthropic` Messages stream, the `openai` chat stream or
the `openai` Responses stream, and compare what the user's program reads: the text,
the reasoning, the tool call (arguments and ids), how many starts and finishes it saw,
what the SDK's own accumulator made of the whole answer, and the error it raised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai
from openai.lib.streaming.chat import ChatCompletionStreamState

from hydrallm.testing import FakeUpstream

APIS = ["chat", "responses", "messages"]
USER = [{"role": "user", "content": "hi"}]


@dataclass
class Seen:
    """What the client's SDK made of the stream (thinking: Anthropic thinking, chat
    `reasoning_content`, Responses reasoning summary)."""

    text: str = ""
    thinking: str = ""
    tool_args: str = ""
    call_ids: list[str] = field(default_factory=list)
    starts: int = 0  # role chunks / message_start / response.created
    finishes: int = 0  # finish_reason / message_delta / response.completed
    finish_reason: str | None = None  # the last one: stop_reason, finish_reason, status
    final_text: str | None = None  # get_final_message() / get_final_response() text
    final_call_ids: list[str] = field(default_factory=list)
    # The accumulator's calls: arguments as text (chat, Responses) and as values (all
    # three; Anthropic's accumulator parses `partial_json` itself).
    final_args: list[str] = field(default_factory=list)
    final_inputs: list[Any] = field(default_factory=list)
    answer_ids: set[str] = field(default_factory=set)  # message / chunk / response ids
    usage: Any = None
    sequence: list[int] = field(default_factory=list)  # Responses sequence numbers
    error: str | None = None


async def read(
    url: str,
    api: str,
    *,
    thinking: bool = False,
    messages: list[dict[str, Any]] | None = None,
    into: Seen | None = None,
    **extra: Any,
) -> Seen:
    """Stream one answer through the proxy at `url`; the SDK's errors are raised (what was
    read before them stays in `into`)."""
    got = Seen() if into is None else into
    if api == "messages":
        await _messages(url, got, thinking, messages or USER, extra)
    elif api == "responses":
        await _responses(url, got, messages, extra)
    else:
        await _chat(url, got, messages or USER, extra)
    return got


async def ask(url: str, api: str, thinking: bool = False, **extra: Any) -> Seen:
    """`read`, with the SDK's error kept in `Seen.error` instead of raised."""
    got = Seen()
    try:
        await read(url, api, thinking=thinking, into=got, **extra)
    except (openai.APIError, anthropic.APIError) as exc:
        got.error = str(exc)
    return got


async def _messages(
    url: str, got: Seen, thinking: bool, messages: list[dict[str, Any]], extra: dict[str, Any]
) -> None:
    if thinking:
        extra = {**extra, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    extra.setdefault("max_tokens", 2000)
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as claude:
        async with claude.messages.stream(
            model="m",
            messages=messages,  # type: ignore[arg-type]
            **extra,
        ) as stream:
            async for event in stream:
                if event.type == "message_start":
                    got.starts += 1
                    got.answer_ids.add(event.message.id)
                elif event.type == "message_delta":
                    got.finishes += 1
                    got.finish_reason = event.delta.stop_reason
                elif event.type == "content_block_start" and event.content_block.type == "tool_use":
                    got.call_ids.append(event.content_block.id)
                elif event.type == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta":
                        got.text += delta.text
                    elif delta.type == "thinking_delta":
                        got.thinking += delta.thinking
                    elif delta.type == "input_json_delta":
                        got.tool_args += delta.partial_json
            final = await stream.get_final_message()
    got.usage = final.usage
    got.final_text = "".join(b.text for b in final.content if b.type == "text")
    got.final_call_ids = [b.id for b in final.content if b.type == "tool_use"]
    got.final_inputs = [b.input for b in final.content if b.type == "tool_use"]


async def _responses(
    url: str, got: Seen, messages: list[dict[str, Any]] | None, extra: dict[str, Any]
) -> None:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        async with client.responses.stream(
            model="m",
            input=messages or "hi",  # type: ignore[arg-type]
            **extra,
        ) as events:
            async for ev in events:
                got.sequence.append(ev.sequence_number)
                if ev.type == "response.created":
                    got.starts += 1
                    got.answer_ids.add(ev.response.id)
                elif ev.type == "response.completed":
                    got.finishes += 1
                    got.finish_reason = ev.response.status
                    got.answer_ids.add(ev.response.id)
                elif ev.type == "response.output_text.delta":
                    got.text += ev.delta
                elif ev.type == "response.reasoning_summary_text.delta":
                    got.thinking += ev.delta
                elif ev.type == "response.function_call_arguments.delta":
                    got.tool_args += ev.delta
                elif ev.type == "response.output_item.added" and ev.item.type == "function_call":
                    got.call_ids.append(ev.item.call_id)
            # The accumulator checks every identity: a restarted call must keep its own.
            response = await events.get_final_response()
    got.usage = response.usage
    got.final_text = response.output_text
    got.final_call_ids = [i.call_id for i in response.output if i.type == "function_call"]
    got.final_args = [i.arguments for i in response.output if i.type == "function_call"]
    got.final_inputs = [_value(a) for a in got.final_args]
    summaries = [p.text for i in response.output if i.type == "reasoning" for p in i.summary]
    assert "".join(summaries) == got.thinking  # the final response agrees with the deltas


async def _chat(url: str, got: Seen, messages: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        chunks = await client.chat.completions.create(
            model="m",
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
        state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
        async for chunk in chunks:
            state.handle_chunk(chunk)
            got.answer_ids.add(chunk.id)
            if chunk.usage is not None:
                got.usage = chunk.usage
            for choice in chunk.choices:
                delta = choice.delta
                got.starts += delta.role is not None
                if choice.finish_reason is not None:
                    got.finishes += 1
                    got.finish_reason = choice.finish_reason
                got.text += delta.content or ""
                got.thinking += getattr(delta, "reasoning_content", None) or ""
                for call in delta.tool_calls or []:
                    if call.id:
                        got.call_ids.append(call.id)
                    got.tool_args += (call.function.arguments or "") if call.function else ""
    got.final_text = got.text
    got.final_call_ids = got.call_ids
    final = state.get_final_completion()
    calls = final.choices[0].message.tool_calls or [] if final.choices else []
    got.final_args = [c.function.arguments for c in calls if c.type == "function"]
    got.final_inputs = [_value(a) for a in got.final_args]


def _value(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def assert_clean_error(got: Seen, *answers: str) -> None:
    """A clean error: the SDK raised, the words are plain, nothing after it was glued on."""
    assert got.error is not None, "a broken answer must not look like success"
    assert "incomplete" in got.error
    assert "Error(" not in got.error and "<" not in got.error  # no library reprs
    assert any(a.startswith(got.text) for a in answers), got.text


async def warm_sdks() -> None:
    """The SDKs build their models on the first parse, which can hold the shared loop past
    a test's short idle limit: do that once, outside the measured requests."""
    async with FakeUpstream() as up:
        for api in APIS:
            await read(up.url, api)
