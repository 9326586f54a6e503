"""Providers' real limit signals, and a fake upstream that limits each API key on its own.

The signal builders return `Fault`s whose status, headers and body are those each provider
documents (or that were captured from it; see /work/shared/reference/provider-behaviour.md
§1 and the table in docs/configuration.md):

    fake.script(openai_quota())                       # 429 insufficient_quota
    fake.script(anthropic_unified_rejected(reset_in=7200))

`LimitedUpstream` is a `FakeUpstream` that keeps an account per presented key (Bearer,
x-api-key or x-goog-api-key), so a pool of keys can be tested:

    async with LimitedUpstream(provider="openai") as fake:
        fake.exhaust("sk-key-a", reset_in=3600)      # its quota answer until then
        fake.throttle("sk-key-b", wait=2)            # one throttle answer
        fake.revoke("sk-key-c")                      # 401 from now on
        fake.budget("sk-key-d", remaining=1, limit=100, reset_in=30)  # look-ahead headers
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

from aiohttp import web

from hydrallm.testing.faults import Fault
from hydrallm.testing.upstream import FakeUpstream

Provider = Literal["openai", "anthropic", "zai", "gemini", "bedrock"]
CHINA = timezone(timedelta(hours=8))


def _fault(kind: str, code: int, body: Any, headers: dict[str, str] | None = None) -> Fault:
    raw = json.dumps(body).encode()
    return Fault(kind=kind, status_code=code, body=raw, headers=tuple((headers or {}).items()))


def go_duration(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1s", "6m0s"."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    minutes, secs = divmod(whole, 60)
    frac = seconds - whole
    tail = f"{secs + frac:g}s" if frac else f"{secs}s"
    return f"{minutes}m{tail}" if minutes else tail


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- OpenAI


def openai_budget(remaining: int, limit: int, reset_in: float) -> dict[str, str]:
    """x-ratelimit-* request headers, as on every OpenAI answer."""
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": go_duration(reset_in),
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149000",
        "x-ratelimit-reset-tokens": "6ms",
    }


def openai_throttle(wait: float, limit: int = 3) -> Fault:
    body = {
        "error": {
            "message": f"Rate limit reached for gpt-4o-mini in organization org-fake on requests"
            f" per min (RPM): Limit {limit}, Used {limit}, Requested 1. Please try again in"
            f" {go_duration(wait)}. Visit https://platform.openai.com/account/rate-limits to"
            " learn more.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    return _fault("openai_throttle", 429, body, openai_budget(0, limit, wait))


def openai_quota() -> Fault:
    body = {
        "error": {
            "message": "You exceeded your current quota, please check your plan and billing"
            " details. For more information on this error, read the docs:"
            " https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    return _fault("openai_quota", 429, body)


def openai_invalid() -> Fault:
    body = {
        "error": {
            "message": "Incorrect API key provided: sk-****. You can find your API key at"
            " https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    return _fault("openai_invalid", 401, body)


# --------------------------------------------------------------------------- Anthropic


def _anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}


def anthropic_budget(remaining: int, limit: int, reset_at: float) -> dict[str, str]:
    return {
        "anthropic-ratelimit-requests-limit": str(limit),
        "anthropic-ratelimit-requests-remaining": str(remaining),
        "anthropic-ratelimit-requests-reset": rfc3339(reset_at),
    }


def anthropic_throttle(wait: float, now: float | None = None) -> Fault:
    now = time.time() if now is None else now
    headers = {"retry-after": str(max(1, math.ceil(wait))), **anthropic_budget(0, 50, now + wait)}
    body = _anthropic_error(
        "rate_limit_error",
        "This request would exceed your account's rate limit. Please try again later.",
    )
    return _fault("anthropic_throttle", 429, body, headers)


def anthropic_unified_rejected(reset_in: float, now: float | None = None) -> Fault:
    """A subscription's 5-hour window spent (undocumented unified-* headers, as captured)."""
    now = time.time() if now is None else now
    # Whole seconds, rounded up: a reset the provider states is never before the real one.
    reset = str(math.ceil(now + reset_in))
    headers = {
        "retry-after": str(math.ceil(reset_in)),
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-reset": reset,
        "anthropic-ratelimit-unified-5h-status": "rejected",
        "anthropic-ratelimit-unified-5h-reset": reset,
        "anthropic-ratelimit-unified-5h-utilization": "1.02",
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-7d-utilization": "0.41",
    }
    return _fault(
        "anthropic_unified", 429, _anthropic_error("rate_limit_error", "Rate limited"), headers
    )


def anthropic_invalid() -> Fault:
    body = _anthropic_error("authentication_error", "invalid x-api-key")
    return _fault("anthropic_invalid", 401, body)


def anthropic_billing() -> Fault:
    body = _anthropic_error("billing_error", "Your credit balance is too low.")
    return _fault("anthropic_billing", 402, body)


# --------------------------------------------------------------------------- z.ai, Gemini, Bedrock


def zai_usage_limit(reset_in: float, now: float | None = None) -> Fault:
    """Coding-plan 5-hour window (code 1308); the reset is China time with no offset."""
    now = time.time() if now is None else now
    at = datetime.fromtimestamp(math.ceil(now + reset_in), CHINA).strftime("%Y-%m-%d %H:%M:%S")
    body = {
        "error": {
            "code": "1308",
            "message": f"Usage limit reached for 5 hour. Your limit will reset at {at}",
        }
    }
    return _fault("zai_1308", 429, body)


def zai_concurrency() -> Fault:
    body = {
        "error": {
            "code": "1302",
            "message": "High concurrency usage of this API, please reduce concurrency or"
            " contact customer service to increase limits",
        }
    }
    return _fault("zai_1302", 429, body)


