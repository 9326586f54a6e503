"""Turn a continuation stream into the rest of the client's stream.

The continuation is either the answer to a prefilled request (it starts where the
client's text stops) or a fresh answer to the original request (it starts from the
beginning).  Either way it is held back until it has reproduced every block the client
has seen; then only what is new is relayed, in the client's numbering: no second
role chunk / `message_start` / `response.created`, the client's ids and indices,
Responses sequence numbers that go on counting, one finish, one terminal event.
A continuation that differs from what the client has raises `Mismatch`: text from two
answers is never spliced.
"""

from __future__ import annotations

from typing import Any

from hydrallm.formats.align import Aligner, Mismatch, covers
from hydrallm.formats.frames import Event, EventSplitter, encode, is_error_event, parse_event
from hydrallm.formats.peek import StreamKind
from hydrallm.formats.transcript import (
    TEXT,
    TEXT_DELTAS,
    TOOL,
    Transcript,
    _anthropic_kind,
    _responses_kind,
    delta_text,
)

__all__ = [
    "Aligner",
    "AnthropicSplicer",
    "ChatSplicer",
    "Mismatch",
    "ResponsesSplicer",
    "Splicer",
    "UpstreamFailed",
    "covers",
    "make_splicer",
]


class UpstreamFailed(Exception):
    """The continuation's upstream sent an error event."""


class Splicer:
    """Feed continuation bytes, get client bytes (maybe none yet); see the module doc."""

    def __init__(self, transcript: Transcript, given: dict[object, str]) -> None:
        transcript = transcript.snapshot()
        self.kind = transcript.kind
        self.aligner = Aligner(transcript.blocks, given)
        self.client = transcript
        self.finished = False
        self._split = EventSplitter()

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._one(parse_event(raw)) for raw in self._split.feed(data))

    def eof(self) -> bytes:
        rest = self._split.flush()
        return self._one(parse_event(rest)) if rest.strip() else b""

    def _one(self, event: Event) -> bytes:
        if is_error_event(self.kind, event):
            raise UpstreamFailed(_error_message(event))
        return self.event(event)

    def event(self, event: Event) -> bytes:
        raise NotImplementedError


class AnthropicSplicer(Splicer):
    def event(self, event: Event) -> bytes:
        kind = event.type
        data = event.data or {}
        index = data.get("index")
        al = self.aligner
        if kind == "message_start":
            return b""
        if kind == "content_block_start" and isinstance(index, int):
            block = data.get("content_block")
            block = block if isinstance(block, dict) else {}
            block_kind = _anthropic_kind(block.get("type"))
            if al.start(index, block_kind, block.get("name")):
                return event.raw
            initial = block.get("text") if block_kind == TEXT else block.get("thinking")
            if isinstance(initial, str) and initial:
                piece = al.delta(index, initial)
                if piece:
                    field = "text" if block_kind == TEXT else "thinking"
                    return _anthropic_delta(index, {"type": f"{field}_delta", field: piece})
            return b""
        if kind == "content_block_delta" and isinstance(index, int):
            delta = data.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            added = delta_text(delta)
            if added is None:
                return event.raw if al.passed(index) else b""
            out = al.delta(index, added)
            if not out:
                return b""
            if out == added and not al.is_expected(index):
                return event.raw
            field = next(f for f in ("text", "partial_json", "thinking") if f in delta)
            return _anthropic_delta(index, {**delta, field: out})
        if kind == "content_block_stop" and isinstance(index, int):
            rest = al.settle(index)  # held tool arguments, in the client's spelling
            head = _anthropic_delta(index, {"type": "input_json_delta", "partial_json": rest})
            return (head if rest else b"") + (event.raw if al.stop(index) else b"")
        if kind == "message_delta":
            al.finish()
            self.finished = True
            # A prefill that added nothing leaves the client's block open: close it.
            closing = b"".join(
                encode({"type": "content_block_stop", "index": k}, "content_block_stop")
                for k in al.open_expected()
            )
            return closing + event.raw
        if kind == "message_stop":
            return event.raw
        return event.raw if al.caught_up() else b""


