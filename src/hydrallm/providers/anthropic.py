"""Anthropic Messages API."""

from __future__ import annotations

import json

from hydrallm.config import EndpointConfig
from hydrallm.providers.base import CREDENTIAL_HEADERS, ErrorBody, Provider
from hydrallm.providers.limitrules import BudgetHeader, LimitRules

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


# Anthropic (API keys): 429 `rate_limit_error` with `retry-after` (s) is a throttle; a spend
# cap adds error.details.error_code "enforced_spend_limit_reached"; 402 `billing_error`.
# 529 `overloaded_error` is the provider's capacity, not the key's.  Every response carries
# anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset},
# resets in RFC 3339.  Subscriptions add the undocumented anthropic-ratelimit-unified-*
# headers (status allowed|allowed_warning|rejected, reset in epoch seconds), read by
# `routing.limits`.  Sources: docs.anthropic.com/en/api/rate-limits and /en/api/errors,
# /work/shared/reference/provider-behaviour.md §1.3.
ANTHROPIC_LIMITS = LimitRules(
    name="anthropic",
    quota_codes=frozenset({"enforced_spend_limit_reached", "billing_error"}),
    throttle_codes=frozenset({"rate_limit_error"}),
    not_key_codes=frozenset({"overloaded_error"}),
    quota_statuses=frozenset({402}),
    budget_headers=tuple(
        BudgetHeader(
            f"anthropic-ratelimit-{kind}-remaining",
            f"anthropic-ratelimit-{kind}-reset",
            f"anthropic-ratelimit-{kind}-limit",
            "rfc3339",
        )
        for kind in ("requests", "tokens", "input-tokens", "output-tokens")
    ),
)
UNIFIED_PREFIX = "anthropic-ratelimit-unified-"
UNIFIED_WINDOWS = ("5h", "7d", "7d_oi")
