"""Cross-family attempts (issue 16): the request translated for the model, the answer back.

`translation_for()` decides, per attempt, whether a model serves the client's request as it
is (None: the byte-exact pass-through, nothing made), through a `Translated` (a translator
and the upstream request it made), or not at all (`RequestNotPossible`: skip the model).

`TranslatedResponse` wraps the upstream's 2xx answer and implements `upstream.Response`:
its body is the answer in the client's API, so the peek, relay and recovery read it with
the client's own wire format and never learn that a translation happened.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from hydrallm.config import ApiType, ModelConfig, PrefillFlag
from hydrallm.dataclass import dataclass
from hydrallm.errors import ProtocolError, RequestNotPossible, StreamFailure
from hydrallm.formats.body import parse_body
from hydrallm.formats.peek import StreamKind
from hydrallm.formats.prefill import auto_prefill, prefill_body
from hydrallm.formats.sse import SSEError

# Only the path and family tests and the exceptions: the translators load at the first
# translation (imported where they are used), so a one-family proxy never loads them.
from hydrallm.formats.translate import (
    BadRequest,
    ClientApi,
    MalformedUpstream,
    Untranslatable,
    client_api_for_path,
    upstream_api,
)
from hydrallm.providers.base import CREDENTIAL_HEADERS, ClientRequest
from hydrallm.proxy.upstream import Response, read_body

if TYPE_CHECKING:
    from hydrallm.formats.translate.errors import ClientError
    from hydrallm.formats.translate.errors import UpstreamError as StreamedError

# Client headers that belong to the client's API family: meaningless (or refused) upstream
# on another family, e.g. Claude Code's `anthropic-beta` on an OpenAI-compatible endpoint.
_FAMILY_HEADERS = {
    "anthropic": ("anthropic-",),
    "chat": ("openai-",),
    "responses": ("openai-",),
}
# Recomputed for the translated body; the body is sent uncompressed.
_DROPPED = frozenset({"content-type", "content-encoding", "content-length", "accept-encoding"})
_ANSWER_DROPPED = frozenset({"content-type", "content-encoding", "content-length"})
# Upper bound of a translated non-streaming answer read before commit; error bodies are
# inflated up to ERROR_BODY_LIMIT for their translation.
ERROR_BODY_LIMIT = 1024 * 1024
WHOLE_ANSWER_LIMIT = 64 * 1024 * 1024

# Bedrock-runtime paths (`/model/{id}/invoke...`, `/model/{id}/converse...`).
_BEDROCK_PATH = "/model/"


class AnswerStream(Protocol):
    finished: bool
    error: StreamedError | None

    def feed(self, data: bytes) -> bytes: ...
    def close(self) -> bytes: ...


class AnswerTranslator(Protocol):
    """What reads the upstream's answer back: `formats.translate.Translator` and Bedrock's."""

    def response(self, body: bytes) -> bytes: ...
    def stream(self) -> AnswerStream: ...
    def error(self, status: int, body: bytes) -> ClientError: ...


class BadTranslation(RequestNotPossible):
    """The client's body cannot be read as its API's request: the client gets a 400."""


@dataclass(slots=True)
class Translated:
    """One attempt's translation: what to send and how to read the answer."""

    translator: AnswerTranslator
    request: ClientRequest  # the upstream request, in the client request's shape
    client: ClientApi
    client_format_api: str  # the model type whose wire format the client's API is


@dataclass(slots=True)
class Continuation(ClientRequest):
    """Mid-stream recovery's request to a model of another family: the client's request,
    and the answer so far, appended as a trailing assistant turn in the TARGET's terms
    once translated (`prefill`, without trailing whitespace; `flag` the endpoint's
    continuation marker for chat).  A same-family target gets its prefill in the client's
    body instead, as ever."""

    prefill: str | None = None
    flag: PrefillFlag = "none"

    @classmethod
    def of(cls, request: ClientRequest, prefill: str, flag: PrefillFlag) -> Continuation:
        r = request
        return cls(r.method, r.path, r.query, r.headers, r.body, r.json, r.streaming, prefill, flag)


def same_terms(request: ClientRequest, model: ModelConfig) -> bool:
    """Does `model` take the client's body as it is (same family, or Claude on Bedrock)?"""
    client = client_api(request)
    return client is None or serves(client, model) in ("native", "bedrock")


def foreign_prefill(
    request: ClientRequest, model: ModelConfig, flag: PrefillFlag, model_name: Callable[[], str]
) -> bool | None:
    """`prefill = "auto"` on a model of another family than the client's: does it continue
    a prefill?  None when it is of the client's family (the client API's rules apply).

    Anthropic: unless the request it gets enables thinking; chat: with its endpoint's
    `prefill_flag`; Gemini: never (whether a trailing model turn is continued or refused
    depends on the model version); Responses is never translated to.
    """
    if same_terms(request, model):
        return None
    client = client_api(request)
    how = serves(client, model) if client is not None else None
    if how == "anthropic":
        try:
            made = translation_for(request, model, model_name)
            body = json.loads(made.request.body) if made is not None else None
        except (RequestNotPossible, ValueError):
            return False
        return auto_prefill(StreamKind.ANTHROPIC, "none", body if isinstance(body, dict) else None)
    return how == "chat" and flag != "none"


