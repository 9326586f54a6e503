"""The shape of a provider's rate-limit rules, kept as data in each provider module.

`routing.limits` reads these tables; nothing here decides anything.  The facts behind
each value are cited where the table is defined and summed up in docs/configuration.md.
"""

from __future__ import annotations

from typing import Literal

from hydrallm.dataclass import dataclass

ResetFormat = Literal["duration", "rfc3339", "epoch"]


@dataclass(frozen=True, slots=True)
class BudgetHeader:
    """A remaining-count header and the header that says when it refills."""

    remaining: str
    reset: str
    limit: str | None
    format: ResetFormat


@dataclass(frozen=True, slots=True)
class LimitRules:
    name: str
    # Error codes / types (any of error.code, error.type, error.status, error.details.error_code,
    # Bedrock's x-amzn-ErrorType or __type) that mean: this key's quota or money is spent.
    quota_codes: frozenset[str] = frozenset()
    # ... that mean a short throttle of this key (wait, or move on when the wait is long).
    throttle_codes: frozenset[str] = frozenset()
    # ... that come with a limit status but are about the provider, not the key.
    not_key_codes: frozenset[str] = frozenset()
    # HTTP statuses that always mean money or quota (402 Payment Required).
    quota_statuses: frozenset[int] = frozenset()
    budget_headers: tuple[BudgetHeader, ...] = ()
    # A regex whose group 1 is a wall time "YYYY-MM-DD HH:MM:SS" in the message, and the
    # UTC offset (hours) that time is written in.
    message_reset: str | None = None
    message_reset_utc_offset: float = 0.0
    # A regex whose group 1 is a duration ("20s", "1m30s", "120ms") in the message.
    message_wait: str | None = None
