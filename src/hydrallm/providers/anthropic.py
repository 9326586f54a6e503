"""Anthropic Messages API."""

from __future__ import annotations

import json

from hydrallm.config import EndpointConfig
from hydrallm.providers.base import CREDENTIAL_HEADERS, ErrorBody, Provider

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(Provider):
    api_type = "anthropic"

    def auth_headers(self, endpoint: EndpointConfig, headers: list[tuple[str, str]]) -> None:
        key = endpoint.api_key
        if key is not None:
            headers[:] = [(k, v) for k, v in headers if k.lower() not in CREDENTIAL_HEADERS]
            if key != "-":
                headers.append(("x-api-key", key))
        if not any(k.lower() == "anthropic-version" for k, _ in headers):
            headers.append(("anthropic-version", ANTHROPIC_VERSION))

    def error_body(self, status: int, message: str, error_type: str) -> ErrorBody:
        payload = {"type": "error", "error": {"type": error_type, "message": message}}
        return ErrorBody("application/json", json.dumps(payload).encode())
