"""Block-by-block comparison of a continuation with what the client already has.

The splicers (`splice`) feed every block piece of a continuation here: what the client
has is matched, only what is new comes back, and anything that departs from the
client's text raises `Mismatch` (text from two answers is never glued together).

Tool-call arguments are the one exception: they are a JSON value, and families spell
the same value differently (Anthropic's `partial_json` is spaced like `json.dumps`,
OpenAI and Gemini send compact JSON; non-ASCII is raw or `\\uXXXX`).  A tool block that
departs is held until it closes (`settle`), then re-spelled (`respell`: spelling only,
tokens kept) the way the client's partial arguments are spelled; arguments that are
not strict JSON, or another value, raise `Mismatch`.
"""

from __future__ import annotations

from hydrallm.formats.respell import respell
from hydrallm.formats.transcript import TEXT, TOOL, Block

__all__ = ["Aligner", "Mismatch", "covers"]


class Mismatch(Exception):
    """The continuation does not reproduce what the client already has."""


def covers(full: str, seen: str) -> bool:
    """Does `full` reproduce `seen`?  Trailing whitespace may differ (prefills lose it)."""
    if full.startswith(seen):
        return True
    return seen.startswith(full) and seen[len(full) :].isspace()


class _Slot:
    """One block of the continuation, compared with the client's block as it arrives.

    Each piece is compared with the matching stretch of the client's text only, so a
    restart that replays a long answer costs linear time.
    """

    __slots__ = (
        "_pieces",
        "emitted",
        "expected",
        "given",
        "held",
        "length",
        "respelled",
        "started",
        "stopped",
    )

    def __init__(self, expected: Block | None, given: str = "") -> None:
        self.expected = expected  # what the client has at this key (None: a new block)
        self.given = given  # prefill text the continuation's block follows
        self._pieces: list[str] = []  # the continuation's own text for the block
        self.length = len(given)  # of given + the continuation's text
        self.emitted = 0  # length of the block's text the client has, once beyond `expected`
        self.started = False
        self.stopped = False
        # A tool block whose argument text departed from the client's: held until it
        # closes, then `respelled` is its whole text in the client's spelling.
        self.held = False
        self.respelled: str | None = None

    @property
    def seen(self) -> str:
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    @property
    def full(self) -> str:
        return self.given + self.seen

    def add(self, piece: str) -> None:
        if piece:
            self._pieces.append(piece)
            self.length += len(piece)

    def covered(self) -> bool:
        if self.expected is None or self.respelled is not None:
            return True
        if self.held:
            return False
        want = self.expected
        if self.length < want.length and not want.text[self.length :].isspace():
            return False
        return self.started or bool(self.given) or (want.kind == TEXT and not want.length)