def client_api(request: ClientRequest) -> ClientApi | None:
    return client_api_for_path(request.path)


def client_type(path: str, listener_type: ApiType) -> ApiType:
    """The API type the client speaks, by its path (else the listener's first model's): its
    provider reads the requested model, and its error format is what the client reads."""
    client = client_api_for_path(path)
    if client is None:
        return listener_type
    return "anthropic" if client == "anthropic" else "openai"


def serves(client: ClientApi, model: ModelConfig) -> str | None:
    """ "native", "bedrock" (Anthropic Messages on InvokeModel), an upstream API to
    translate to, or None (cannot serve `client`)."""
    if model.type == "bedrock":
        return "bedrock" if client == "anthropic" else None
    return upstream_api(client, model.type, model.api)


def translation_for(
    request: ClientRequest, model: ModelConfig, model_name: Callable[[], str]
) -> Translated | None:
    """None for a pass-through; raises `RequestNotPossible` when the model cannot serve it.

    `model_name()` gives the model name to ask for (called only to translate).
    """
    path = request.path
    # The common same-family cases first, in a few string tests: the pass-through pays
    # nothing more for families (the path carries no query here).
    family = model.type
    if family == "openai":
        if path.endswith("/chat/completions") or (
            model.api == "responses" and path.endswith("/responses")
        ):
            return None
    elif family == "anthropic" and path.endswith("/messages"):
        return None
    client = client_api_for_path(path)
    if client is None:
        # Not a translatable API path (count_tokens, models, Bedrock-runtime, native Gemini):
        # passed through to a model that speaks it as before.
        if path.endswith("/messages/count_tokens") and family != "anthropic":
            # Anthropic's token count has no counterpart another family could answer.
            raise RequestNotPossible(f"a {family} model cannot count Anthropic tokens")
        if model.type != "bedrock" and request.path.startswith(_BEDROCK_PATH):
            raise RequestNotPossible(
                f"a {model.type} model cannot serve {request.path.split('?')[0][:80]}"
            )
        if model.type == "gemini" and ":" not in request.path:
            raise RequestNotPossible(f"a gemini model cannot serve {request.path[:80]}")
        return None
    if client == "anthropic" and model.type == "bedrock":
        return _on_bedrock(request, model_name())
    kind = upstream_api(client, model.type, model.api)
    if kind == "native":
        return None
    if kind is None:
        raise RequestNotPossible(f"a {model.type} model cannot serve the {client} API")
    from hydrallm.formats.translate.translator import translator_for

    translator = translator_for(client, kind)
    try:
        body = json.loads(request.body) if request.body else {}
        call = translator.request(body, model_name())
    except Untranslatable as exc:
        raise RequestNotPossible(f"not translatable to {kind}: {exc}") from exc
    except (BadRequest, ValueError) as exc:
        raise BadTranslation(str(exc)) from exc
    raw: bytes | None = None
    if isinstance(request, Continuation) and request.prefill:
        raw = _prefilled(kind, call.body, request.prefill, request.flag)
    if raw is None:
        raw = json.dumps(call.body, ensure_ascii=False, separators=(",", ":")).encode()
    prefixes = _FAMILY_HEADERS[client]
    kept = [
        (k, v)
        for k, v in request.headers
        if k.lower() not in _DROPPED and not k.lower().startswith(prefixes)
    ]
    headers = (*kept, ("Content-Type", "application/json"), ("Accept-Encoding", "identity"))
    upstream = ClientRequest(
        method="POST",
        path=call.path,
        query=call.query,
        headers=headers,
        body=raw,
        json=parse_body(raw) if kind != "gemini" else None,
        streaming=call.stream,
    )
    return Translated(
        translator, upstream, client, "anthropic" if client == "anthropic" else "openai"
    )


_PREFILL_KINDS = {"anthropic": StreamKind.ANTHROPIC, "chat": StreamKind.OPENAI_CHAT}


def _prefilled(kind: str, body: object, text: str, flag: PrefillFlag) -> bytes | None:
    """The translated `body` with the answer so far as its trailing assistant turn."""
    if not isinstance(body, dict):
        return None
    if kind == "gemini":
        from hydrallm.formats.translate import gemini

        out = gemini.prefill_body(body, text)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()
    return prefill_body(_PREFILL_KINDS[kind], body, text, flag)


