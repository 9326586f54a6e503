"""Classification of upstream statuses and Retry-After parsing."""

from __future__ import annotations

from email.utils import formatdate

from hydrallm.config import RetryConfig
from hydrallm.routing.outcome import Verdict, classify_status, parse_retry_after


def headers(**h: str):  # type: ignore[no-untyped-def]
    lower = {k.replace("_", "-").lower(): v for k, v in h.items()}
    return lambda name: lower.get(name.lower())


def test_default_retryable_statuses() -> None:
    r = RetryConfig()
    for status in (429, 500, 502, 503, 504, 529, 599):
        assert classify_status(status, headers(), r).verdict is Verdict.RETRY
    for status in (200, 201, 301, 400, 401, 403, 404, 408, 422):
        assert classify_status(status, headers(), r).verdict is Verdict.RETURN


def test_retry_on_and_fallback_on_are_configurable() -> None:
    r = RetryConfig(retry_on=frozenset({429, 503}), fallback_on=frozenset({500}))
    assert classify_status(502, headers(), r).verdict is Verdict.RETURN
    assert classify_status(503, headers(), r).verdict is Verdict.RETRY
    assert classify_status(500, headers(), r).verdict is Verdict.FALLBACK


def test_context_window_errors_fall_back() -> None:
    r = RetryConfig()
    body = b'{"error":{"message":"This model\'s maximum context length is 8192 tokens","code":"context_length_exceeded"}}'
    assert classify_status(400, headers(), r, body).verdict is Verdict.FALLBACK
    assert classify_status(400, headers(), r, b'{"error":"bad"}').verdict is Verdict.RETURN
    off = RetryConfig(fallback_on_body=())
    assert classify_status(400, headers(), off, body).verdict is Verdict.RETURN


def test_retry_after_forms() -> None:
    assert parse_retry_after(headers(retry_after="2")) == 2.0
    assert parse_retry_after(headers(retry_after_ms="1500")) == 1.5
    assert parse_retry_after(headers(x_amz_retry_after="250")) == 0.25
    assert parse_retry_after(headers(retry_after="soon")) is None
    date = formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(headers(retry_after=date), now=lambda: 1_000_000.0) == 30.0


def test_long_retry_after_means_fall_back_now() -> None:
    r = RetryConfig(max_retry_after=10)
    d = classify_status(429, headers(retry_after="120"), r)
    assert d.verdict is Verdict.FALLBACK and d.too_long and d.retry_after == 120.0
    d = classify_status(503, headers(retry_after="2"), r)
    assert d.verdict is Verdict.RETRY and d.retry_after == 2.0
