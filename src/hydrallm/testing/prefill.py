"""A fake upstream that understands an assistant prefill, for mid-stream recovery tests.

    async with PrefillUpstream() as fake:          # continues a prefilled answer
    async with PrefillUpstream(refuse=True) as f:  # 400s any prefilled request

A request whose last message (chat, Anthropic) or input item (Responses) is an
assistant turn is answered with the rest of the fake's text after that prefix, as a
model continuing its own answer would; a prefix that is not the start of its text is
ignored (the model answers in full).  With `refuse=True` such a request gets a 400
naming the prefill, as models that take none answer.  Every other request is answered
as by `FakeUpstream`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web

from hydrallm.testing.answers import Api, api_for_path
from hydrallm.testing.faults import status
from hydrallm.testing.upstream import FakeUpstream

__all__ = ["REFUSAL", "PrefillUpstream", "assistant_prefill"]

REFUSAL = "This model does not support assistant message prefill. The conversation must end with a user message."


class PrefillUpstream(FakeUpstream):
    """`FakeUpstream` that continues (or refuses) an assistant prefill."""

    def __init__(self, *, refuse: bool = False, **options: Any) -> None:
        super().__init__(**options)
        self.refuse = refuse
        self.prefills: list[str] = []  # the prefills received, in order

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()  # aiohttp keeps it: the base class reads it again
        prefix = assistant_prefill(api_for_path(request.path), body)
        if prefix is not None:
            self.prefills.append(prefix)
            if self.refuse:
                error: dict[str, Any] = {
                    "error": {"type": "invalid_request_error", "message": REFUSAL}
                }
                if api_for_path(request.path) is Api.MESSAGES:
                    error = {"type": "error", **error}
                self._script.appendleft(status(400, error))
            else:
                fault = self._next_fault()
                text = fault.text if fault.text is not None else self.text
                rest = text[len(prefix) :] if text.startswith(prefix) else text
                self._script.appendleft(dataclasses.replace(fault, text=rest))
        return await super()._handle(request)


def assistant_prefill(api: Api | None, body: bytes) -> str | None:
    """The text of a final assistant turn in a request body, or None."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
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
