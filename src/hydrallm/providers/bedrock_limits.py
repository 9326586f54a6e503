"""Limit rules of AWS Bedrock, apart from `providers/bedrock.py` so that the router can
hold them without importing botocore (which only a Bedrock endpoint should pay for at
startup)."""

from __future__ import annotations

from hydrallm.providers.limitrules import LimitRules

# Bedrock: the error class is in `x-amzn-ErrorType` ("ThrottlingException:http://...") and
# the body's `__type`.  ThrottlingException (429) is a throttle; ServiceQuotaExceededException
# (400) is the account's quota; ModelNotReadyException (429) and ServiceUnavailableException
# (503) are the service's, not the credentials'.  botocore reads `x-amz-retry-after` (ms).
# Sources: botocore bedrock-runtime service model, /work/shared/reference/
# provider-behaviour.md §1.7.
BEDROCK_LIMITS = LimitRules(
    name="bedrock",
    quota_codes=frozenset({"ServiceQuotaExceededException"}),
    throttle_codes=frozenset({"ThrottlingException", "throttlingException"}),
    not_key_codes=frozenset({"ModelNotReadyException", "ServiceUnavailableException"}),
)
