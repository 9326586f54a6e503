"""The continuation request (the original body with the received text as an assistant
prefill), whether a model is offered one, and the check that it continued rather than
answered anew."""

from __future__ import annotations

from typing import Any

from hydrallm.config import PrefillFlag
from hydrallm.formats.frames import json_bytes
from hydrallm.formats.peek import StreamKind
from hydrallm.formats.transcript import TEXT, Transcript

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
    return json_bytes(out)


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


# How much of the client's text a continuation must restate to count as an ignored prefill.
RESTATE_WINDOW = 32


class PrefillProbe:
    """Reads the answer to a prefilled request until it can tell what the model did.

    A model that continues the prefill answers with what follows it; one that ignores it
    answers anew and restates the opening the client already has.  The verdict comes as
    soon as the answer's text either departs from the client's opening (`continued`) or
    has reproduced `RESTATE_WINDOW` characters of it (`restated`); an answer that opens
    with anything but text (a tool call, reasoning) is not a continuation of prose
    (`restated`: only a restart with prefix check may use it).  Nothing of the answer may
    be relayed before the verdict.
    """

    def __init__(self, kind: StreamKind, prefilled: str) -> None:
        self._seen = Transcript(kind)
        self._want = prefilled.lstrip()[:RESTATE_WINDOW]
        self.verdict: str | None = None  # "continued" | "restated"

    def feed(self, data: bytes) -> str | None:
        if self.verdict is None:
            self._seen.feed(data)
            self.verdict = self._judge(final=self._seen.finished)
        return self.verdict

    def eof(self) -> str:
        if self.verdict is None:
            self.verdict = self._judge(final=True) or "continued"
        return self.verdict

    def _judge(self, final: bool) -> str | None:
        blocks = self._seen.blocks
        if any(b.kind != TEXT for b in blocks):
            return "restated"
        text = blocks[0].text.lstrip() if blocks else ""
        want = self._want
        if not want:
            return "continued"
        if text:
            n = min(len(text), len(want))
            if text[:n] != want[:n]:
                return "continued"
            if len(text) >= len(want):
                return "restated"
        if final:
            return "restated" if text else "continued"
        return None


def auto_prefill(kind: StreamKind, flag: PrefillFlag, body: dict[str, Any] | None) -> bool:
    """`prefill = "auto"`: is a prefill worth offering for this request?

    Anthropic Messages continue a prefill unless the request enables thinking (then the
    final assistant turn must start with a thinking block: 400); an OpenAI-compatible chat
    server continues only when told by its flag (without it, it answers anew); the
    Responses API has no such flag and always answers anew.
    """
    if kind is StreamKind.ANTHROPIC:
        thinking = (body or {}).get("thinking")
        return not (isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"))
    if kind is StreamKind.OPENAI_CHAT:
        return flag != "none"
    return False
