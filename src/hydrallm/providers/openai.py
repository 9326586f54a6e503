"""OpenAI-compatible APIs (chat completions, Responses, embeddings, ...)."""

from __future__ import annotations

from hydrallm.providers.base import Provider
from hydrallm.providers.limitrules import BudgetHeader, LimitRules


class OpenAIProvider(Provider):
    api_type = "openai"


# OpenAI: 429 `rate_limit_exceeded` is a throttle; `insufficient_quota` and the spend-limit
# codes never clear by waiting.  Every response carries x-ratelimit-{limit,remaining,reset}-
# {requests,tokens}; resets are Go-style durations ("1s", "6m0s", "12ms").  Sources:
# platform.openai.com/docs/guides/rate-limits, error-codes guide, community.openai.com
# t/1268905 (header capture), /work/shared/reference/provider-behaviour.md §1.2.
OPENAI_LIMITS = LimitRules(
    name="openai",
    quota_codes=frozenset(
        {
            "insufficient_quota",
            "credit_balance_exhausted",
            "organization_spend_limit_exceeded",
            "project_spend_limit_exceeded",
            "organization_usage_limit_exceeded",
        }
    ),
    throttle_codes=frozenset({"rate_limit_exceeded", "slow_down"}),
    quota_statuses=frozenset({402}),  # OpenRouter, DeepSeek: credits / balance spent
    budget_headers=(
        BudgetHeader(
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-requests",
            "duration",
        ),
        BudgetHeader(
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
            "x-ratelimit-limit-tokens",
            "duration",
        ),
    ),
    message_wait=r"(?i)try again in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)",
)
