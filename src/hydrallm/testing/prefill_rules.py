"""What a fake model does with an assistant prefill (a request ending in an assistant turn).

Real providers differ (see the shared provider-behaviour notes, "Prefill"):

- `continue`: the model goes on from the prefill; the reply excludes the prefix (Claude up
  to 4.5 with thinking off; llama.cpp; OpenAI-compatible servers given their flag).
- `ignore`: the turn is taken as history and the model answers anew, restating the
  opening (OpenAI Chat Completions and Responses; vLLM and most compatible servers
  without their continuation flag).
- `refuse`: 400 naming the prefill (Claude 4.6 and later).
- `refuse_with_thinking`: 400 when the request enables `thinking` (the final assistant
  turn must then start with a thinking block), else `continue` (Claude up to 4.5).

`default_behaviour()` picks the real provider's behaviour for a fake model; `FakeUpstream`
takes `prefill=` to choose another, for every model or per model name.  Import these
from `hydrallm.testing.prefill`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from hydrallm.testing.answers import Api
from hydrallm.testing.faults import Fault, status

__all__ = [
    "BEHAVIOURS",
    "REFUSAL",
    "THINKING_REFUSAL",
    "PrefillBehaviour",
    "assistant_prefill",
    "continuation_flagged",
    "default_behaviour",
    "refusal",
    "thinking_enabled",
]

PrefillBehaviour = Literal["continue", "ignore", "refuse", "refuse_with_thinking"]
BEHAVIOURS: tuple[PrefillBehaviour, ...] = ("continue", "ignore", "refuse", "refuse_with_thinking")

# Anthropic's wire text for Claude 4.6+ (platform.claude.com migration guide).
REFUSAL = (
    "This model does not support assistant message prefill. "
    "The conversation must end with a user message."
)
# Anthropic's wire text with thinking on; "preceeding" is misspelt on the wire too.
THINKING_REFUSAL = (
    "messages.{n}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
    "`text`. When `thinking` is enabled, a final `assistant` message must start with a "
    "thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). "
    "We recommend you include thinking blocks from previous turns. To avoid this "
    "requirement, disable `thinking`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
)

# Claude generations that refuse any prefill: 4.6 and later, and 5 onwards.
_NO_PREFILL_CLAUDE = re.compile(r"claude-(?:[a-z]+-)?(?:4[-.](?:[6-9]|\d\d)|[5-9])(?!\d)")


def default_behaviour(api: Api | None, model: str, payload: Mapping[str, Any]) -> PrefillBehaviour:
    """What the real provider behind `api` does with a prefill for `model`."""
    if api is Api.MESSAGES:
        return "refuse" if _NO_PREFILL_CLAUDE.search(model) else "refuse_with_thinking"
    if api is Api.CHAT and continuation_flagged(payload):
        return "continue"
    return "ignore"


def continuation_flagged(payload: Mapping[str, Any]) -> bool:
    """Does a chat request carry a continuation flag (`prefix`, `continue_final_message`)?"""
    if payload.get("continue_final_message") is True:
        return payload.get("add_generation_prompt") is False
    messages = payload.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1].get("prefix") is True or messages[-1].get("partial") is True
    return False


def thinking_enabled(payload: Mapping[str, Any]) -> bool:
    thinking = payload.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def refusal(
    behaviour: PrefillBehaviour, api: Api | None, payload: Mapping[str, Any]
) -> Fault | None:
    """The 400 the model answers a prefilled request with, or None when it takes it."""
    if behaviour == "refuse":
        message = REFUSAL
    elif behaviour == "refuse_with_thinking" and thinking_enabled(payload):
        messages = payload.get("messages")
        n = len(messages) - 1 if isinstance(messages, list) else 0
        message = THINKING_REFUSAL.format(n=n)
    else:
        return None
    error: dict[str, Any] = {"type": "invalid_request_error", "message": message}
    if api is Api.MESSAGES:
        body: dict[str, Any] = {"type": "error", "error": error, "request_id": "req_fake"}
    else:
        body = {"error": {**error, "param": "messages", "code": None}}
    # Anthropic sends x-should-retry: false with it: the SDKs do not retry.
    return status(400, body, {"x-should-retry": "false"})


def assistant_prefill(api: Api | None, body: bytes | Mapping[str, Any]) -> str | None:
    """The text of a final assistant turn in a request body, or None."""
    if isinstance(body, bytes):
        try:
            payload = json.loads(body)
        except ValueError:
            return None
    else:
        payload = body
    if not isinstance(payload, Mapping):
        return None
    turns = payload.get("input") if api is Api.RESPONSES else payload.get("messages")
    if not isinstance(turns, list) or not turns:
        return None
    last = turns[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return None
