"""The provider seam: what differs between OpenAI-compatible, Anthropic and Bedrock APIs."""

from __future__ import annotations

import json

from hydrallm.config import Config, EndpointConfig, ModelConfig
from hydrallm.dataclass import dataclass
from hydrallm.formats.body import JsonBody
from hydrallm.observe.events import Telemetry
from hydrallm.providers.urls import join

# Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the ones
# the proxy sets itself for the upstream.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",  # the proxy buffers the body; the upstream gets it whole
    }
)
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key"})


# Not frozen: a frozen slots dataclass sets each field through object.__setattr__,
# about 0.15 µs a field on every request.  Treated as immutable all the same.
@dataclass(slots=True)
class ClientRequest:
    """The client's request as the engine sees it: read once, shared by every attempt."""

    method: str
    path: str  # raw, percent-encoded, already checked by urls.check_path
    query: str  # raw query string without "?"
    headers: tuple[tuple[str, str], ...]  # client headers less hop-by-hop (original case)
    body: bytes
    json: JsonBody | None
    streaming: bool

    @property
    def requested_model(self) -> str | None:
        return self.json.requested_model if self.json is not None else None


# Not frozen: a frozen slots dataclass sets each field through object.__setattr__,
# about 0.15 µs a field on every request.  Treated as immutable all the same.
@dataclass(slots=True)
class Outgoing:
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    model_label: str  # the model actually asked for (after "*" resolution)


@dataclass(frozen=True, slots=True)
class ErrorBody:
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def without(headers: tuple[tuple[str, str], ...], names: frozenset[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in names]


class Provider:
    """Base: OpenAI-style defaults.  Subclasses override what differs."""

    api_type = "openai"
    # A stream broken after commit may be finished on another model of this API type
    # (mid-stream recovery re-sends the request to it, prefilled or from the start).
    supports_recovery = True

    def configure(self, config: Config, telemetry: Telemetry) -> None:
        """Called once per config generation (bedrock resolves credentials here)."""
        return None

    def requested_model(self, request: ClientRequest) -> str | None:
        """The model the client asked for (routes match on it; `*` forwards it)."""
        return request.requested_model

    def effective_model(self, model: ModelConfig, request: ClientRequest) -> str | None:
        """The model name this attempt asks for; None when `*` has nothing to forward."""
        if model.model == "*":
            return self.requested_model(request)
        return model.model

    def body_for(self, model_name: str, request: ClientRequest) -> bytes:
        if request.json is None:
            return request.body
        if request.json.requested_model == model_name and request.json.model_spans:
            return request.body
        return request.json.with_model(model_name)

    def auth_headers(self, endpoint: EndpointConfig, headers: list[tuple[str, str]]) -> None:
        """Apply the endpoint's credentials to the outgoing headers, in place."""
        key = endpoint.api_key
        if key is None:
            return
        headers[:] = [(k, v) for k, v in headers if k.lower() not in CREDENTIAL_HEADERS]
        if key != "-":
            headers.append(("Authorization", f"Bearer {key}"))

    async def prepare(
        self, model: ModelConfig, endpoint: EndpointConfig, request: ClientRequest
    ) -> Outgoing:
        name = self.effective_model(model, request) or ""
        headers = list(request.headers)
        self.auth_headers(endpoint, headers)
        url = join(
            endpoint.url,
            request.path,
            request.query,
            strip_version_prefix=endpoint.strip_version_prefix,
        )
        return Outgoing(url, headers, self.body_for(name, request), name)

    def error_body(self, status: int, message: str, error_type: str) -> ErrorBody:
        payload = {"error": {"message": message, "type": error_type, "code": status}}
        return ErrorBody("application/json", json.dumps(payload).encode())
