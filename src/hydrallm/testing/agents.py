"""A fake upstream for the real coding agents (Claude Code, Codex CLI, opencode).

    async with AgentUpstream(name="primary", text="...") as fake:
        fake.script_turn(faults.reset_mid_stream(5))   # only the agent's own turn is cut

Agents send more than their turn: opencode asks for a title first, Claude Code may ask a
small model for a summary.  `script_turn` queues faults for the requests that carry
`tools` (the agent's turn; helper requests carry none), so a scripted cut lands where a
user would see it.  Other requests take the ordinary script, then the default.

`prefill` says what the model does with a trailing assistant turn (hydrallm's mid-stream
continuation), as the real providers do:
- "ignore": answers anew, from its first word (OpenAI Chat Completions and Responses,
  OpenAI-compatible servers without a continuation flag) -- what `FakeUpstream` does;
- "refuse": 400 naming the prefill (Claude 4.6 and later);
- "refuse_with_thinking": 400 when the request enables thinking, else answers anew
  (Anthropic models with thinking on, which is how Claude Code calls them).
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Literal

from aiohttp import web

from hydrallm.testing.answers import Api, api_for_path
from hydrallm.testing.faults import Fault, status
from hydrallm.testing.prefill import REFUSAL, assistant_prefill
from hydrallm.testing.upstream import FakeUpstream

__all__ = ["AgentUpstream", "PrefillBehaviour"]

PrefillBehaviour = Literal["ignore", "refuse", "refuse_with_thinking"]


class AgentUpstream(FakeUpstream):
    """`FakeUpstream` whose scripted faults can target the agent's turn only."""

    def __init__(self, *, prefill: PrefillBehaviour = "ignore", **options: Any) -> None:
        super().__init__(**options)
        self.prefill = prefill
        self.prefills: list[str] = []  # trailing assistant texts received, in order
        self._turn_script: deque[Fault] = deque()

    def script_turn(self, *faults: Fault) -> None:
        """Queue faults for the next requests that carry `tools` (the agent's turn)."""
        self._turn_script.extend(faults)

    @property
    def turn_pending(self) -> int:
        """Faults queued with `script_turn` and not used yet."""
        return len(self._turn_script)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()  # aiohttp keeps it: the base class reads it again
        api = api_for_path(request.path)
        payload = _payload(body)
        prefix = assistant_prefill(api, body)
        if prefix is not None:
            self.prefills.append(prefix)
            if self._refuses(payload):
                error: dict[str, Any] = {
                    "error": {"type": "invalid_request_error", "message": REFUSAL}
                }
                if api is Api.MESSAGES:
                    error = {"type": "error", **error}
                self._script.appendleft(status(400, error))
                return await super()._handle(request)
        if self._turn_script and payload.get("tools"):
            self._script.appendleft(self._turn_script.popleft())
        return await super()._handle(request)

    def _refuses(self, payload: dict[str, Any]) -> bool:
        if self.prefill == "refuse":
            return True
        if self.prefill == "refuse_with_thinking":
            thinking = payload.get("thinking")
            return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
        return False


def _payload(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
