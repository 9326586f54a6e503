"""The continuation request: the original body with the received text as an assistant prefill."""

from __future__ import annotations

import json
from typing import Any

from hydrallm.config import PrefillFlag
from hydrallm.formats.peek import StreamKind

# Words a 4xx body uses when a model refuses an assistant prefill (Anthropic: "This model
# does not support assistant message prefill"; OpenAI-compatible servers: "the final
# message must be a user message", "continue_final_message", "prefix").
_PREFILL_WORDS = ("prefill", "assistant", "final message", "last message", "prefix")


def prefill_body(
    kind: StreamKind, body: dict[str, Any], text: str, flag: PrefillFlag = "none"
) -> bytes | None:
    """`body` with `text` appended as the answer so far; None when the body has no place for it.

    The text is sent without trailing whitespace (Anthropic refuses a prefill that ends
    in whitespace); the splice expects the continuation to reproduce it.  For chat
    completions, `flag` adds the marker an OpenAI-compatible server needs to continue the
    last assistant message rather than answer after it: `prefix` (DeepSeek, Mistral:
    `"prefix": true` on that message) or `continue_final_message` (vLLM and TGI-style
    servers: top-level `continue_final_message: true, add_generation_prompt: false`).
    """
    text = text.rstrip()
    if not text:
        return None
    out = dict(body)
    if kind is StreamKind.OPENAI_RESPONSES:
        items = out.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        if not isinstance(items, list):
            return None
        out["input"] = _append(items, text, responses=True)
    else:
        messages = out.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        appended = _append(messages, text, responses=False)
        if kind is StreamKind.OPENAI_CHAT and flag == "prefix":
            appended[-1] = {**appended[-1], "prefix": True}
        elif kind is StreamKind.OPENAI_CHAT and flag == "continue_final_message":
            out["continue_final_message"] = True
            out["add_generation_prompt"] = False
        out["messages"] = appended
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()


def _append(messages: list[Any], text: str, *, responses: bool) -> list[Any]:
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        # The client prefilled the answer itself: the model's text follows its prefill.
        content = last.get("content")
        if isinstance(content, str):
            return [*messages[:-1], {**last, "content": content + text}]
        if isinstance(content, list):
            part_type = "output_text" if responses else "text"
            return [
                *messages[:-1],
                {**last, "content": [*content, {"type": part_type, "text": text}]},
            ]
    return [*messages, {"role": "assistant", "content": text}]


def names_prefill(body: bytes) -> bool:
    """Does an error body say the request's assistant prefill is the problem?"""
    lowered = body[:8192].decode("utf-8", errors="replace").lower()
    return any(word in lowered for word in _PREFILL_WORDS)
