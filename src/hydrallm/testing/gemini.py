"""`FakeGemini`: Google's `generateContent` API on loopback, strict about what it gets.

    async with FakeGemini(key="k") as fake:
        fake.script(gemini.rate_limited("22s"), gemini.answer(text="Hi"))
        # POST {fake.url}/v1beta/models/m:streamGenerateContent?alt=sse

Like the real service it refuses what it does not know: an unknown field anywhere in
the body (`"model"`, `"messages"`, `"max_tokens"`...) is a 400 INVALID_ARGUMENT naming
it, a missing key a 403, a wrong key a 400 API_KEY_INVALID, and a function call turn
must be answered by as many function responses in the next turn.  A request ending in a model
turn (a prefill) is continued or refused (400) as the model's version does, or as
`prefill=` says; the prefills received are kept in `prefills`.  Refusals are also
kept in `problems`, so a test can assert that nothing was refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from aiohttp import web

from hydrallm.testing.gemini_schema import validate
from hydrallm.testing.service import WebFake

__all__ = [
    "Answer",
    "FakeGemini",
    "Fault",
    "GeminiRequest",
    "answer",
    "answer_chunks",
    "cut_stream",
    "error_in_stream",
    "internal",
    "prefill_refusal",
    "quota_exhausted",
    "rate_limited",
    "unavailable",
    "validate",
    "whole_answer",
]

# Prefill (a request ending in a model turn): Gemini 2.5 Flash, 3.5 Flash and Flash-Lite up
# to 3.1 continue it literally; 3.6 Flash and 3.5 Flash-Lite refuse it with a 400
# INVALID_ARGUMENT (shared provider-behaviour notes, "Prefill"; LibreChat-AI/agents PR #323)
# and later versions too, in the message's first sentence only (gemini-3.7-flash and
# gemini-3.8-flash in anomalyco/opencode issues #45359 and #47034).
PREFILL_REFUSAL = "Requests ending with a model turn are not supported."
PREFILL_REFUSAL_UNLESS = (
    "Requests ending with a model turn are not supported unless the last part is a "
    "function response."
)
_REFUSES_PREFILL = re.compile(r"gemini-(?:3\.(?:[6-9]|\d\d)|[4-9])|gemini-3\.5-flash-lite")
_SAYS_UNLESS = re.compile(r"gemini-3\.6(?!\d)|gemini-3\.5-flash-lite")


def prefill_refusal(model: str) -> str:
    """The message of the 400 `model` refuses a trailing model turn with."""
    return PREFILL_REFUSAL_UNLESS if _SAYS_UNLESS.search(model) else PREFILL_REFUSAL


_PATH = re.compile(
    r"/v1beta/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)"
)


@dataclass(frozen=True, slots=True)
class Answer:
    """A normal answer: thought summary, text, function calls, in that order."""

    text: str = "Hello from the fake Gemini."
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    thought: str | None = None
    finish: str = "STOP"
    chunk_chars: int = 6
    prompt_tokens: int = 11
    cached_tokens: int = 0
    call_ids: bool = False  # newer models give functionCall.id


@dataclass(frozen=True, slots=True)
class Fault:
    kind: Literal["status", "stream_error", "cut"]
    status: int = 500
    body: dict[str, Any] = field(default_factory=dict)
    after_chunks: int = 1
    answer: Answer = field(default_factory=Answer)


def _error(
    code: int, status: str, message: str, details: list[Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


def answer(**kwargs: Any) -> Answer:
    return Answer(**kwargs)


def rate_limited(retry_delay: str = "22s") -> Fault:
    """A per-minute quota 429: QuotaFailure, Help and RetryInfo, as Gemini sends them."""
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaValue": "10",
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
    ]
    message = (
        "You exceeded your current quota, please check your plan and billing details."
        f" Please retry in {retry_delay}."
    )
    return Fault("status", 429, _error(429, "RESOURCE_EXHAUSTED", message, details))


def quota_exhausted() -> Fault:
    """A daily quota 429: no RetryInfo, only Help."""
    details = [{"@type": "type.googleapis.com/google.rpc.Help", "links": []}]
    message = "You exceeded your current quota, please check your plan and billing details."
    return Fault("status", 429, _error(429, "RESOURCE_EXHAUSTED", message, details))


def unavailable() -> Fault:
    message = "The model is overloaded. Please try again later."
    return Fault("status", 503, _error(503, "UNAVAILABLE", message))


def internal() -> Fault:
    message = "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
    return Fault("status", 500, _error(500, "INTERNAL", message))


def error_in_stream(after_chunks: int = 1) -> Fault:
    """A stream that sends `after_chunks` chunks, then an error object as a data event."""
    body = _error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
    return Fault("stream_error", 200, body, after_chunks)


def cut_stream(after_chunks: int = 1) -> Fault:
    """A stream closed after `after_chunks` chunks, without a finishReason."""
    return Fault("cut", 200, {}, after_chunks)


@dataclass(frozen=True, slots=True)
class GeminiRequest:
    model: str
    stream: bool
    query: str
    headers: dict[str, str]
    body: Any


class FakeGemini(WebFake):
    """Gemini on 127.0.0.1:<random port>: scripted answers and faults, strict validation."""

    def __init__(
        self,
        *,
        key: str | None = "test-gemini-key",
        default: Answer | None = None,
        require_signatures: bool = False,
        prefill: Literal["continue", "refuse"] | None = None,
    ) -> None:
        self.key = key
        self.prefill = prefill  # None: as the model's real version does
        self.prefills: list[str] = []  # the trailing model turns received, in order
        self.default = default or Answer()
        self.require_signatures = require_signatures
        self.requests: list[GeminiRequest] = []
        self.problems: list[str] = []
        self._script: list[Answer | Fault] = []

    def script(self, *items: Answer | Fault) -> None:
        self._script.extend(items)

    def _refuse(
        self, code: int, status: str, message: str, details: list[Any] | None = None
    ) -> web.Response:
        self.problems.append(message)
        return web.json_response(_error(code, status, message, details), status=code)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        match = _PATH.fullmatch(request.path)
        if match is None or request.method != "POST":
            return self._refuse(
                404, "NOT_FOUND", f"Method not found: {request.method} {request.path}"
            )
        given = request.headers.get("x-goog-api-key") or request.query.get("key")
        if self.key is not None and given is None:
            return self._refuse(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established"
                " identity). Please use API Key or other form of API consumer identity to call this API.",
            )
        if self.key is not None and given != self.key:
            info = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            }
            return self._refuse(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [info]
            )
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._refuse(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        stream = match.group("method") == "streamGenerateContent"
        self.requests.append(
            GeminiRequest(
                match.group("model"), stream, request.query_string, dict(request.headers), body
            )
        )
        problems = validate(body, self.require_signatures)
        if problems:
            return self._refuse(400, "INVALID_ARGUMENT", "\n".join(problems))
        prefix = _model_prefill(body)
        behaviour = self.prefill
        if prefix is not None:
            self.prefills.append(prefix)
            if behaviour is None:
                refuses = _REFUSES_PREFILL.search(match.group("model"))
                behaviour = "refuse" if refuses else "continue"
            if behaviour == "refuse":
                message = prefill_refusal(match.group("model"))
                return web.json_response(_error(400, "INVALID_ARGUMENT", message), status=400)
        item = self._script.pop(0) if self._script else self.default
        if isinstance(item, Fault) and item.kind == "status":
            return web.json_response(item.body, status=item.status)
        spec = item.answer if isinstance(item, Fault) else item
        if prefix is not None:
            # The model goes on from its own turn (the reply excludes it), thinking no more.
            spec = replace(spec, text=spec.text[len(prefix) :], thought=None)
        chunks = answer_chunks(spec, match.group("model"), len(self.requests))
        if not stream:
            return web.json_response(whole_answer(chunks))
        sse = request.query.get("alt") == "sse"
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream" if sse else "application/json"}
        )
        await response.prepare(request)
        limit = item.after_chunks if isinstance(item, Fault) else len(chunks)
        for n, chunk in enumerate(chunks[:limit]):
            data = json.dumps(chunk)
            await response.write(
                f"data: {data}\r\n\r\n".encode()
                if sse
                else ((b"[" if n == 0 else b",\r\n") + data.encode())
            )
        if isinstance(item, Fault) and item.kind == "stream_error":
            data = json.dumps(item.body)
            await response.write(
                f"data: {data}\r\n\r\n".encode() if sse else b",\r\n" + data.encode()
            )
        if isinstance(item, Fault):
            if request.transport is not None:
                request.transport.close()  # cut: no end of the chunked body
            return response
        if not sse:
            await response.write(b"]")
        await response.write_eof()
        return response


def _model_prefill(body: Any) -> str | None:
    """The text of a trailing model turn (a prefill), or None."""
    contents = body.get("contents") if isinstance(body, dict) else None
    last = contents[-1] if isinstance(contents, list) and contents else None
    if not isinstance(last, dict) or last.get("role") != "model":
        return None
    parts = last.get("parts") or []
    if parts and isinstance(parts[-1], dict) and "functionResponse" in parts[-1]:
        return None
    return "".join(p.get("text", "") for p in parts if isinstance(p, dict) and not p.get("thought"))


def answer_chunks(spec: Answer, model: str, serial: int) -> list[dict[str, Any]]:
    """The answer as Gemini streams it: text in pieces, each call whole, finish last."""
    rid = f"fakeResp{serial:04d}"
    parts: list[dict[str, Any]] = []
    if spec.thought:
        parts.append({"text": spec.thought, "thought": True})
    text = spec.text
    step = max(spec.chunk_chars, 1)
    parts += [{"text": text[i : i + step]} for i in range(0, len(text), step)]
    for n, (name, args) in enumerate(spec.calls):
        call: dict[str, Any] = {"name": name, "args": args}
        if spec.call_ids:
            call["id"] = f"fc{serial}x{n}"
        part: dict[str, Any] = {"functionCall": call}
        if n == 0:  # Gemini signs the first call of a step
            part["thoughtSignature"] = "c2lnbmF0dXJl"
        parts.append(part)
    if not parts:
        parts.append({"text": ""})
    output = sum(len(p.get("text", "")) // 4 + 1 for p in parts)
    thoughts = len(spec.thought or "") // 4
    chunks = []
    for n, part in enumerate(parts):
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [part]}, "index": 0}
        usage: dict[str, Any] = {
            "promptTokenCount": spec.prompt_tokens,
            "totalTokenCount": spec.prompt_tokens,
        }
        if n == len(parts) - 1:
            candidate["finishReason"] = spec.finish
            usage = {
                "promptTokenCount": spec.prompt_tokens,
                "candidatesTokenCount": output,
                "totalTokenCount": spec.prompt_tokens + output + thoughts,
            }
            if thoughts:
                usage["thoughtsTokenCount"] = thoughts
            if spec.cached_tokens:
                usage["cachedContentTokenCount"] = spec.cached_tokens
        chunks.append(
            {
                "candidates": [candidate],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": rid,
            }
        )
    return chunks


def whole_answer(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """One GenerateContentResponse: the chunks' parts joined (adjacent texts merged)."""
    parts: list[dict[str, Any]] = []
    for chunk in chunks:
        for part in chunk["candidates"][0]["content"]["parts"]:
            last = parts[-1] if parts else None
            plain = set(part) == {"text"}
            if last is not None and plain and set(last) == {"text"}:
                last["text"] += part["text"]
            else:
                parts.append(dict(part))
    final = chunks[-1]
    candidate = dict(final["candidates"][0]) | {"content": {"role": "model", "parts": parts}}
    return final | {"candidates": [candidate]}
