"""Pure classification of an attempt's result: return it, retry the model, or move on.

Inputs are plain values (status, a header getter, the head of an error body), so every rule
is tested without sockets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from hydrallm.config import RetryConfig
from hydrallm.dataclass import dataclass


class Action(Enum):
    """The one vocabulary for what an attempt's result asks of the request.

    The classification of a status, the planner, the engine, recovery and telemetry all
    speak it.
    """

    RETURN = "return"  # hand this response to the client as it is
    RETRY = "retry"  # retryable: another try of this model is allowed
    FALLBACK = "fallback"  # go to the next model at once
    SKIP_MODEL = "skip_model"  # this model cannot be asked at all in this request


# The names the classification and the planner used before they shared one vocabulary.
Verdict = Action


@dataclass(frozen=True, slots=True)
class StatusDecision:
    verdict: Action
    retry_after: float | None = None  # seconds the upstream asked us to wait
    too_long: bool = False  # Retry-After above max_retry_after: fall back and cool down


_RETRY_AFTER_STATUSES = frozenset({429, 503, 529})


def parse_retry_after(
    get: Callable[[str], str | None], *, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds from `retry-after-ms`, `x-amz-retry-after` (ms) or `Retry-After` (s or date)."""
    for name in ("retry-after-ms", "x-amz-retry-after"):
        value = get(name)
        if value:
            try:
                ms = float(value.strip())
            except ValueError:
                continue
            if ms >= 0:
                return ms / 1000.0
    value = get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        import email.utils  # only an HTTP-date Retry-After needs it; not at startup

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - now())
    return seconds if seconds >= 0 else None


def classify_status(
    status: int,
    get_header: Callable[[str], str | None],
    retry: RetryConfig,
    body_head: bytes | None = None,
) -> StatusDecision:
    """Decide what a response status (and for 4xx, the start of its body) means."""
    if status < 400 and status != 0:
        return StatusDecision(Verdict.RETURN)
    if status in retry.fallback_on:
        return StatusDecision(Verdict.FALLBACK)
    if retry.is_retryable_status(status):
        after = parse_retry_after(get_header) if status in _RETRY_AFTER_STATUSES else None
        if after is not None and after > retry.max_retry_after:
            return StatusDecision(Verdict.FALLBACK, retry_after=after, too_long=True)
        return StatusDecision(Verdict.RETRY, retry_after=after)
    if status < 500 and body_head and retry.fallback_on_body:
        head = body_head[:4096].decode("utf-8", "replace").lower()
        for needle in retry.fallback_on_body:
            if needle.lower() in head:
                return StatusDecision(Verdict.FALLBACK)
    return StatusDecision(Verdict.RETURN)


def needs_body_head(status: int, retry: RetryConfig) -> bool:
    """Whether classify_status would look at the body for this status."""
    return 400 <= status < 500 and bool(retry.fallback_on_body)
