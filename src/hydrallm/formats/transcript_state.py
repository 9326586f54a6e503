"""What the client has received of a stream: content blocks, their text, the framing.

A `Transcript` is fed exactly the bytes written to the client.  It understands the
three SSE formats hydrallm can recover (OpenAI chat completions, OpenAI Responses,
Anthropic Messages) and reduces each to a list of `Block`s in client order:

- chat: the `content` text, `reasoning_content`, and one block per tool-call index;
- Responses: one block per output item (message text, function-call arguments, ...);
- Anthropic: one block per content block (text, tool_use JSON, thinking).

Indices are the client's own (Anthropic `index`, Responses `output_index`, chat tool
index), so a continuation that reproduces the blocks keeps them.

`TranscriptState` reads each event as it is fed; `formats.transcript.Transcript`, the one
the proxy uses, defers that reading (see there).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from hydrallm.dataclass import dataclass
from hydrallm.formats.frames import Event, EventSplitter, parse_event
from hydrallm.formats.peek import StreamKind

TEXT = "text"
TOOL = "tool"
THINKING = "thinking"
OTHER = "other"


class Block:
    """One content block the client has seen (at least its start).

    Its text grows by `add()`: pieces are kept in a list and joined only when `text` is
    read (at recovery), so keeping a long answer costs linear time, not a copy per event.
    """

    __slots__ = (
        "_pieces",
        "call_id",
        "closed",
        "ident",
        "index",
        "key",
        "kind",
        "length",
        "name",
        "parts",
    )

    def __init__(
        self,
        key: object,
        kind: str,
        name: str | None = None,
        ident: str | None = None,
        text: str = "",
        closed: bool = False,
        parts: int = 0,
        index: int = 0,
    ) -> None:
        self.key = key  # format-specific identity: chat "text"/("tool", i), else the index
        self.kind = kind  # TEXT | TOOL | THINKING | OTHER
        self.name = name  # tool name
        self.ident = ident  # tool call id (chat, Anthropic) / item id (Responses)
        self._pieces: list[str] = [text] if text else []
        self.length = len(text)  # of `text`, without joining it
        self.closed = closed
        self.parts = parts  # Responses: content parts announced
        self.index = index  # the client's index for it
        self.call_id: str | None = None  # Responses function call: its `call_id`

    @property
    def text(self) -> str:
        """Text, tool arguments JSON, or thinking, as received."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    @text.setter
    def text(self, value: str) -> None:
        self._pieces = [value] if value else []
        self.length = len(value)

    def add(self, piece: str) -> None:
        if piece:
            self._pieces.append(piece)
            self.length += len(piece)

    def copy(self) -> Block:
        twin = Block(
            self.key,
            self.kind,
            self.name,
            self.ident,
            self.text,
            self.closed,
            self.parts,
            self.index,
        )
        twin.call_id = self.call_id
        return twin

    def __repr__(self) -> str:
        return f"Block({self.key!r}, {self.kind}, {self.length} chars)"