class Aligner:
    """Block-by-block comparison of a continuation with the client's blocks."""

    def __init__(self, blocks: list[Block], given: dict[object, str]) -> None:
        self._slots: dict[object, _Slot] = {b.key: _Slot(b, given.get(b.key, "")) for b in blocks}
        self._expected = list(self._slots)
        for slot in self._slots.values():
            have = slot.expected.text if slot.expected is not None else ""
            if slot.given and not covers(have, slot.given):
                raise Mismatch("the prefill is not what the client has")

    def slot(self, key: object) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(None)
        return slot

    def is_expected(self, key: object) -> bool:
        return self.slot(key).expected is not None

    def caught_up(self) -> bool:
        return all(self._slots[k].covered() for k in self._expected)

    def start(self, key: object, kind: str, name: object) -> bool:
        """The continuation opens a block; True when the client must be told."""
        slot = self.slot(key)
        if slot.started:
            return False
        slot.started = True
        want = slot.expected
        if want is None:
            if not self.caught_up():
                raise Mismatch(f"a new block {key!r} before the client's blocks were reproduced")
            return True
        if kind != want.kind or (kind == TOOL and name != want.name):
            raise Mismatch(f"block {key!r} is a {kind} {name or ''}, the client has a {want.kind}")
        return False

    def delta(self, key: object, piece: str) -> str:
        """The continuation adds `piece` to a block; returns what the client must get."""
        slot = self.slot(key)
        want = slot.expected
        start = slot.length
        slot.add(piece)
        if want is None:
            return piece
        if slot.held:
            return ""  # settled when the block closes
        have_length = want.length
        end = start + len(piece)
        if start < have_length:
            have = want.text
            overlap = min(end, have_length) - start
            if have[start : start + overlap] != piece[:overlap]:
                return self._depart(key, slot)
        if end <= have_length:
            return ""
        if want.closed:
            return self._depart(key, slot)
        for other in self._expected:
            if (
                other != key
                and not self._slots[other].covered()
                and other_before(self._expected, other, key)
            ):
                raise Mismatch(f"block {key!r} went on before {other!r} was reproduced")
        out = piece[max(have_length, slot.emitted) - start :]
        slot.emitted = end
        return out

    def _depart(self, key: object, slot: _Slot) -> str:
        """The continuation's text leaves the client's: the end of a text block, or (for
        tool arguments, which may only be spelled otherwise) held until `settle`."""
        want = slot.expected
        if want is None or want.kind != TOOL or slot.given or slot.emitted:
            raise Mismatch(f"block {key!r} differs from what the client has")
        slot.held = True
        return ""

    def settle(self, key: object) -> str:
        """The continuation closes a block: for held tool arguments, what the client must
        still get so that its text is the continuation's value in the client's spelling
        ("" for any other block).  Call before `stop`; raises `Mismatch` when the value
        differs."""
        slot = self._slots.get(key)
        if slot is None or slot.respelled is not None:
            return ""
        want = slot.expected
        if want is None or want.kind != TOOL or slot.given or slot.emitted:
            return ""
        if not slot.held and slot.covered():
            return ""
        # Either held, or ended short of the client's text (`{` against no arguments).
        spelled = respell(slot.seen or "{}", want.text, whole=want.closed)
        if spelled is None:
            raise Mismatch(f"block {key!r} calls the tool with other arguments")
        slot.held = False
        slot.respelled = spelled
        slot.emitted = len(spelled)
        return spelled[want.length :]

    def held(self) -> list[object]:
        """Keys of the blocks held for a re-spelling, in the client's order."""
        return [k for k in self._expected if self._slots[k].held]

    def passed(self, key: object) -> bool:
        """Is the client past this block's known part (new deltas of other types may go)?"""
        slot = self.slot(key)
        want = slot.expected
        return want is None or (not want.closed and slot.emitted > 0)

    def stop(self, key: object) -> bool:
        """The continuation closes a block; True when the client must be told."""
        slot = self.slot(key)
        want = slot.expected
        slot.stopped = True
        if want is None:
            return True
        if slot.held:
            raise Mismatch(f"block {key!r} closed before its arguments were settled")
        if slot.respelled is not None:
            return not want.closed
        if want.closed:
            if slot.length != want.length:
                raise Mismatch(f"block {key!r} ended differently")
            return False
        if not slot.covered():
            raise Mismatch(f"block {key!r} ended before what the client has")
        return True

    def finish(self) -> None:
        """The continuation's answer ends: it must have reproduced all of the client's."""
        if not self.caught_up():
            raise Mismatch("the continuation ended before reproducing what the client has")

    def open_expected(self) -> list[object]:
        """Keys of the client's open blocks the continuation has not closed."""
        return [
            k
            for k in self._expected
            if not self._slots[k].stopped and not self._slots[k].expected.closed  # type: ignore[union-attr]
        ]

    def client_text(self, key: object) -> str:
        """The block's whole text as the client will have it."""
        slot = self.slot(key)
        if slot.expected is None:
            return slot.seen
        if slot.respelled is not None:
            return slot.respelled
        have = slot.expected.text
        if slot.length <= len(have):
            return have
        return have + slot.full[len(have) :]


def other_before(order: list[object], a: object, b: object) -> bool:
    return order.index(a) < order.index(b)
