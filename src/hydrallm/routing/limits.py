"""What a limit answer says about the key that got it: throttle, exhausted quota, invalid.

Pure: status, a header getter, the body and the wall clock in; a `Limit` out.  The rules
per provider are data (`providers.*_LIMITS`); every rule set is consulted for every
answer, because compatible endpoints (z.ai, Gemini, OpenRouter, DeepSeek) speak through
the `openai` and `anthropic` types and their codes do not collide.

`budget()` reads the remaining-count headers of any answer (a success too), so that a key
known to be at 0 until a reset is skipped without spending a request on it (look-ahead).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Final

from hydrallm.config import Config
from hydrallm.dataclass import dataclass
from hydrallm.providers.anthropic import ANTHROPIC_LIMITS, UNIFIED_PREFIX, UNIFIED_WINDOWS
from hydrallm.providers.bedrock_limits import BEDROCK_LIMITS
from hydrallm.providers.gemini_limits import (
    DAILY_QUOTA_MARK,
    GEMINI_LIMITS,
    QUOTA_FAILURE_TYPE,
    RETRY_INFO_TYPE,
)
from hydrallm.providers.limitrules import BudgetHeader, LimitRules, ResetFormat
from hydrallm.providers.openai import OPENAI_LIMITS
from hydrallm.providers.zai import ZAI_LIMITS
from hydrallm.routing.outcome import parse_retry_after

RULES: Final = (OPENAI_LIMITS, ANTHROPIC_LIMITS, ZAI_LIMITS, GEMINI_LIMITS, BEDROCK_LIMITS)
LIMIT_STATUSES: Final = frozenset({401, 402, 403, 429, 503, 529, 400})
BODY_LIMIT: Final = 64 * 1024  # error bodies are small; never parse more than this
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNITS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

Headers = Callable[[str], str | None]


class Kind(Enum):
    NONE = "none"  # not about this key: handled as any other status
    THROTTLE = "throttle"  # short: the same key works again after `wait`
    QUOTA = "quota"  # the key's window or balance is spent until `wait` (or unknown)
    INVALID = "invalid"  # the key is refused (401/403)


@dataclass(frozen=True, slots=True)
class Limit:
    kind: Kind
    wait: float | None = None  # seconds until the key may be asked again; None: not stated
    reason: str = ""  # a short code for logs ("insufficient_quota", "1308", "retry-after")


NOT_A_LIMIT: Final = Limit(Kind.NONE)


@dataclass(frozen=True, slots=True)
class Policy:
    max_retry_after: float = 10.0
    quota_threshold: float = 600.0
    quota_duration: float = 900.0

    @classmethod
    def of(cls, config: Config) -> Policy:
        return cls(
            config.retry.max_retry_after,
            config.retry.quota_threshold,
            config.cooldown.quota_duration,
        )


@dataclass(frozen=True, slots=True)
class Budget:
    """What an answer's headers say about the key's budget."""

    fraction: float | None  # the smallest remaining/limit share; None: not stated
    empty_for: float | None  # a count is at 0 until this many seconds from now


# --------------------------------------------------------------------------- time formats


def parse_duration(text: str) -> float | None:
    """Go-style durations as OpenAI and Gemini write them: "6m0s", "1s", "20ms", "22.5s"."""
    text = text.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        try:
            return max(0.0, float(text)) if pos == 0 else None  # a bare number: seconds
        except ValueError:
            return None
    return total


def seconds_until(value: str, fmt: ResetFormat, now: float) -> float | None:
    """A reset header's value as seconds from `now` (wall clock, epoch seconds)."""
    value = value.strip()
    if fmt == "duration":
        return parse_duration(value)
    try:
        if fmt == "epoch":
            return max(0.0, float(value) - now)
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def wall_time_in_message(text: str, rules: LimitRules, now: float) -> float | None:
    if rules.message_reset is None:
        return None
    match = re.search(rules.message_reset, text)
    if match is None:
        return None
    try:
        local = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    zone = timezone(timedelta(hours=rules.message_reset_utc_offset))
    return max(0.0, local.replace(tzinfo=zone).timestamp() - now)


# --------------------------------------------------------------------------- bodies


@dataclass(slots=True)
class _Error:
    codes: set[str]
    message: str
    details: list[object]


def _error_of(body: bytes, headers: Headers) -> _Error:
    found = _Error(set(), "", [])
    kind = headers("x-amzn-errortype")
    if kind:
        found.codes.add(kind.split(":", 1)[0].strip())
    try:
        data: object = json.loads(body[:BODY_LIMIT]) if body else None
    except (ValueError, UnicodeDecodeError):
        found.message = body[:4096].decode("utf-8", "replace")
        return found
    if isinstance(data, list) and data:  # Gemini's OpenAI-compatible endpoint wraps errors
        data = data[0]
    if not isinstance(data, dict):
        return found
    for key in ("__type", "code"):
        value = data.get(key)
        if isinstance(value, str):
            found.codes.add(value.rsplit("#", 1)[-1])
    error = data.get("error", data)
    if isinstance(error, dict):
        for key in ("code", "type", "status"):
            value = error.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                found.codes.add(str(value))
        message = error.get("message", data.get("message"))
        if isinstance(message, str):
            found.message = message
        details = error.get("details")
        if isinstance(details, dict):
            code = details.get("error_code")
            if isinstance(code, str):
                found.codes.add(code)
        elif isinstance(details, list):
            found.details = details
    elif isinstance(data.get("message"), str):
        found.message = str(data["message"])
    # z.ai's Anthropic route once wrote "[1308][...]" into the message only.
    bracket = re.match(r"\[(\d{4})\]", found.message)
    if bracket:
        found.codes.add(bracket.group(1))
    return found


