"""Translation between API families (issue 16), pure and sans-IO.

    t = translator_for("anthropic", "gemini")      # client API, upstream API
    call = t.request(client_body_dict, "gemini-2.5-flash")
    # POST endpoint.url + call.path (+ "?" + call.query), JSON body call.body
    client_bytes = t.response(upstream_json_bytes)  # 2xx JSON answer
    s = t.stream()                                  # 2xx SSE answer
    out = s.feed(chunk) ... + s.close()             # client SSE bytes
    err = t.error(status, upstream_error_bytes)     # non-2xx answer

One `Translator` serves one request: it keeps what the answer's translation needs to
know about the request (whether the client wants reasoning, stream usage, ...).

This module holds only what routing asks of every request (which API a path speaks, how a
model serves it) and the exceptions: the translators themselves (`translator.py`, the IR,
each family's converters) load when first asked for, as `translator_for` here, so a proxy
whose chains stay within one family never loads them (issue 19: start within 300 ms).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from hydrallm.formats.translate.errors import (
        ClientError,
        UpstreamError,
        read_error,
        retry_delay,
    )
    from hydrallm.formats.translate.translator import (
        StreamTranslator,
        Translator,
        UpstreamCall,
        translator_for,
    )

Json = dict[str, Any]
ClientApi = Literal["anthropic", "chat", "responses"]
UpstreamApi = Literal["anthropic", "chat", "gemini"]
CLIENT_APIS: tuple[ClientApi, ...] = ("anthropic", "chat", "responses")
UPSTREAM_APIS: tuple[UpstreamApi, ...] = ("anthropic", "chat", "gemini")

__all__ = [
    "CLIENT_APIS",
    "UPSTREAM_APIS",
    "BadRequest",
    "ClientApi",
    "ClientError",
    "Json",
    "MalformedUpstream",
    "StreamTranslator",
    "Translator",
    "Untranslatable",
    "UpstreamApi",
    "UpstreamCall",
    "UpstreamError",
    "client_api_for_path",
    "read_error",
    "retry_delay",
    "translator_for",
    "upstream_api",
]

# Names loaded at their first use (PEP 562 `__getattr__`), by the module that defines them.
_LAZY = {
    "ClientError": "errors",
    "UpstreamError": "errors",
    "read_error": "errors",
    "retry_delay": "errors",
    "StreamTranslator": "translator",
    "Translator": "translator",
    "UpstreamCall": "translator",
    "translator_for": "translator",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


class Untranslatable(Exception):
    """The request uses a feature the target family lacks and that changes the answer.

    The engine skips the model for this request and logs `str(exc)`.
    """


class BadRequest(ValueError):
    """The client's body is malformed for its own API (answered 400 in its format)."""


class MalformedUpstream(ValueError):
    """The upstream's 2xx answer or stream event is not shaped as its API's."""


def client_api_for_path(path: str) -> ClientApi | None:
    """The client API a request path speaks, or None (count_tokens, models, ...)."""
    bare = path.split("?", 1)[0].rstrip("/")
    if bare.endswith("/messages"):
        return "anthropic"
    if bare.endswith("/chat/completions"):
        return "chat"
    if bare.endswith("/responses"):
        return "responses"
    return None


def upstream_api(
    client: ClientApi, model_type: str, openai_api: str = "chat"
) -> UpstreamApi | Literal["native"] | None:
    """How a model of `model_type` serves a `client` request.

    "native": pass the body through (same family); an upstream API: translate to it;
    None: this model cannot serve the request (skip it with a log line).  Bedrock
    (Anthropic Messages on InvokeModel) is not translated here.
    """
    if model_type == "anthropic":
        return "native" if client == "anthropic" else "anthropic"
    if model_type == "openai":
        if client == "chat" or (client == "responses" and openai_api == "responses"):
            return "native"
        return "chat"
    if model_type == "gemini":
        return "gemini"
    return None