def _gemini_quota(kind: str, violation: dict[str, str], *details: dict[str, str]) -> Fault:
    """Gemini's 429 RESOURCE_EXHAUSTED: the quota that ran out, and any further details."""
    quota = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]}
    body = {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing"
            " details.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [quota, *details],
        }
    }
    return _fault(kind, 429, body)


def gemini_throttle(delay: float) -> Fault:
    return _gemini_quota(
        "gemini_throttle",
        {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay:g}s"},
    )


def gemini_daily() -> Fault:
    return _gemini_quota(
        "gemini_daily", {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}
    )


def _bedrock(kind: str, code: int, name: str, message: str) -> Fault:
    headers = {"x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    return _fault(kind, code, {"message": message}, headers)


def bedrock_throttle() -> Fault:
    return _bedrock(
        "bedrock_throttle",
        429,
        "ThrottlingException",
        "Too many tokens, please wait before trying again.",
    )


def bedrock_quota() -> Fault:
    return _bedrock(
        "bedrock_quota",
        400,
        "ServiceQuotaExceededException",
        "Your request exceeds the service quota for your account. You can view your quotas"
        " with Service Quotas. You can resubmit your request later.",
    )


# --------------------------------------------------------------------------- keyed fake


@dataclass(slots=True)
class _Account:
    exhausted_until: float = 0.0
    throttles: list[float] = field(default_factory=list)
    revoked: bool = False
    remaining: int | None = None
    limit: int = 0
    reset_at: float = 0.0
    allowance: int | None = None  # normal answers left before the quota runs out
    window: float = 0.0  # ... and how long it then stays out


def presented_key(request: web.BaseRequest) -> str:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key") or request.headers.get("x-goog-api-key") or ""


class LimitedUpstream(FakeUpstream):
    """A fake upstream whose limits are per presented API key, with `provider`'s signals."""

    def __init__(
        self, *, provider: Provider = "openai", wall: Callable[[], float] = time.time, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.provider = provider
        self._wall = wall
        self._accounts: dict[str, _Account] = {}
        self.served: Counter[str] = Counter()  # answered normally, by key
        self.asked: Counter[str] = Counter()  # every request, by key

    def _account(self, key: str) -> _Account:
        return self._accounts.setdefault(key, _Account())

    def exhaust(self, key: str, reset_in: float) -> None:
        self._account(key).exhausted_until = self._wall() + reset_in

    def throttle(self, key: str, wait: float, times: int = 1) -> None:
        self._account(key).throttles.extend([wait] * times)

    def revoke(self, key: str) -> None:
        self._account(key).revoked = True

    def allow(self, key: str, requests: int, then_exhausted_for: float) -> None:
        """A subscription window: `requests` normal answers, then the quota answer for
        `then_exhausted_for` seconds."""
        account = self._account(key)
        account.allowance, account.window = requests, then_exhausted_for

    def budget(self, key: str, *, remaining: int, limit: int, reset_in: float) -> None:
        """Requests left in this key's window: each answer shows the count; at 0 until the
        reset it answers with the provider's throttle."""
        account = self._account(key)
        account.remaining, account.limit = remaining, limit
        account.reset_at = self._wall() + reset_in

    def signal_for(self, key: str) -> Fault | None:
        """The limit answer this key gets now, or None for a normal answer."""
        account, now = self._account(key), self._wall()
        if account.revoked:
            return anthropic_invalid() if self.provider == "anthropic" else openai_invalid()
        if now < account.exhausted_until:
            return self._quota(account.exhausted_until - now, now)
        if account.throttles:
            return self._throttle(account.throttles.pop(0), now)
        if account.allowance is not None:
            if account.allowance <= 0:
                account.allowance = None
                account.exhausted_until = now + account.window
                return self._quota(account.window, now)
            account.allowance -= 1
        if account.remaining is not None:
            if now >= account.reset_at:
                account.remaining = account.limit
            if account.remaining <= 0:
                return self._throttle(account.reset_at - now, now)
            account.remaining -= 1
            reset = account.reset_at - now
            if self.provider == "anthropic":
                headers = anthropic_budget(account.remaining, account.limit, account.reset_at)
            else:
                headers = openai_budget(account.remaining, account.limit, reset)
            return Fault(kind="ok", headers=tuple(headers.items()))
        return None

    def _quota(self, reset_in: float, now: float) -> Fault:
        if self.provider == "anthropic":
            return anthropic_unified_rejected(reset_in, now)
        if self.provider == "zai":
            return zai_usage_limit(reset_in, now)
        if self.provider == "gemini":
            return gemini_daily()
        if self.provider == "bedrock":
            return bedrock_quota()
        return openai_quota()

    def _throttle(self, wait: float, now: float) -> Fault:
        if self.provider == "anthropic":
            return anthropic_throttle(wait, now)
        if self.provider == "zai":
            return zai_concurrency()
        if self.provider == "gemini":
            return gemini_throttle(wait)
        if self.provider == "bedrock":
            return bedrock_throttle()
        return openai_throttle(wait)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        key = presented_key(request)
        self.asked[key] += 1
        signal = self.signal_for(key)
        if signal is not None and signal.kind != "ok":
            self._script.appendleft(signal)
        elif signal is not None:  # a normal answer that carries budget headers
            base = self._script.popleft() if self._script else self.default
            self._script.appendleft(replace(base, headers=base.headers + signal.headers))
        before = len(self.requests)
        response = await super()._handle(request)
        fault = self.requests[before].fault
        if fault.status_code < 400 and fault.reset is None and not fault.hang:
            self.served[key] += 1
        return response
