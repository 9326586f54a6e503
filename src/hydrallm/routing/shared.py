"""Shared state between instances (and worker processes): the pure part, no IO.

What one process learns (a circuit opened, a key exhausted, a session pinned to a model)
is a small *record* of some *kind*: `kind` names the sort of state ("breaker", "key",
"affinity"), `name` the thing within it (a model id, a key's id, a session's id), and the
record is a small JSON object that lives for `ttl` seconds.  `SharedState` keeps:

- the kinds registered by their owners, each with `apply(name, record, age_s)` (a record
  learned from another instance; `None` = the record was removed) and `snapshot()` (the
  live records this process would publish again after the shared store lost them);
- an outbox of writes not yet sent, coalesced per (kind, name) and bounded, so a
  request publishes with a dict update and never waits for the network;
- claims ("probe:<model>"): a slot that exactly one instance owns until it expires
  (Redis `SET NX PX`); `may(slot)` answers from what is known locally and, when nothing
  is known, asks for the slot in the background and answers False for now.

The IO side (`hydrallm.app.cluster`) drains the outbox, feeds `receive()` with what
others wrote, reports claim results and says whether the store is reachable
(`connected`).  While it is not, `may()` answers True (each process decides alone, as
without a cluster) and writes wait in the bounded outbox.

Ages instead of clocks: a record travels with the TTL it was written with (`px`); whoever
reads it with its remaining TTL knows its age without comparing two machines' clocks.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import field
from typing import Any, Protocol

from hydrallm.dataclass import dataclass

Record = dict[str, Any]
# (name, record or None when removed, age of the record in seconds)
Apply = Callable[[str, Record | None, float], None]
# The live records of a kind: (name, record, seconds it should still live)
Snapshot = Callable[[], Iterable[tuple[str, Record, float]]]

OUTBOX_LIMIT = 4096  # distinct (kind, name) writes waiting; the oldest is dropped past it
CLAIM_PREFIX = "probe:"
# Names the stores use for themselves (probe slots, heartbeats): not kinds of records.
RESERVED_KINDS = ("probe", "instance", "events")


class Sharer(Protocol):
    """An object whose state is shared as records of one kind (Breakers is one).

    `shared` is set by the cluster (None: nothing is shared); the object calls
    `shared.publish(kind, name, record, ttl)` when it learns something, and is given what
    others learned through `adopt`.  `snapshot` lists its live records, to publish again
    after the store was away.  Records are small JSON objects; names and records never
    hold a secret (a key is named by its endpoint and label, never by its value).
    """

    shared: SharedState | None

    def adopt(self, name: str, record: Record | None, age: float) -> None: ...

    def snapshot(self) -> list[tuple[str, Record, float]]: ...


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    apply: Apply
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class Write:
    kind: str
    name: str
    envelope: str | None  # JSON text of {"by", "px", "r"}; None: delete
    px: int  # TTL in milliseconds (ignored for a delete)


@dataclass(slots=True)
class _Claim:
    mine: bool
    until: float  # local monotonic time the claim lapses


@dataclass(slots=True)
class SharedState:
    """The local copy of shared state, the outbox and the claims of one process."""

    instance: str  # this process's id; records it wrote are not applied to it again
    clock: Callable[[], float] = time.monotonic
    kinds: dict[str, Kind] = field(default_factory=dict)
    outbox: OrderedDict[tuple[str, str], Write] = field(default_factory=OrderedDict)
    claims: dict[str, _Claim] = field(default_factory=dict)
    wanted: dict[str, float] = field(default_factory=dict)  # slot -> ttl, not yet asked
    released: set[str] = field(default_factory=set)  # own slots to give back
    connected: bool = False
    dropped: int = 0  # writes dropped because the outbox was full
    # Called after anything was queued, so the IO side wakes up (set by the IO side).
    wake: Callable[[], None] = field(default=lambda: None)

    def register(self, kind: Kind) -> None:
        if kind.name in RESERVED_KINDS or ":" in kind.name:
            raise ValueError(f"{kind.name!r} cannot name a kind of shared record")
        self.kinds[kind.name] = kind

    # --- publishing (called on the request path: dict updates only) ---------------------

    def publish(self, kind: str, name: str, record: Record | None, ttl: float) -> None:
        """Share `record` (None: remove it) under (kind, name) for `ttl` seconds."""
        px = max(1, int(ttl * 1000))
        envelope = None
        if record is not None:
            envelope = json.dumps(
                {"by": self.instance, "px": px, "r": record}, separators=(",", ":")
            )
        key = (kind, name)
        self.outbox.pop(key, None)
        self.outbox[key] = Write(kind, name, envelope, px)
        while len(self.outbox) > OUTBOX_LIMIT:
            self.outbox.popitem(last=False)
            self.dropped += 1
        self.wake()

    def take(self, limit: int = 256) -> list[Write]:
        """Up to `limit` queued writes, oldest first (the IO side sends them)."""
        out: list[Write] = []
        while self.outbox and len(out) < limit:
            out.append(self.outbox.popitem(last=False)[1])
        return out

    def requeue(self, writes: list[Write]) -> None:
        """Writes that could not be sent: back in front, unless a newer one replaced them."""
        for w in reversed(writes):
            key = (w.kind, w.name)
            if key not in self.outbox:
                self.outbox[key] = w
                self.outbox.move_to_end(key, last=False)
        while len(self.outbox) > OUTBOX_LIMIT:
            self.outbox.popitem(last=False)
            self.dropped += 1

    def republish(self) -> None:
        """Queue every live record again (the store restarted or was unreachable)."""
        for kind in self.kinds.values():
            for name, record, ttl in kind.snapshot():
                if ttl > 0:
                    self.publish(kind.name, name, record, ttl)

    # --- receiving ----------------------------------------------------------------------

    def receive(self, kind: str, name: str, envelope: str | None, pttl: int | None) -> None:
        """A record written by someone (pub/sub or a resync read); `pttl` = ms left."""
        handler = self.kinds.get(kind)
        if handler is None:
            return
        if envelope is None:
            handler.apply(name, None, 0.0)
            return
        try:
            doc = json.loads(envelope)
            by, px, record = doc["by"], int(doc["px"]), doc["r"]
        except (ValueError, KeyError, TypeError):
            return  # not ours (another version, or garbage): ignore
        if by == self.instance or not isinstance(record, dict):
            return
        left = px if pttl is None or pttl < 0 else pttl
        handler.apply(name, record, max(0.0, (px - left) / 1000))

    # --- claims (half-open probe slots) -------------------------------------------------

    def may(self, slot: str, ttl: float) -> bool:
        """Whether this process holds `slot`; asks for it in the background when unknown."""
        if not self.connected:
            return True
        claim = self.claims.get(slot)
        now = self.clock()
        if claim is not None and now < claim.until:
            return claim.mine
        self.wanted[slot] = ttl
        self.wake()
        return False

    def claimed(self, slot: str, won: bool, ttl: float) -> None:
        """The store's answer to a claim (`ttl`: seconds until it lapses)."""
        self.claims[slot] = _Claim(won, self.clock() + ttl)

    def release(self, slot: str) -> None:
        """Give a slot back (the probe ended): others may claim it at once."""
        claim = self.claims.pop(slot, None)
        if claim is not None and claim.mine and self.connected:
            self.released.add(slot)
            self.wake()

    def forget_claim(self, slot: str) -> None:
        """Another instance decided the model's state: its claim is moot."""
        self.claims.pop(slot, None)

    def take_claims(self) -> tuple[dict[str, float], set[str]]:
        wanted, released = self.wanted, self.released
        self.wanted, self.released = {}, set()
        return wanted, released