@dataclass(slots=True)
class TranscriptState:
    """What `Transcript` reads the bytes into, event by event (eagerly)."""

    kind: StreamKind
    blocks: list[Block] = field(default_factory=list)
    started: bool = False  # role chunk / message_start / response.created was sent
    finished: bool = False  # finish_reason / message_delta / response.completed was sent
    done: bool = False  # [DONE] / message_stop / response.completed was sent
    usage: bool = False
    events: int = 0
    message_id: str | None = None  # chat chunk id / Anthropic message id / response id
    last_sequence: int = -1  # Responses
    opaque: bool = False  # saw something it does not understand (choice n > 0, ...)
    _split: EventSplitter = field(default_factory=EventSplitter)
    _index: dict[object, Block] = field(default_factory=dict)

    def feed(self, data: bytes) -> None:
        for raw in self._split.feed(data):
            self.add(parse_event(raw))

    def add(self, event: Event) -> None:
        self.events += 1
        if self.kind is StreamKind.ANTHROPIC:
            self._anthropic(event)
        elif self.kind is StreamKind.OPENAI_RESPONSES:
            self._responses(event)
        else:
            self._chat(event)

    def snapshot(self) -> TranscriptState:
        """A copy that later feeding does not change."""
        return TranscriptState(
            self.kind,
            [b.copy() for b in self.blocks],
            self.started,
            self.finished,
            self.done,
            self.usage,
            self.events,
            self.message_id,
            self.last_sequence,
            self.opaque,
        )

    # --- questions ------------------------------------------------------------------

    def block(self, key: object) -> Block | None:
        # Looked up on every delta: by key, not by a scan of all blocks so far.
        if len(self._index) != len(self.blocks):
            self._index = {b.key: b for b in reversed(self.blocks)}  # the first one wins
        return self._index.get(key)

    def prefill_text(self) -> str | None:
        """The text to prefill with, or None when the client has more than one text block."""
        if self.opaque or len(self.blocks) > 1:
            return None
        if not self.blocks:
            return ""
        only = self.blocks[0]
        return only.text if only.kind == TEXT else None

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.blocks if b.kind == TEXT)

    # --- formats --------------------------------------------------------------------

    def _open(self, key: object, kind: str, index: int, **info: Any) -> Block:
        for block in self.blocks:
            block.closed = block.closed or self.kind is StreamKind.OPENAI_CHAT
        block = Block(key, kind, index=index, **info)
        self.blocks.append(block)
        return block

    def _chat(self, event: Event) -> None:
        if event.text.strip() == "[DONE]":
            self.done = True
            return
        data = event.data
        if data is None:
            return
        if self.message_id is None and isinstance(data.get("id"), str):
            self.message_id = data["id"]
        if isinstance(data.get("usage"), dict):
            self.usage = True
        choices = data.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if choice.get("index", 0) != 0:
                self.opaque = True
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._chat_delta(delta)
            if choice.get("finish_reason") is not None:
                self.finished = True

    def _chat_delta(self, delta: dict[str, Any]) -> None:
        if delta.get("role") is not None:
            self.started = True
        for field_name, key, kind in (
            ("reasoning_content", "reasoning", THINKING),
            ("content", TEXT, TEXT),
        ):
            piece = delta.get(field_name)
            # The role chunk's `content: ""` opens nothing: the answer may begin with
            # reasoning, and an empty text block would stand before it.
            if isinstance(piece, str) and piece:
                block = self.block(key) or self._open(key, kind, 0)
                block.add(piece)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if not isinstance(call, dict):
                    continue
                index = call.get("index", 0)
                index = index if isinstance(index, int) else 0
                function = call.get("function")
                function = function if isinstance(function, dict) else {}
                found = self.block((TOOL, index))
                if found is None:
                    name = function.get("name")
                    ident = call.get("id")
                    found = self._open(
                        (TOOL, index),
                        TOOL,
                        index,
                        name=name if isinstance(name, str) else None,
                        ident=ident if isinstance(ident, str) else None,
                    )
                arguments = function.get("arguments")
                if isinstance(arguments, str):
                    found.add(arguments)

    def _anthropic(self, event: Event) -> None:
        data = event.data or {}
        name = event.type
        index = data.get("index")
        if name == "message_start":
            self.started = True
            message = data.get("message")
            if isinstance(message, dict) and isinstance(message.get("id"), str):
                self.message_id = message["id"]
        elif name == "content_block_start" and isinstance(index, int):
            block_data = data.get("content_block")
            block_data = block_data if isinstance(block_data, dict) else {}
            kind = _anthropic_kind(block_data.get("type"))
            block = self._open(
                index,
                kind,
                index,
                name=block_data.get("name") if kind == TOOL else None,
                ident=block_data.get("id") if kind == TOOL else None,
            )
            initial = block_data.get("text") if kind == TEXT else block_data.get("thinking")
            if isinstance(initial, str):
                block.text = initial
        elif name == "content_block_delta" and isinstance(index, int):
            target = self.block(index)
            delta = data.get("delta")
            if target is None or not isinstance(delta, dict):
                self.opaque = True
                return
            piece = delta_text(delta)
            if piece is None:
                if delta.get("type") != "signature_delta":
                    target.kind = OTHER
            else:
                target.add(piece)
        elif name == "content_block_stop" and isinstance(index, int):
            stopped = self.block(index)
            if stopped is not None:
                stopped.closed = True
        elif name == "message_delta":
            self.finished = True
            self.usage = self.usage or isinstance(data.get("usage"), dict)
        elif name == "message_stop":
            self.done = True

    def _responses(self, event: Event) -> None:
        data = event.data or {}
        sequence = data.get("sequence_number")
        if isinstance(sequence, int):
            self.last_sequence = max(self.last_sequence, sequence)
        name = event.type
        index = data.get("output_index")
        if name == "response.created":
            self.started = True
            response = data.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self.message_id = response["id"]
        elif name == "response.output_item.added" and isinstance(index, int):
            item = data.get("item")
            item = item if isinstance(item, dict) else {}
            kind = _responses_kind(item.get("type"))
            opened = self._open(
                index,
                kind,
                index,
                name=item.get("name") if kind == TOOL else None,
                ident=item.get("id") if isinstance(item.get("id"), str) else None,
            )
            call_id = item.get("call_id")
            opened.call_id = call_id if isinstance(call_id, str) else None
        elif name == "response.content_part.added" and isinstance(index, int):
            block = self.block(index)
            if block is not None:
                block.parts += 1
        elif isinstance(name, str) and name.endswith(".delta") and isinstance(index, int):
            block = self.block(index)
            piece = data.get("delta")
            if block is not None and isinstance(piece, str) and name in TEXT_DELTAS:
                block.add(piece)
            elif block is not None:
                block.kind = OTHER
        elif name == "response.output_item.done" and isinstance(index, int):
            block = self.block(index)
            if block is not None:
                block.closed = True
        elif name in ("response.completed", "response.incomplete"):
            self.finished = self.done = True
            response = data.get("response")
            self.usage = isinstance(response, dict) and isinstance(response.get("usage"), dict)


# Responses delta events whose `delta` is the block's text.
TEXT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    }
)


def delta_text(delta: dict[str, Any]) -> str | None:
    """The text an Anthropic content_block_delta adds, None for other delta types."""
    for name in ("text", "partial_json", "thinking"):
        piece = delta.get(name)
        if isinstance(piece, str) and delta.get("type") != "signature_delta":
            return piece
    return None


def _anthropic_kind(kind: object) -> str:
    if kind == "text":
        return TEXT
    if kind in ("tool_use", "server_tool_use"):
        return TOOL
    if kind == "thinking":
        return THINKING
    return OTHER


def _responses_kind(kind: object) -> str:
    if kind == "message":
        return TEXT
    if kind in ("function_call", "custom_tool_call"):
        return TOOL
    if kind == "reasoning":
        return THINKING
    return OTHER
