"""Google Gemini (`generateContent`): the model lives in the path, the key in a header.

The body the engine hands over is already a Gemini body (see `formats/translate`):
`prepare` only builds the URL for the attempt's model, streaming or not, and sets
`x-goog-api-key`.  Client credentials meant for the proxy are never forwarded.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

from hydrallm.config import GEMINI_URL, EndpointConfig, ModelConfig
from hydrallm.errors import RequestNotPossible
from hydrallm.formats.translate import gemini as wire
from hydrallm.formats.translate.errors import retry_delay
from hydrallm.providers.base import CREDENTIAL_HEADERS, ClientRequest, ErrorBody, Outgoing, Provider
from hydrallm.providers.urls import join

KEY_HEADER = "x-goog-api-key"
_CREDENTIALS = CREDENTIAL_HEADERS | {KEY_HEADER}
_MODEL_PATH = re.compile(r".*/models/(?P<model>[^/:]+):(?:stream)?[gG]enerateContent")


def path_model(path: str) -> str | None:
    """The model a native Gemini path names (`/v1beta/models/{model}:generateContent`)."""
    match = _MODEL_PATH.fullmatch(path)
    return unquote(match.group("model")) if match else None


def retry_after(body: bytes) -> float | None:
    """Seconds Gemini asks to wait (its 429 has no Retry-After header, only RetryInfo)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return retry_delay(error.get("details")) if isinstance(error, dict) else None


class GeminiProvider(Provider):
    api_type = "gemini"

    def requested_model(self, request: ClientRequest) -> str | None:
        return path_model(request.path) or request.requested_model

    def auth_headers(self, endpoint: EndpointConfig, headers: list[tuple[str, str]]) -> None:
        key = endpoint.api_key
        if key is None:
            return
        headers[:] = [(k, v) for k, v in headers if k.lower() not in _CREDENTIALS]
        if key != "-":
            headers.append((KEY_HEADER, key))

    async def prepare(
        self, model: ModelConfig, endpoint: EndpointConfig, request: ClientRequest
    ) -> Outgoing:
        name = self.effective_model(model, request)
        if not name:
            raise RequestNotPossible('the request names no model to forward for model "*"')
        headers = list(request.headers)
        self.auth_headers(endpoint, headers)
        if path_model(request.path) is not None:
            # A native Gemini client: its own method (`:streamGenerateContent` streams even
            # without `stream` in the body) and its own query (`alt=sse`), for our model.
            path, _ = wire.path(name, ":streamGenerateContent" in request.path)
            query = request.query
        else:
            # A translated request: the query a client sent for its own API (`?beta=true`
            # from Claude Code) means nothing here, and Google APIs refuse unknown ones.
            path, query = wire.path(name, request.streaming)
        # An endpoint URL may carry a query (`?key=...`, Gemini's other key style): it
        # stays, before the call's own.
        base, _, kept = (endpoint.url or GEMINI_URL).partition("?")
        query = "&".join(q for q in (kept, query) if q)
        url = join(base, path, query, strip_version_prefix=endpoint.strip_version_prefix)
        return Outgoing(url, headers, request.body, name)

    def error_body(self, status: int, message: str, error_type: str) -> ErrorBody:
        code = wire.STATUS_NAMES.get(status, "INVALID_ARGUMENT" if status < 500 else "INTERNAL")
        payload = {"error": {"code": status, "message": message, "status": code}}
        return ErrorBody("application/json", json.dumps(payload).encode())
