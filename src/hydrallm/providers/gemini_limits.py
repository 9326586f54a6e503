"""Limit rules of Google Gemini (its own API and its OpenAI-compatible endpoint).

429 `RESOURCE_EXHAUSTED` is both: a per-minute quota carries a google.rpc.RetryInfo detail
with `retryDelay` ("22s") and is a throttle; a per-day quota ("...PerDay..." quotaId, or no
RetryInfo and "exceeded your current quota") is exhausted until midnight Pacific.
Sources: ai.google.dev/gemini-api/docs/rate-limits, google-gemini/gemini-cli#8437,
/work/shared/reference/provider-behaviour.md §1.6.
"""

from __future__ import annotations

from hydrallm.providers.limitrules import LimitRules

RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
QUOTA_FAILURE_TYPE = "type.googleapis.com/google.rpc.QuotaFailure"
DAILY_QUOTA_MARK = "PerDay"

GEMINI_LIMITS = LimitRules(
    name="gemini",
    throttle_codes=frozenset({"RESOURCE_EXHAUSTED"}),
)
