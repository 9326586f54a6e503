"""The vocabulary of the fake answers: which API, what to answer, how to cut it in chunks.

Shared by `answers` (Chat Completions, Anthropic Messages, errors) and
`responses_wire` (the Responses API); import these from `hydrallm.testing.answers`.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

# Several sentences so that streams have many chunks; the non-ASCII letters and the
# quotes check that nothing on the way re-encodes or splits UTF-8 / JSON escapes.
CANONICAL_TEXT = (
    "Hydras regrow two heads for every one that is cut off. "
    "A proxy that retries is a little like that: when one upstream fails, another answers. "
    'This answer has several sentences, some "quoted" words, and a few non-ASCII letters: '
    "café, naïve, Zürich — so that every chunk boundary is exercised. "
    "That is the whole answer."
)

# A fixed epoch second keeps answers reproducible between runs.
_CREATED = 1_735_689_600


class Api(enum.Enum):
    """Which provider API a request path belongs to."""

    CHAT = "chat"
    RESPONSES = "responses"
    MESSAGES = "messages"
    COUNT_TOKENS = "count_tokens"
    MODELS = "models"


def api_for_path(path: str) -> Api | None:
    """Classify a request path; None when no LLM API serves it."""
    path = path.rstrip("/")
    if path.endswith("chat/completions"):
        return Api.CHAT
    if path.endswith("/responses"):
        return Api.RESPONSES
    if path.endswith("/messages/count_tokens"):
        return Api.COUNT_TOKENS
    if path.endswith("/messages"):
        return Api.MESSAGES
    if path.endswith("/models"):
        return Api.MODELS
    return None


# FakeUpstream replaces this id by one of the answer's own, as real APIs name each call anew.
DEFAULT_CALL_ID = "call_fake_0001"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the fake answers with instead of text.

    `arguments` is the JSON text of the arguments, as OpenAI transmits it.
    """

    name: str = "get_weather"
    arguments: str = '{"city":"Paris"}'
    call_id: str = DEFAULT_CALL_ID


@dataclass(frozen=True, slots=True)
class AnswerSpec:
    """Everything an answer depends on."""

    model: str
    answer_id: str
    text: str = CANONICAL_TEXT
    chunk_words: int = 1
    input_tokens: int = 1
    tool_call: ToolCall | None = None
    include_usage: bool = False  # OpenAI chat streaming: `stream_options.include_usage`
    created: int = _CREATED
    # Reasoning the answer starts with: an Anthropic `thinking` block (signed), chat
    # `reasoning_content`, a Responses `reasoning` item (summary).  Its chunks count as
    # content chunks, so a cut can land in it.
    thinking: str | None = None


@dataclass(frozen=True, slots=True)
class Stream:
    """A streaming answer as encoded SSE events, cut where faults are injected.

    `head` opens the stream, `content` carries the text (or tool arguments) one
    event per chunk, `tail` closes the content, and `terminal` is what marks a
    clean end (`[DONE]`, `message_stop`, `response.completed`).
    """

    head: tuple[bytes, ...]
    content: tuple[bytes, ...]
    tail: tuple[bytes, ...]
    terminal: tuple[bytes, ...]

    def events(self) -> tuple[bytes, ...]:
        """Every event, in order."""
        return self.head + self.content + self.tail + self.terminal


def split_text(text: str, chunk_words: int = 1) -> list[str]:
    """Cut `text` into chunks of `chunk_words` words; joined they give `text` back."""
    if not text:
        return []
    # Each piece is a word with the whitespace after it (the first also takes any
    # leading whitespace), so joining the pieces loses nothing.
    words = re.findall(r"\s*\S+\s*", text) or [text]
    size = max(1, chunk_words)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def _output_tokens(spec: AnswerSpec) -> int:
    if spec.tool_call is not None:
        return max(1, len(spec.tool_call.arguments) // 4)
    return max(1, len(split_text(spec.text)))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sse(data: Any, event: str | None = None) -> bytes:
    """Encode one server-sent event; `data` is JSON-encoded unless it is a str."""
    payload = data if isinstance(data, str) else _dumps(data)
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


def _argument_pieces(arguments: str) -> list[str]:
    # Providers stream tool arguments in arbitrary fragments; three is enough to
    # show that a client reassembles them.
    step = max(1, -(-len(arguments) // 3))
    return [arguments[i : i + step] for i in range(0, len(arguments), step)] or [""]


def sample_text(text: str, model: str, sample: int) -> str:
    """`text` as sample number `sample` of `model` gives it: same opening, another middle."""
    words = text.split(" ")
    middle = max(1, len(words) // 2)
    return " ".join([*words[:middle], f"({model}, sample {sample})", *words[middle:]])


def fresh_call(call: ToolCall | None, answer_id: str) -> ToolCall | None:
    # Every real answer names its tool call anew (call_…, toolu_…).
    if call is None or call.call_id != DEFAULT_CALL_ID:
        return call
    return ToolCall(name=call.name, arguments=call.arguments, call_id=f"call_{answer_id}")
