"""Assistant prefill in the fakes: what each model does with one, and `PrefillUpstream`.

    async with FakeUpstream() as fake:             # each model as its real provider
    async with PrefillUpstream() as fake:          # every model continues a prefill
    async with PrefillUpstream(refuse=True) as f:  # every model refuses one (400)

The rules are in `prefill_rules` (see there for what each behaviour means).
"""

from __future__ import annotations

from typing import Any

from hydrallm.testing.prefill_rules import (
    BEHAVIOURS,
    REFUSAL,
    THINKING_REFUSAL,
    PrefillBehaviour,
    assistant_prefill,
    continuation_flagged,
    default_behaviour,
    refusal,
    thinking_enabled,
)
from hydrallm.testing.upstream import FakeUpstream

__all__ = [
    "BEHAVIOURS",
    "REFUSAL",
    "THINKING_REFUSAL",
    "PrefillBehaviour",
    "PrefillUpstream",
    "assistant_prefill",
    "continuation_flagged",
    "default_behaviour",
    "refusal",
    "thinking_enabled",
]


class PrefillUpstream(FakeUpstream):
    """A `FakeUpstream` whose models all `continue` a prefill (or all `refuse` it)."""

    def __init__(self, *, refuse: bool = False, **options: Any) -> None:
        options.setdefault("prefill", "refuse" if refuse else "continue")
        super().__init__(**options)
        self.refuse = refuse