def without_foreign_thinking(request: ClientRequest) -> ClientRequest:
    """An Anthropic request less the unsigned thinking blocks another family's answer put
    in its history (Anthropic refuses them); the request itself when it has none.

    Only called for configs that mix families, so a same-family proxy never pays for it.
    """
    raw = request.body
    if b'"thinking"' not in raw or request.json is None:
        return request
    try:
        body = json.loads(raw)
    except ValueError:
        return request
    from hydrallm.formats.translate import anthropic

    if not isinstance(body, dict) or not anthropic.strip_unsigned_thinking(body):
        return request
    fixed = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return replace(request, body=fixed, json=parse_body(fixed))


def _on_bedrock(request: ClientRequest, model_name: str) -> Translated:
    """Anthropic Messages as InvokeModel(WithResponseStream) on Bedrock."""
    from hydrallm.formats.translate import bedrock

    try:
        path, raw, stream = bedrock.request(json.loads(request.body or b"{}"), model_name)
    except (BadRequest, ValueError) as exc:
        raise BadTranslation(str(exc)) from exc
    kept = [
        (k, v)
        for k, v in request.headers
        if k.lower() not in _DROPPED
        and k.lower() not in CREDENTIAL_HEADERS
        and not k.lower().startswith("anthropic-")
    ]
    headers = (*kept, ("Content-Type", "application/json"), ("Accept-Encoding", "identity"))
    upstream = ClientRequest("POST", path, "", headers, raw, None, stream)
    return Translated(bedrock.BedrockTranslator(), upstream, "anthropic", "anthropic")


def answer_headers(response: Response, content_type: str) -> CIMultiDictProxy[str]:
    """The upstream's headers for the client, less those the translation changes."""
    headers: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in response.headers.items() if k.lower() not in _ANSWER_DROPPED
    )
    headers["Content-Type"] = content_type
    return CIMultiDictProxy(headers)


class TranslatedResponse:
    """The upstream's 2xx answer, read as the client's API would have sent it.

    Whole (`body` given): the translated answer, one chunk.  Stream: each upstream chunk
    through the `StreamTranslator`.  A stream that ends before its terminal event, an
    unreadable event, or (once committed) an in-stream error raise `UpstreamError`, which
    the relay treats as a break (so recovery may finish the answer).  Before commit the
    client-format error event is returned as bytes, for the peek to judge.
    """

    __slots__ = ("_body", "_done", "_stream", "_up", "committed", "headers", "reason", "status")

    def __init__(
        self,
        upstream: Response,
        *,
        stream: AnswerStream | None = None,
        body: bytes | None = None,
    ) -> None:
        self._up = upstream
        self._stream = stream
        self._body = body
        self._done = False
        self.committed = False  # set at commit: an in-stream error then raises
        self.status = upstream.status
        self.reason = upstream.reason
        kind = "text/event-stream" if stream is not None else "application/json"
        self.headers = answer_headers(upstream, kind)

    async def read_chunk(self) -> bytes:
        if self._body is not None:
            body, self._body = self._body, None
            return body
        stream = self._stream
        if stream is None or self._done:
            return b""
        while True:
            chunk = await self._up.read_chunk()
            try:
                out = stream.feed(chunk) if chunk else stream.close()
            except (MalformedUpstream, SSEError, ValueError) as exc:
                raise ProtocolError(f"upstream stream unreadable: {exc}") from exc
            if stream.error is not None:
                if self.committed or not out:
                    raise StreamFailure(f"in-stream error: {stream.error.message}")
                self._done = True
                return out
            if not chunk:
                self._done = True
                if not stream.finished:
                    raise ProtocolError("upstream body broken: the stream ended before its end")
                return out
            if stream.finished:
                self._done = True  # the rest (a trailing [DONE], ...) means nothing here
                return out
            if out:
                return out

    def release(self) -> None:
        self._up.release()

    def abort(self) -> None:
        self._up.abort()


async def translate_answer(response: Response, translated: Translated) -> TranslatedResponse:
    """The upstream's 2xx answer as a response in the client's API."""
    translator = translated.translator
    if translated.request.streaming:
        return TranslatedResponse(response, stream=translator.stream())
    body = await read_body(response, WHOLE_ANSWER_LIMIT)
    try:
        answer = translator.response(body)
    except ValueError as exc:
        raise ProtocolError(f"upstream answer unreadable: {exc}") from exc
    return TranslatedResponse(response, body=answer)


def as_client_error(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    translated: Translated,
    encoding: str,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """An upstream error answer (status, headers, body) in the client's error format."""
    if encoding.strip().lower() not in ("", "identity"):
        try:
            body = zlib.decompressobj(wbits=47).decompress(body, ERROR_BODY_LIMIT)
        except zlib.error:
            body = b""
    err = translated.translator.error(status, body)
    dropped = {"content-type", "content-encoding", "content-length"}
    dropped.update(k.lower() for k, _ in err.headers)
    kept = [(k, v) for k, v in headers if k.lower() not in dropped]
    return err.status, [("Content-Type", err.content_type), *kept, *err.headers], err.body