def _anthropic_delta(index: int, delta: dict[str, Any]) -> bytes:
    body = {"type": "content_block_delta", "index": index, "delta": delta}
    return encode(body, "content_block_delta")


# Chat delta fields that carry a block's text, with the block key and kind they feed.
_CHAT_TEXT_FIELDS = (("reasoning_content", "reasoning", "thinking"), ("content", TEXT, TEXT))


class ChatSplicer(Splicer):
    def event(self, event: Event) -> bytes:
        if event.text.strip() == "[DONE]":
            return event.raw
        data = event.data
        if data is None:
            return b""
        if self.client.message_id is not None:
            data = {**data, "id": self.client.message_id}
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            return encode(data) if self.aligner.caught_up() or self.finished else b""
        choice = choices[0]
        if len(choices) > 1 or not isinstance(choice, dict) or choice.get("index", 0) != 0:
            raise Mismatch("the continuation has more than one choice")
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        out: dict[str, Any] = {}
        al = self.aligner
        for field, key, kind in _CHAT_TEXT_FIELDS:
            piece = delta.get(field)
            if isinstance(piece, str) and piece:
                al.start(key, kind, None)
                text = al.delta(key, piece)
                if text:
                    out[field] = text
        calls = delta.get("tool_calls")
        finish = choice.get("finish_reason")
        # Chat has no block stop: a call ends when the next one opens or the answer
        # finishes; held arguments go out then, in a chunk of their own.
        settled = b""
        if finish is not None or (
            isinstance(calls, list)
            and any(isinstance(c, dict) and not self._opened(c) for c in calls)
        ):
            settled = self._settle(data)
        if isinstance(calls, list):
            new_calls = [c for c in (self._call(call) for call in calls) if c is not None]
            if new_calls:
                out["tool_calls"] = new_calls
        if finish is not None:
            al.finish()
            self.finished = True
        if not out and finish is None:
            return settled
        return settled + encode({**data, "choices": [{**choice, "delta": out}]})

    def _opened(self, call: dict[str, Any]) -> bool:
        return self.aligner.slot((TOOL, call.get("index", 0))).started

    def _settle(self, data: dict[str, Any]) -> bytes:
        """A chunk with the rest of every held call's arguments (b"" when none is held)."""
        rest = [
            {"index": key[1], "function": {"arguments": piece}}
            for key in self.aligner.held()
            if isinstance(key, tuple) and (piece := self.aligner.settle(key))
        ]
        if not rest:
            return b""
        chunk = {k: v for k, v in data.items() if k != "usage"}
        delta = {"tool_calls": rest}
        return encode({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    def _call(self, call: object) -> dict[str, Any] | None:
        if not isinstance(call, dict):
            return None
        index = call.get("index", 0)
        key = (TOOL, index)
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        al = self.aligner
        announce = False
        if not al.slot(key).started:
            announce = al.start(key, TOOL, function.get("name"))
        arguments = function.get("arguments")
        piece = al.delta(key, arguments) if isinstance(arguments, str) else ""
        if announce:
            return {**call, "function": {**function, "arguments": piece}}
        if piece:
            return {"index": index, "function": {"arguments": piece}}
        return None


_RESPONSES_PREAMBLE = frozenset({"response.created", "response.in_progress", "response.queued"})
_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete"})


class ResponsesSplicer(Splicer):
    def __init__(self, transcript: Transcript, given: dict[object, str]) -> None:
        super().__init__(transcript, given)
        self._sequence = transcript.last_sequence
        self._ids: dict[str, str] = {}  # continuation item id -> the client's

    def _emit(self, data: dict[str, Any], name: str) -> bytes:
        self._sequence += 1
        data = {**data, "sequence_number": self._sequence}
        item_id = data.get("item_id")
        if isinstance(item_id, str) and item_id in self._ids:
            data["item_id"] = self._ids[item_id]
        return encode(data, name)

    def event(self, event: Event) -> bytes:
        name = event.type
        data = event.data or {}
        if not isinstance(name, str) or name in _RESPONSES_PREAMBLE:
            return b""
        index = data.get("output_index")
        al = self.aligner
        known = self.client.block(index) if isinstance(index, int) else None
        if name == "response.output_item.added" and isinstance(index, int):
            item = data.get("item")
            item = item if isinstance(item, dict) else {}
            kind = _responses_kind(item.get("type"))
            if al.start(index, kind, item.get("name") if kind == TOOL else None):
                return self._emit(data, name)
            if known is not None and isinstance(item.get("id"), str) and known.ident:
                self._ids[item["id"]] = known.ident
            return b""
        if name == "response.content_part.added":
            part = data.get("content_index", 0)
            if known is not None and isinstance(part, int) and known.parts > part:
                return b""
            return self._emit(data, name)
        if name in TEXT_DELTAS and isinstance(index, int):
            piece = data.get("delta")
            out = al.delta(index, piece if isinstance(piece, str) else "")
            return self._emit({**data, "delta": out}, name) if out else b""
        if name == "response.output_item.done" and isinstance(index, int):
            head = self._settle(index, data)
            if not al.stop(index):
                return head
            item = data.get("item")
            item = item if isinstance(item, dict) else {}
            return head + self._emit({**data, "item": self._item(index, item)}, name)
        if name.endswith(".done") and isinstance(index, int):
            head = self._settle(index, data)
            if known is not None and known.closed:
                return head
            if not al.slot(index).covered():
                raise Mismatch(f"item {index} ended before what the client has")
            text = al.client_text(index)
            if "text" in data:
                data = {**data, "text": text}
            if "arguments" in data:
                data = {**data, "arguments": text}
            part = data.get("part")
            if isinstance(part, dict) and "text" in part:
                data = {**data, "part": {**part, "text": text}}
            return head + self._emit(data, name)
        if name in _RESPONSES_FINAL:
            al.finish()
            self.finished = True
            response = data.get("response")
            if isinstance(response, dict):
                response = dict(response)
                if self.client.message_id is not None:
                    response["id"] = self.client.message_id
                output = response.get("output")
                if isinstance(output, list):
                    response["output"] = [
                        self._item(i, item) if isinstance(item, dict) else item
                        for i, item in enumerate(output)
                    ]
                data = {**data, "response": response}
            return self._emit(data, name)
        return self._emit(data, name) if al.caught_up() else b""

    def _settle(self, index: int, data: dict[str, Any]) -> bytes:
        """The rest of held arguments as an arguments delta, before the item's `.done`."""
        rest = self.aligner.settle(index)
        if not rest:
            return b""
        delta = {
            "type": "response.function_call_arguments.delta",
            "item_id": data.get("item_id") or (data.get("item") or {}).get("id"),
            "output_index": index,
            "delta": rest,
        }
        return self._emit(delta, "response.function_call_arguments.delta")

    def _item(self, index: int, item: dict[str, Any]) -> dict[str, Any]:
        """An output item as the client knows it: its id, its whole text."""
        known = self.client.block(index)
        if known is None:
            return item
        item = dict(item)
        if known.ident:
            item["id"] = known.ident
        if known.call_id and "call_id" in item:
            # A restarted call is named anew upstream; the client knows the first name.
            item["call_id"] = known.call_id
        text = self.aligner.client_text(index)
        if "arguments" in item:
            item["arguments"] = text
        content = item.get("content")
        if isinstance(content, list) and len(content) == 1 and isinstance(content[0], dict):
            item["content"] = [{**content[0], "text": text}]
        return item


def make_splicer(transcript: Transcript, prefill: str | None) -> Splicer:
    """A splicer for the client's stream; `prefill` is the text the request was prefilled with."""
    given: dict[object, str] = {}
    if prefill and transcript.blocks:
        given[transcript.blocks[0].key] = prefill
    if transcript.kind is StreamKind.ANTHROPIC:
        return AnthropicSplicer(transcript, given)
    if transcript.kind is StreamKind.OPENAI_RESPONSES:
        return ResponsesSplicer(transcript, given)
    return ChatSplicer(transcript, given)


def _error_message(event: Event) -> str:
    data = event.data or {}
    error = data.get("error")
    if not isinstance(error, dict):
        response = data.get("response")
        error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or "error"
        return f"{kind}: {error.get('message', '')}"
    return f"error event: {event.text[:200]}"
