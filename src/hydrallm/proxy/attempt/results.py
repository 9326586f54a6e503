"""What one attempt ends in, the vocabulary the planner, engine and recovery share.

- `Committed`: an upstream response the client will now receive (nothing written yet).
- `Final`: a whole response to hand back as it is (a non-retryable upstream answer).
- `Outcome`: the attempt failed; its `action` says what the plan should do next, with the
  Retry-After asked for, the effect on the model's breaker and the response seen, if any.
- `Labels`: the request's names every attempt reports under, and its steps so far.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydrallm.config import ApiType, ModelConfig
from hydrallm.dataclass import dataclass
from hydrallm.errors import UpstreamError
from hydrallm.formats.base import WireFormat
from hydrallm.observe.events import TrailStep
from hydrallm.proxy.upstream import Response
from hydrallm.routing.outcome import Action
from hydrallm.routing.plan import Attempt

__all__ = ["Committed", "Final", "Labels", "Outcome"]


@dataclass(slots=True)
class Labels:
    listener: str
    route: str
    api_type: ApiType
    keep: bool = False  # a sink reads the request's steps (the journal)
    # Its steps (`RequestEvent.trail`), once there is one: none for the usual request.
    trail: list[TrailStep] | None = None
    # A first try that answered, while no other step follows it (`_report`): its model,
    # and its values as `RequestEvent.first_key` and the three after it take them.
    first: ModelConfig | None = None
    first_key: str | None = None
    first_ttft: float | None = None
    first_latency: float | None = None
    first_status: int | None = None


@dataclass(slots=True)
class Committed:
    """An upstream response the client now receives."""

    response: Response
    prefix: list[bytes]  # body bytes already read, to be written first
    complete: bool  # the whole body is in `prefix`
    format: WireFormat | None  # the body's wire format, when it is a stream
    model: ModelConfig
    model_name: str
    attempts: int
    chain: Sequence[ModelConfig]  # the plan's chain, for mid-stream recovery
    attempt: Attempt
    labels: Labels  # the request's, for a recovery's attempts
    deadline: float | None  # the request's time budget ends here (recovery obeys it too)


@dataclass(slots=True)
class Final:
    """A whole response to send: an upstream response as received, or a proxy-made error."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    attempts: int
    model: ModelConfig | None
    model_name: str | None
    proxy_made: bool
    error: str | None = None


@dataclass(slots=True)
class Outcome:
    """A failed attempt, in the one vocabulary the planner, engine and recovery share."""

    action: Action
    retry_after: float | None = None  # what the upstream asked us to wait
    open_for: float | None = None  # breaker effect: open the circuit at once for this long
    snapshot: Final | None = None  # the upstream response, when there was one
    error: UpstreamError | None = None
    counts_for_cooldown: bool = True  # a sign that the model is unwell
    another_key: bool = False  # the key's limit: ask the same model again at once, another key
