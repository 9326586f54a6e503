"""Limit rules of z.ai / Zhipu GLM (served through `openai` or `anthropic` endpoints).

HTTP 429 for throttles, plan windows and balance alike; the business code (a string) in
error.code tells them apart.  No rate-limit headers: the reset is only in the message, as
"YYYY-MM-DD HH:MM:SS" in China time (UTC+8).  Sources: docs.z.ai/api-reference/api-code,
docs.bigmodel.cn/cn/api/api-code, /work/shared/reference/provider-behaviour.md §1.4.
"""

from __future__ import annotations

from hydrallm.providers.limitrules import LimitRules

ZAI_LIMITS = LimitRules(
    name="zai",
    # 1308: 5-hour plan window; 1310: weekly/monthly window; 1304: daily count;
    # 1113: balance / no resource package; 1313: fair-use restriction.
    quota_codes=frozenset({"1308", "1310", "1304", "1113", "1313"}),
    # 1302: concurrency; 1303: frequency; 1305: traffic.
    throttle_codes=frozenset({"1302", "1303", "1305"}),
    # 1312: the model is overloaded (the provider's, not the key's).
    not_key_codes=frozenset({"1312"}),
    message_reset=r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})",
    message_reset_utc_offset=8.0,
)
