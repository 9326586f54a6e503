"""A key pool's state as shared records (kind "key", see `hydrallm.routing.shared`).

A record is named "<endpoint>/<label>" (the masked label, `…a1b2`), or
"<endpoint>/#<12 hex digits of SHA-256 of the key>" when two keys of the endpoint share a
label (their "#N" suffix depends on each instance's key order).  It holds remaining times
only, never a clock reading and never the key:

    {"state": "exhausted", "until_ms": 3599000}    lives as long as the sleep
    {"state": "throttled", "until_ms": 20000}
    {"state": "invalid"}                           lives INVALID_TTL
    {"state": "ready", "fraction": 0.4}            lives READY_TTL (a budget share)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from hydrallm.config import AwsCredential

if TYPE_CHECKING:
    from hydrallm.routing.keys import KeyPools
    from hydrallm.routing.shared import Record, SharedState

KIND: Final = "key"
# A sleep's record lives as long as the sleep, so the store forgets it when the key wakes.
READY_TTL: Final = 60.0
INVALID_TTL: Final = 3600.0
SLEEPS: Final = ("throttled", "exhausted")


def _digest(secret: str | AwsCredential) -> str:
    if isinstance(secret, AwsCredential):
        text = f"profile:{secret.profile}" if secret.profile else secret.access_key_id or ""
    else:
        text = secret
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def share_names(
    endpoint: str, labels: Sequence[str], secrets: Sequence[str | AwsCredential]
) -> list[str]:
    return [
        f"{endpoint}/{lab}" if labels.count(lab) == 1 else f"{endpoint}/#{_digest(s)}"
        for lab, s in zip(labels, secrets, strict=True)
    ]


def record_of(
    state: str, until: float, fraction: float | None, now: float
) -> tuple[Record, float] | None:
    """The record of a key in `state` and its TTL; None when there is nothing to say."""
    if state in SLEEPS:
        left = until - now
        if left <= 0:
            return None
        return {"state": state, "until_ms": int(left * 1000)}, left
    if state == "invalid":
        return {"state": "invalid"}, INVALID_TTL
    if fraction is None:
        return None
    return {"state": "ready", "fraction": round(fraction, 3)}, READY_TTL


def merged_sleep(
    current: str, current_until: float, record: Record, age: float, now: float
) -> tuple[str, float] | None:
    """The (state, until) a key takes from a sleep record `age` seconds old, or None when
    it says nothing new.  Never shortens a local sleep: the later reset and the stronger
    state ("exhausted" over "throttled") win."""
    state = record.get("state")
    try:
        left = float(record["until_ms"]) / 1000 - age
    except (KeyError, TypeError, ValueError):
        return None
    if state not in SLEEPS or left <= 0:
        return None
    until = now + left
    if current not in SLEEPS:
        return str(state), until
    merged = "exhausted" if "exhausted" in (current, state) else "throttled"
    later = max(until, current_until)
    if merged == current and later - current_until < 0.5:
        return None  # already known (a periodic resync)
    return merged, later


class SharedKeys:
    """The "key" kind (a `routing.shared.Sharer`) of one `KeyPools`."""

    def __init__(self, pools: KeyPools) -> None:
        self._pools = pools
        self._shared: SharedState | None = None

    @property
    def shared(self) -> SharedState | None:
        return self._shared

    @shared.setter
    def shared(self, value: SharedState | None) -> None:
        self._shared = value
        for pool in self._pools.pools.values():
            pool.shared = value

    def adopt(self, name: str, record: Record | None, age: float) -> None:
        self._pools.adopt(name, record, age)

    def snapshot(self) -> list[tuple[str, Record, float]]:
        return self._pools.shared_snapshot()
