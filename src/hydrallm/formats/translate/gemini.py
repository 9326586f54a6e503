"""Google Gemini `generateContent`: write requests, read responses and SSE streams.

Gemini is only ever an upstream here, so it has no request reader or answer writer.
"""

from __future__ import annotations

import json
import mimetypes
import re
from urllib.parse import quote

from hydrallm.formats.sse import SSEEvent
from hydrallm.formats.translate import ir
from hydrallm.formats.translate.ir import Json

# Replaying a function call without the signature Gemini gave it is refused by Gemini 3
# models; this documented sentinel skips the check (the original signature is lost
# when the conversation went through another family).
SKIP_SIGNATURE = "skip_thought_signature_validator"
EFFORT_BUDGET = {"minimal": 512, "low": 2048, "medium": 8192, "high": 24576}
_FILTERED = {
    "SAFETY",
    "RECITATION",
    "LANGUAGE",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
}
# google.rpc status names by HTTP status (what Gemini puts in error.status).
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_SAFE_ID = re.compile(r"[^A-Za-z0-9_-]")


def path(model: str, stream: bool) -> tuple[str, str]:
    """(path, query) of the call for `model`."""
    method = "streamGenerateContent" if stream else "generateContent"
    return f"/v1beta/models/{quote(model, safe='')}:{method}", "alt=sse" if stream else ""


def _image(image: ir.Image) -> Json:
    if image.url is not None:
        guessed = mimetypes.guess_type(image.url.split("?")[0])[0]
        return {"fileData": {"mimeType": guessed or "image/jpeg", "fileUri": image.url}}
    return {"inlineData": {"mimeType": image.media_type or "image/png", "data": image.data}}


def _result(part: ir.ToolResult) -> Json:
    text = ir.texts(part.content)
    return {"error": text} if part.is_error else {"result": text}


def prefill_body(body: Json, text: str) -> Json:
    """`body` (a built request) with `text` as a trailing model turn, the answer so far.

    Gemini models up to 3.5 Flash continue such a turn literally; later ones refuse it
    (400 `Requests ending with a model turn are not supported`): only offered when the
    endpoint says `prefill = "yes"`, and the refusal is then handled as any other.
    """
    contents = list(body.get("contents") or [])
    last = contents[-1] if contents else None
    if isinstance(last, dict) and last.get("role") == "model":
        # The client prefilled the answer itself: the model's text follows its prefill.
        contents[-1] = {**last, "parts": [*last.get("parts", []), {"text": text}]}
    else:
        contents.append({"role": "model", "parts": [{"text": text}]})
    return {**body, "contents": contents}


def build_request(request: ir.Request) -> Json:
    names = ir.tool_names(request.messages)
    contents: list[Json] = []
    for message in ir.merge_messages(request.messages):
        parts: list[Json] = []
        signed = False
        for part in message.parts:
            if isinstance(part, ir.Text):
                if part.text:
                    parts.append({"text": part.text})
            elif isinstance(part, ir.Image):
                parts.append(_image(part))
            elif isinstance(part, ir.ToolCall):
                call = {"name": part.name, "args": ir.arguments_object(part.arguments)}
                out: Json = {"functionCall": call}
                if not signed:
                    out["thoughtSignature"] = SKIP_SIGNATURE
                    signed = True
                parts.append(out)
            elif isinstance(part, ir.ToolResult):
                name = names.get(part.id, part.id)
                response = {"name": name, "response": _result(part)}
                parts.append({"functionResponse": response})
                parts.extend(_image(p) for p in part.content if isinstance(p, ir.Image))
        if parts:
            contents.append(
                {"role": "model" if message.role == "assistant" else "user", "parts": parts}
            )
    body: Json = {"contents": contents}
    if request.system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(request.system)}]}
    if request.tools:
        declarations = [
            {"name": t.name, "parametersJsonSchema": t.parameters}
            | ({"description": t.description} if t.description else {})
            for t in request.tools
        ]
        body["tools"] = [{"functionDeclarations": declarations}]
        calling: Json | None = None
        if request.tool_choice_is_name:
            calling = {"mode": "ANY", "allowedFunctionNames": [request.tool_choice]}
        elif request.tool_choice is not None:
            mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}.get(request.tool_choice)
            calling = {"mode": mode} if mode else None
        if calling is not None:
            body["toolConfig"] = {"functionCallingConfig": calling}
    config: Json = {}
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    for key, value in (
        ("temperature", request.temperature),
        ("topP", request.top_p),
        ("topK", request.top_k),
    ):
        if value is not None:
            config[key] = value
    if request.stop:
        config["stopSequences"] = request.stop
    if request.output is not None:
        config["responseMimeType"] = "application/json"
        if request.output.schema is not None:
            config["responseJsonSchema"] = request.output.schema
    budget = request.thinking_budget
    if budget is None and request.effort is not None:
        budget = EFFORT_BUDGET[request.effort]
    if budget is not None or request.wants_reasoning:
        thinking: Json = {"includeThoughts": request.wants_reasoning}
        if budget is not None:
            thinking["thinkingBudget"] = budget
        config["thinkingConfig"] = thinking
    if config:
        body["generationConfig"] = config
    return body


