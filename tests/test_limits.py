"""Each provider's real limit signals, classified: throttle, exhausted quota, invalid, none.

The answers are the fakes' (`hydrallm.testing.limits`), built as the providers document
them; the wall clock is fixed so resets are exact.
"""

from __future__ import annotations

import json

import pytest

from hydrallm.routing.limits import (
    Kind,
    Limit,
    Policy,
    budget,
    classify,
    parse_duration,
    seconds_until,
)
from hydrallm.testing import limits as sig
from hydrallm.testing.faults import Fault, overloaded

NOW = 1_790_000_000.0  # a fixed wall clock (2026-09-21)
POLICY = Policy(max_retry_after=10, quota_threshold=600, quota_duration=900)


def judge(fault: Fault, now: float = NOW) -> Limit:
    headers = {k.lower(): v for k, v in fault.headers}
    body = fault.body if fault.body is not None else b""
    return classify(fault.status_code, headers.get, body, now, POLICY)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6m0s", 360.0), ("1s", 1.0), ("20ms", 0.02), ("1h2m3s", 3723.0), ("22.5s", 22.5), ("7", 7.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_bad_durations_are_not_guessed() -> None:
    assert parse_duration("soon") is None
    assert parse_duration("5x") is None
    assert seconds_until("not a time", "rfc3339", NOW) is None


def test_openai_rate_limit_is_a_throttle_with_the_stated_wait() -> None:
    limit = judge(sig.openai_throttle(20))
    assert limit == Limit(Kind.THROTTLE, 20.0, "rate_limit_exceeded")


def test_openai_throttle_wait_read_from_the_message_when_no_headers() -> None:
    fault = sig.openai_throttle(2)
    assert judge(Fault(status_code=429, body=fault.body)).wait == pytest.approx(2.0)


def test_openai_insufficient_quota_is_exhausted_without_a_reset() -> None:
    assert judge(sig.openai_quota()) == Limit(Kind.QUOTA, None, "insufficient_quota")


def test_http_402_is_exhausted() -> None:
    body = b'{"error":{"message":"Insufficient Balance","type":"unknown_error","code":"invalid_request_error"}}'
    assert judge(Fault(status_code=402, body=body)).kind is Kind.QUOTA


def test_a_retry_after_beyond_quota_threshold_is_an_exhausted_quota() -> None:
    fault = Fault(status_code=429, headers=(("retry-after", "3600"),), body=b"{}")
    assert judge(fault) == Limit(Kind.QUOTA, 3600.0, "retry-after")


def test_retry_after_ms_wins_over_retry_after() -> None:
    fault = Fault(status_code=429, headers=(("retry-after-ms", "1500"), ("retry-after", "9")))
    assert judge(fault).wait == pytest.approx(1.5)


def test_anthropic_rate_limit_error_with_retry_after() -> None:
    limit = judge(sig.anthropic_throttle(5, now=NOW))
    assert limit.kind is Kind.THROTTLE and limit.wait == 5.0


def test_anthropic_unified_rejected_sleeps_until_the_window_reset() -> None:
    limit = judge(sig.anthropic_unified_rejected(4 * 3600, now=NOW))
    assert limit.kind is Kind.QUOTA and limit.wait == pytest.approx(4 * 3600, abs=1)


def test_anthropic_spend_cap_and_billing() -> None:
    body = json.dumps(
        {
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": "spend limit",
                "details": {"error_code": "enforced_spend_limit_reached"},
            },
        }
    ).encode()
    assert judge(Fault(status_code=429, body=body)).kind is Kind.QUOTA
    assert judge(sig.anthropic_billing()).kind is Kind.QUOTA


def test_overloaded_is_not_about_the_key() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    assert judge(Fault(status_code=529, body=body)).kind is Kind.NONE
    assert judge(overloaded()).kind is Kind.NONE  # a bare 503


def test_401_and_403_mean_the_key_is_refused() -> None:
    assert judge(sig.openai_invalid()).kind is Kind.INVALID
    assert judge(sig.anthropic_invalid()).kind is Kind.INVALID
    assert judge(Fault(status_code=403, body=b"{}")).kind is Kind.INVALID


def test_zai_1308_reset_is_read_as_china_time() -> None:
    limit = judge(sig.zai_usage_limit(3 * 3600, now=NOW))
    assert limit.kind is Kind.QUOTA and limit.reason == "1308"
    assert limit.wait == pytest.approx(3 * 3600, abs=1)


def test_zai_code_on_the_anthropic_route_and_in_brackets() -> None:
    body = (
        b'{"type":"error","error":{"type":"rate_limit_error","code":"1113","message":'
        b'"[1113][Insufficient balance or no resource package. Please recharge.][2026]"}}'
    )
    assert judge(Fault(status_code=429, body=body)).kind is Kind.QUOTA
    older = b'{"type":"error","error":{"type":"1308","message":"[1308] limit"}}'
    assert judge(Fault(status_code=429, body=older)).kind is Kind.QUOTA


def test_zai_concurrency_is_a_throttle() -> None:
    assert judge(sig.zai_concurrency()) == Limit(Kind.THROTTLE, None, "1302")


def test_gemini_retry_delay_is_a_throttle_and_per_day_is_a_quota() -> None:
    assert judge(sig.gemini_throttle(22)) == Limit(Kind.THROTTLE, 22.0, "RESOURCE_EXHAUSTED")
    assert judge(sig.gemini_daily()).kind is Kind.QUOTA


def test_gemini_openai_compatible_list_body() -> None:
    fault = sig.gemini_throttle(3)
    wrapped = json.dumps([json.loads(fault.body or b"")]).encode()
    assert judge(Fault(status_code=429, body=wrapped)).wait == 3.0


def test_bedrock_throttling_and_service_quota() -> None:
    assert judge(sig.bedrock_throttle()).kind is Kind.THROTTLE
    assert judge(sig.bedrock_quota()).kind is Kind.QUOTA
    plain_400 = Fault(status_code=400, body=b'{"message":"Malformed input request"}')
    assert judge(plain_400).kind is Kind.NONE


def test_bedrock_model_not_ready_is_not_the_key() -> None:
    headers = (("x-amzn-ErrorType", "ModelNotReadyException:http://internal"),)
    assert judge(Fault(status_code=429, headers=headers, body=b"{}")).kind is Kind.NONE


def test_a_bare_429_is_a_throttle_of_unknown_length() -> None:
    assert judge(Fault(status_code=429, body=b"")) == Limit(Kind.THROTTLE, None, "429")


def test_other_statuses_are_not_limits() -> None:
    for code in (200, 404, 500, 502):
        assert judge(Fault(status_code=code, body=b"{}")).kind is Kind.NONE


def test_budget_of_a_success_reads_zero_remaining_until_reset() -> None:
    openai = sig.openai_budget(0, 100, 42)
    assert budget(openai.get, NOW).empty_for == pytest.approx(42)
    assert budget(sig.openai_budget(25, 100, 42).get, NOW).fraction == pytest.approx(0.25)
    anthropic = sig.anthropic_budget(0, 50, NOW + 30)
    assert budget(anthropic.get, NOW).empty_for == pytest.approx(30)
    assert budget({}.get, NOW).empty_for is None


def test_subscription_utilization_is_the_remaining_share() -> None:
    headers = {
        "anthropic-ratelimit-unified-5h-utilization": "0.25",
        "anthropic-ratelimit-unified-7d-utilization": "0.6",
    }
    assert budget(headers.get, NOW).fraction == pytest.approx(0.4)
