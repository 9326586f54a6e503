"""Requests held under `retry.hold`: waiting for the earliest key reset (issue 15).

The engine enters `Holds.hold()` around its wait; leaving it (the wait ended, or the
request's task was cancelled because the client went away) removes the entry, so the
status page shows exactly the requests that are waiting now.  One `Holds` is handed from
config generation to generation, so a request held across a reload stays visible.
Memory is bounded by the requests in flight; nothing of a request but its listener and
times is kept.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Holds:
    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._ids = itertools.count()
        # id -> (listener, since, until), Unix seconds.
        self._waiting: dict[int, tuple[str, float, float]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    @contextmanager
    def hold(self, listener: str, seconds: float) -> Iterator[None]:
        ident = next(self._ids)
        now = self._wall()
        self._waiting[ident] = (listener, now, now + seconds)
        try:
            yield
        finally:
            del self._waiting[ident]

    def snapshot(self) -> dict[str, Any]:
        """The `held` entry of status.json: how many requests wait, the earliest reset any
        of them waits for, and each (oldest first)."""
        waiting = sorted(self._waiting.values(), key=lambda w: w[1])
        return {
            "count": len(waiting),
            "earliest_reset": round(min(w[2] for w in waiting), 3) if waiting else None,
            "requests": [
                {"listener": name, "since": round(since, 3), "until": round(until, 3)}
                for name, since, until in waiting
            ],
        }