# --- responses ----------------------------------------------------------------------


def usage_in(raw: Json | None) -> ir.Usage:
    raw = raw or {}
    thoughts = int(raw.get("thoughtsTokenCount") or 0)
    return ir.Usage(
        int(raw.get("promptTokenCount") or 0),
        int(raw.get("candidatesTokenCount") or 0) + thoughts,
        int(raw.get("cachedContentTokenCount") or 0),
        0,
        thoughts,
    )


def call_id(response_id: str, index: int, given: object) -> str:
    """The call's id, or one made from the response id (the same in a stream and whole)."""
    if isinstance(given, str) and given:
        return given
    return f"call_{_SAFE_ID.sub('', response_id)[:24] or 'gemini'}_{index}"


class _Reader:
    """What one answer's chunks say so far; shared by whole answers and streams."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.calls = 0
        self.finish: str | None = None
        self.usage = ir.Usage()

    def chunk(self, data: Json) -> list[ir.Event]:
        out: list[ir.Event] = []
        if not self.id:
            self.id = str(data.get("responseId") or "")
            self.model = str(data.get("modelVersion") or "")
            out.append(ir.Start(self.id, self.model))
        if data.get("usageMetadata"):
            self.usage = usage_in(data["usageMetadata"])
        candidates = data.get("candidates") or []
        if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
            self.finish = "SAFETY"
        for candidate in candidates[:1]:
            for part in (candidate.get("content") or {}).get("parts") or []:
                if "functionCall" in part:
                    call = part["functionCall"] or {}
                    ident = call_id(self.id, self.calls, call.get("id"))
                    out.append(ir.ToolStart(self.calls, ident, str(call.get("name"))))
                    out.append(ir.ToolDelta(self.calls, ir.dumps(call.get("args") or {})))
                    self.calls += 1
                elif part.get("text"):
                    text = str(part["text"])
                    out.append(
                        ir.ThinkingDelta(text) if part.get("thought") else ir.TextDelta(text)
                    )
            if candidate.get("finishReason"):
                self.finish = str(candidate["finishReason"])
        return out

    def stop(self) -> ir.Stop:
        if self.finish == "MAX_TOKENS":
            return "length"
        if self.finish in _FILTERED:
            return "filter"
        return "tool" if self.calls else "end"


def parse_response(body: Json) -> ir.Response:
    reader = _Reader()
    acc = ir.Accumulator()
    for event in reader.chunk(body):
        acc.add(event)
    acc.add(ir.Finish(reader.stop(), reader.usage))
    return acc.response


def stream_error(data: Json) -> ir.StreamError:
    error = data.get("error") or {}
    code = error.get("code")
    status = code if isinstance(code, int) else 500
    return ir.StreamError(status, str(error.get("message", "upstream error")))


class Decoder:
    """Gemini `alt=sse` chunks (each a GenerateContentResponse) -> IR events."""

    def __init__(self) -> None:
        self._reader = _Reader()
        self._done = False

    def feed(self, event: SSEEvent) -> list[ir.Event]:
        try:
            data = json.loads(event.data)
        except ValueError:
            return []
        if isinstance(data, list) and len(data) == 1:
            data = data[0]  # errors sometimes arrive wrapped in a one-element array
        if not isinstance(data, dict) or self._done:
            return []
        if isinstance(data.get("error"), dict):
            return [stream_error(data)]
        out = self._reader.chunk(data)
        if self._reader.finish is not None:
            # The chunk with finishReason ends the answer (Gemini sends no [DONE]).
            self._done = True
            out.append(ir.Finish(self._reader.stop(), self._reader.usage))
        return out

    def close(self) -> list[ir.Event]:
        return []  # no finishReason: the stream was cut
