"""What a request cost: USD per million tokens, by model id or name glob.

The built-in table covers the common Anthropic, OpenAI, Gemini and GLM models at their
list prices (standard tier, short prompts, 5-minute cache writes), as published on the
providers' pricing pages and checked on 2026-12-01.  `[prices."<glob>"]` entries in the
config come first and win; a model that matches nothing has an unknown cost (null), never
zero.  A price entry that leaves a part out (no `cache_write`, say) makes the cost of a
request that used that part unknown too.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence

from hydrallm.config import Price
from hydrallm.formats.base import Usage

_P = Price
BUILTIN: tuple[tuple[str, Price], ...] = (
    # Anthropic (cache write = 5-minute TTL).
    ("claude-opus-4-0*", _P(15, 75, 1.5, 18.75)),
    ("claude-opus-4-1*", _P(15, 75, 1.5, 18.75)),
    ("claude-opus-4-2025*", _P(15, 75, 1.5, 18.75)),
    ("claude-opus-4-[5-9]*", _P(5, 25, 0.5, 6.25)),
    ("claude-opus-5-5*", _P(4, 20, 0.2, 5)),
    ("claude-opus-5*", _P(5, 25, 0.5, 6.25)),
    ("claude-3-opus*", _P(15, 75, 1.5, 18.75)),
    ("claude-sonnet-5-5*", _P(2, 10, 0.1, 2.5)),
    ("claude-sonnet-5*", _P(2, 10, 0.2, 2.5)),
    ("claude-sonnet-4*", _P(3, 15, 0.3, 3.75)),
    ("claude-3-7-sonnet*", _P(3, 15, 0.3, 3.75)),
    ("claude-3-5-sonnet*", _P(3, 15, 0.3, 3.75)),
    ("claude-haiku-5-5*", _P(0.1, 0.5, 0.01, 0.125)),
    ("claude-haiku-4*", _P(1, 5, 0.1, 1.25)),
    ("claude-3-5-haiku*", _P(0.8, 4, 0.08, 1)),
    ("claude-3-haiku*", _P(0.25, 1.25, 0.03, 0.3)),
    # OpenAI (caching is automatic: no write price, writes are not reported).
    ("gpt-5-nano*", _P(0.05, 0.4, 0.005, 0)),
    ("gpt-5-mini*", _P(0.25, 2, 0.025, 0)),
    ("gpt-5*", _P(1.25, 10, 0.125, 0)),
    ("gpt-4.1-nano*", _P(0.1, 0.4, 0.025, 0)),
    ("gpt-4.1-mini*", _P(0.4, 1.6, 0.1, 0)),
    ("gpt-4.1*", _P(2, 8, 0.5, 0)),
    ("gpt-4o-mini*", _P(0.15, 0.6, 0.075, 0)),
    ("gpt-4o*", _P(2.5, 10, 1.25, 0)),
    ("o4-mini*", _P(1.1, 4.4, 0.275, 0)),
    ("o3-mini*", _P(1.1, 4.4, 0.55, 0)),
    ("o3*", _P(2, 8, 0.5, 0)),
    # Gemini (prompts up to 200k tokens).
    ("gemini-2.5-pro*", _P(1.25, 10, 0.125, 0)),
    ("gemini-2.5-flash-lite*", _P(0.1, 0.4, 0.01, 0)),
    ("gemini-2.5-flash*", _P(0.3, 2.5, 0.03, 0)),
    ("gemini-2.0-flash-lite*", _P(0.075, 0.3, 0.01875, 0)),
    ("gemini-2.0-flash*", _P(0.1, 0.4, 0.025, 0)),
    # GLM (Z.ai pay-as-you-go; cache storage is free, so writes cost nothing).
    ("glm-5.1*", _P(1.2, 4, 0.24, 0)),
    ("glm-5-turbo*", _P(1.2, 4, 0.24, 0)),
    ("glm-5*", _P(1, 3.2, 0.2, 0)),
    ("glm-4.7-flash*", _P(0.07, 0.4, 0, 0)),
    ("glm-4.7*", _P(0.6, 2.2, 0.11, 0)),
    ("glm-4.6*", _P(0.6, 2.2, 0.11, 0)),
    ("glm-4.5-air*", _P(0.2, 1.1, 0.03, 0)),
    ("glm-4.5*", _P(0.6, 2.2, 0.11, 0)),
)


class PriceBook:
    """Looks up a price by config model id or served model name (config entries first)."""

    def __init__(self, configured: Sequence[tuple[str, Price]] = ()) -> None:
        self._entries: list[tuple[str, Price]] = [*configured, *BUILTIN]
        # Globs are compiled when a lookup first reaches them, not here: a price book is
        # built at startup (and on every reload), and compiling ~40 patterns up front
        # was the largest piece of `hydrallm serve`'s startup after the imports.
        # One slot per entry, filled once (two threads filling one slot store equal values).
        self._matchers: list[Callable[[str], object] | None] = [None] * len(self._entries)
        self._cache: dict[tuple[str | None, str | None], Price | None] = {}

    def _matcher(self, index: int) -> Callable[[str], object]:
        match = self._matchers[index]
        if match is None:
            pattern = self._entries[index][0]
            match = self._matchers[index] = re.compile(
                fnmatch.translate(pattern), re.IGNORECASE
            ).match
        return match

    def price(self, model_id: str | None, served: str | None) -> Price | None:
        key = (model_id, served)
        if key in self._cache:
            return self._cache[key]
        found: Price | None = None
        names = [n for n in (model_id, served) if n]
        # A provider prefix ("anthropic/claude-…", "us.anthropic.claude-…") is not the name.
        names += [n.rsplit("/", 1)[-1].rsplit(".", 1)[-1] for n in names if "/" in n]
        names += [re.sub(r"^(?:[a-z]{2}\.)?anthropic\.", "", n) for n in names]
        for index, (_, price) in enumerate(self._entries):
            match = self._matcher(index)
            if any(match(n) for n in names):
                found = price
                break
        if len(self._cache) < 4096:
            self._cache[key] = found
        return found

    def cost(self, model_id: str | None, served: str | None, usage: Usage | None) -> float | None:
        """USD, or None when the price or the usage is not known."""
        if usage is None or (usage.input_tokens is None and usage.output_tokens is None):
            return None
        price = self.price(model_id, served)
        if price is None:
            return None
        total = 0.0
        for tokens, rate in (
            (usage.input_tokens, price.input),
            (usage.output_tokens, price.output),
            (usage.cache_read_tokens, price.cache_read),
            (usage.cache_write_tokens, price.cache_write),
        ):
            if tokens:
                if rate is None:
                    return None
                total += tokens * rate / 1_000_000
        return round(total, 8)