def _gemini(error: _Error) -> tuple[float | None, bool]:
    """(retryDelay seconds, daily quota) from a RESOURCE_EXHAUSTED error's details."""
    delay: float | None = None
    daily = False
    for item in error.details:
        if not isinstance(item, dict):
            continue
        if item.get("@type") == RETRY_INFO_TYPE and isinstance(item.get("retryDelay"), str):
            delay = parse_duration(str(item["retryDelay"]))
        if item.get("@type") == QUOTA_FAILURE_TYPE:
            daily = daily or DAILY_QUOTA_MARK in json.dumps(item.get("violations"))
    return delay, daily


# --------------------------------------------------------------------------- classify


def _unified_rejected(headers: Headers, now: float) -> tuple[bool, float | None]:
    """Whether an Anthropic subscription window is rejected, and the seconds until it resets
    (the latest of the rejected windows; None when no reset is given)."""
    if (headers(UNIFIED_PREFIX + "status") or "").strip() != "rejected":
        return False, None
    resets: list[float] = []
    for window in UNIFIED_WINDOWS:
        if (headers(f"{UNIFIED_PREFIX}{window}-status") or "").strip() == "rejected":
            value = headers(f"{UNIFIED_PREFIX}{window}-reset")
            seconds = seconds_until(value, "epoch", now) if value else None
            if seconds is not None:
                resets.append(seconds)
    if not resets:
        value = headers(UNIFIED_PREFIX + "reset")
        seconds = seconds_until(value, "epoch", now) if value else None
        if seconds is not None:
            resets.append(seconds)
    return True, (max(resets) if resets else None)


BUDGET_HEADERS: Final[tuple[BudgetHeader, ...]] = tuple(
    spec for rules in RULES for spec in rules.budget_headers
)


def budget(headers: Headers, now: float) -> Budget:
    """The remaining share and the time a count stays at 0, from any answer's headers."""
    fraction: float | None = None
    empty_for: float | None = None
    for spec in BUDGET_HEADERS:
        remaining = headers(spec.remaining)
        if remaining is None:
            continue
        try:
            left = float(remaining)
        except ValueError:
            continue
        limit_text = headers(spec.limit) if spec.limit else None
        try:
            limit = float(limit_text) if limit_text else 0.0
        except ValueError:
            limit = 0.0
        if limit > 0:
            share = max(0.0, min(1.0, left / limit))
            fraction = share if fraction is None else min(fraction, share)
        if left <= 0:
            reset = headers(spec.reset)
            wait = seconds_until(reset, spec.format, now) if reset else None
            if wait is not None:
                empty_for = wait if empty_for is None else max(empty_for, wait)
    for window in UNIFIED_WINDOWS:  # a subscription's used share of each window
        used = headers(f"{UNIFIED_PREFIX}{window}-utilization")
        if used:
            try:
                share = max(0.0, min(1.0, 1.0 - float(used)))
            except ValueError:
                continue
            fraction = share if fraction is None else min(fraction, share)
    return Budget(fraction, empty_for)


def classify(status: int, headers: Headers, body: bytes, now: float, policy: Policy) -> Limit:
    """What a non-2xx answer says about the key that was used for it."""
    if status not in LIMIT_STATUSES:
        return NOT_A_LIMIT
    if status in (401, 403):
        return Limit(Kind.INVALID, None, str(status))
    error = _error_of(body, headers)
    if any(code in rules.not_key_codes for rules in RULES for code in error.codes):
        return NOT_A_LIMIT
    after = parse_retry_after(headers, now=lambda: now)
    rejected, reset = _unified_rejected(headers, now)
    if rejected:
        return _as_quota(reset if reset is not None else after, "unified-rejected")
    for rules in RULES:
        hit = error.codes & rules.quota_codes
        if hit or status in rules.quota_statuses:
            wait = wall_time_in_message(error.message, rules, now)
            reason = min(hit) if hit else str(status)
            return _as_quota(wait if wait is not None else after, reason)
    if status == 400:
        return NOT_A_LIMIT  # a 400 is a limit only with a quota code (Bedrock)
    gemini = "RESOURCE_EXHAUSTED" in error.codes
    if gemini:
        delay, daily = _gemini(error)
        if daily or (delay is None and "exceeded your current quota" in error.message):
            return _as_quota(delay or after, "RESOURCE_EXHAUSTED/day")
        after = delay if delay is not None else after
    throttle = next(
        (code for rules in RULES for code in sorted(error.codes & rules.throttle_codes)), None
    )
    if status in (503, 529) and throttle is None and after is None:
        return NOT_A_LIMIT  # overloaded / unavailable: the provider's, handled as today
    wait = after
    if wait is None:
        wait = budget(headers, now).empty_for
    if wait is None:
        wait = _wait_in_message(error.message)
    if status != 429 and throttle is None:
        return NOT_A_LIMIT
    if wait is not None and wait > policy.quota_threshold:
        return Limit(Kind.QUOTA, wait, throttle or "retry-after")
    return Limit(Kind.THROTTLE, wait, throttle or str(status))


def _as_quota(wait: float | None, reason: str) -> Limit:
    return Limit(Kind.QUOTA, wait, reason)


def _wait_in_message(message: str) -> float | None:
    match = re.search(OPENAI_LIMITS.message_wait or "$^", message)
    return parse_duration(match.group(1)) if match else None


def now_wall() -> float:
    return datetime.now(UTC).timestamp()
