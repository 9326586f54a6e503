"""Session affinity: a session keeps the key (and with "session", the model) that served it,
so that the provider's prompt cache for it keeps hitting.

A session is named by the agent's own header where it sends one (Claude Code
`X-Claude-Code-Session-Id`, Codex `session-id` or body `prompt_cache_key`, opencode
`x-session-affinity`), else the body's `metadata.user_id`, else a hash of the system prompt
and the first user message.  Only a SHA-256 digest of that name is kept, never prompt text;
entries live in a bounded LRU and lapse after the TTL (1 h when the request marks
cache_control with ttl "1h", the providers' long cache lifetime).

With a cluster (`shared` set), a session's placement is published as an "affinity" record
named by the session digest, `{"model", "key": label, "ttl"}`, when the placement changes
or half its TTL has passed since it was last published (not per request); records of
other instances are adopted, so the session holds on whichever instance it lands.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Final, Protocol

from hydrallm.dataclass import dataclass

if TYPE_CHECKING:
    from hydrallm.routing.shared import Record, SharedState

KIND: Final = "affinity"

SESSION_HEADERS: Final = ("x-claude-code-session-id", "session-id", "x-session-affinity")
LONG_TTL: Final = 3600.0
MAX_SESSIONS: Final = 10_000
PARSE_LIMIT: Final = 256 * 1024
PREFIX_BYTES: Final = 32 * 1024


@dataclass(frozen=True, slots=True)
class Session:
    id: str  # a digest: safe to keep and to log
    long_cache: bool  # the request asks for 1-hour cache entries


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


def _first_user_text(messages: object) -> str | None:
    if not isinstance(messages, list):
        return None
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            return json.dumps(message.get("content"), sort_keys=True)
    return None


def _system_text(body: Mapping[str, object]) -> str:
    if "system" in body:  # Anthropic Messages
        return json.dumps(body["system"], sort_keys=True)
    if "instructions" in body:  # OpenAI Responses
        return json.dumps(body["instructions"], sort_keys=True)
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and message.get("role") in ("system", "developer"):
                return json.dumps(message.get("content"), sort_keys=True)
    return ""


def session_of(
    headers: Iterable[tuple[str, str]], body: Mapping[str, object] | None, raw: bytes = b""
) -> Session | None:
    """The session a request belongs to, or None when nothing names one."""
    long_cache = b'"1h"' in raw and b'"ttl"' in raw
    for name, value in headers:
        if name.lower() in SESSION_HEADERS and value.strip():
            return Session(_digest("h", name.lower(), value.strip()), long_cache)
    if body is None:
        return None
    key = body.get("prompt_cache_key")
    if isinstance(key, str) and key:
        return Session(_digest("p", key), long_cache)
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        user = metadata.get("user_id")
        if isinstance(user, str) and user:
            return Session(_digest("u", user), long_cache)
    first = _first_user_text(body.get("messages", body.get("input")))
    if first is None:
        return None
    return Session(_digest("c", _system_text(body), first), long_cache)


def session_of_request(
    headers: Iterable[tuple[str, str]], text: str | None, raw: bytes
) -> Session | None:
    """`session_of` for a request as received: headers first; the JSON body (`text`) is
    decoded only when no header names the session, and only up to PARSE_LIMIT bytes.  A
    longer body is named by its first PREFIX_BYTES, which a conversation keeps while it
    grows at its end (the same property that lets the provider's prompt cache hit)."""
    named = session_of(headers, None, raw)
    if named is not None or text is None:
        return named
    if len(raw) > PARSE_LIMIT:
        return Session(_digest("r", raw[:PREFIX_BYTES].decode("utf-8", "replace")), False)
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return session_of((), parsed if isinstance(parsed, dict) else None, raw)


@dataclass(slots=True)
class _Entry:
    model_id: str
    endpoint: str
    key_index: int | None
    last_seen: float
    ttl: float
    published: float = float("-inf")  # when this placement was last shared


class KeyNames(Protocol):
    """Key labels <-> indexes of an endpoint's pool (`KeyPools`): records name keys by label."""

    def label_of(self, endpoint: str, index: int | None) -> str | None: ...

    def index_of(self, endpoint: str, label: str | None) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Placement:
    model_id: str
    endpoint: str
    key_index: int | None


class Affinity:
    """Session -> the (model, key) that last served it; LRU-bounded, idle entries lapse."""

    def __init__(
        self,
        mode: str,
        ttl: float,
        clock: Callable[[], float],
        max_sessions: int = MAX_SESSIONS,
        endpoints: Mapping[str, str] | None = None,
        keys: KeyNames | None = None,
    ) -> None:
        self.mode = mode
        self.ttl = ttl
        self._clock = clock
        self._max = max_sessions
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._endpoints = endpoints or {}  # model id -> endpoint name (to adopt records)
        self._keys = keys
        self.shared: SharedState | None = None

    def carry_over(self, old: Affinity) -> None:
        """Keep the sessions of the previous config generation (a reload)."""
        self._entries = old._entries

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session: Session) -> Placement | None:
        entry = self._entries.get(session.id)
        if entry is None:
            return None
        if self._clock() - entry.last_seen > entry.ttl:
            del self._entries[session.id]
            return None
        return Placement(entry.model_id, entry.endpoint, entry.key_index)

    def key_for(self, session: Session | None, endpoint: str) -> int | None:
        """The key index to prefer on `endpoint` for this session (any mode but "off")."""
        if session is None or not self.enabled:
            return None
        placed = self.get(session)
        if placed is None or placed.endpoint != endpoint:
            return None
        return placed.key_index

    def model_for(self, session: Session | None) -> str | None:
        """The model to start the chain with ("session" mode only)."""
        if session is None or self.mode != "session":
            return None
        placed = self.get(session)
        return placed.model_id if placed is not None else None

    def remember(
        self, session: Session | None, model_id: str, endpoint: str, key_index: int | None
    ) -> None:
        if session is None or not self.enabled:
            return
        ttl = max(self.ttl, LONG_TTL) if session.long_cache else self.ttl
        now = self._clock()
        entry = _Entry(model_id, endpoint, key_index, now, ttl)
        shared = self.shared
        if shared is not None:
            # Published when the placement changes or half its TTL has passed since it
            # was last published (here or by the instance it was adopted from).
            old = self._entries.get(session.id)
            same = old is not None and (old.model_id, old.endpoint, old.key_index, old.ttl) == (
                model_id,
                endpoint,
                key_index,
                ttl,
            )
            if same and old is not None and now - old.published < ttl / 2:
                entry.published = old.published
            else:
                entry.published = now
                shared.publish(KIND, session.id, self._record(entry), ttl)
        self._entries[session.id] = entry
        self._entries.move_to_end(session.id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    # --- cluster ------------------------------------------------------------------------

    def _record(self, entry: _Entry) -> Record:
        label = None
        if self._keys is not None:
            label = self._keys.label_of(entry.endpoint, entry.key_index)
        return {"model": entry.model_id, "key": label, "ttl": entry.ttl}

    def snapshot(self) -> list[tuple[str, Record, float]]:
        """The live placements, each for what is left of its TTL."""
        now = self._clock()
        out = []
        for sid, entry in self._entries.items():
            left = entry.ttl - (now - entry.last_seen)
            if left > 0:
                out.append((sid, self._record(entry), left))
        return out

    def adopt(self, name: str, record: Record | None, age: float) -> None:
        """A placement another instance published `age` seconds ago; a newer local one wins."""
        if record is None or not self.enabled:
            return
        model_id, label, ttl = record.get("model"), record.get("key"), record.get("ttl")
        endpoint = self._endpoints.get(model_id) if isinstance(model_id, str) else None
        if endpoint is None or not isinstance(model_id, str):
            return  # a model this config does not have
        ttl = float(ttl) if isinstance(ttl, int | float) and ttl > 0 else self.ttl
        now = self._clock()
        seen = now - max(0.0, age)
        if now - seen >= ttl:
            return
        old = self._entries.get(name)
        if old is not None and old.last_seen >= seen:
            return
        index = None
        if self._keys is not None and isinstance(label, str):
            index = self._keys.index_of(endpoint, label)
        # Published when it was written: this instance shares it again only when half of
        # its TTL has passed since, like a placement of its own.
        self._entries[name] = _Entry(model_id, endpoint, index, seen, ttl, published=seen)
        self._entries.move_to_end(name)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


def preferred_order(chain: list[str], model_id: str | None) -> list[str]:
    """The chain with the session's model first ("session" mode); unchanged otherwise."""
    if model_id is None or model_id not in chain or chain[0] == model_id:
        return chain
    return [model_id, *(m for m in chain if m != model_id)]
