"""What the proxy tells the outside: log lines (secrets redacted) and telemetry events.

The engine calls one `Telemetry` object; it writes the log line and fans the event out to
the registered sinks (metrics, the status page's recent history).  Log lines are built
only when their level is on, and written in batches once per event-loop turn, which saves
a write(2) per line under load.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TextIO

from hydrallm.dataclass import dataclass

LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40}
_COLORS = {"debug": "\x1b[2m", "info": "\x1b[36m", "warn": "\x1b[33m", "error": "\x1b[31m"}
_RESET = "\x1b[0m"


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\r\t'):
        text = (
            '"'
            + text.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\r", "\\r")
            + '"'
        )
    return text


class Redactor:
    """Replaces every known secret value in a string by `[redacted]`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text


class Logger:
    """key=value lines to a stream (stderr by default), coloured on a TTY."""

    def __init__(
        self,
        level: str = "info",
        *,
        stream: TextIO | None = None,
        secrets: Iterable[str] = (),
        color: bool | None = None,
        worker: int | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        # With several worker processes, each line says which one wrote it.
        self._source = f" worker={worker}" if worker is not None else ""
        self.threshold = LEVELS.get(level, 20)
        self.redact = Redactor(secrets)
        if color is None:
            color = bool(getattr(self.stream, "isatty", lambda: False)()) and not os.environ.get(
                "NO_COLOR"
            )
        self.color = color
        self._buffer: list[str] = []
        self._scheduled = False

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def log(self, level: str, event: str, **fields: object) -> None:
        if LEVELS[level] < self.threshold:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
        body = " ".join(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
        tag = level.upper().ljust(5)
        if self.color:
            tag = f"{_COLORS.get(level, '')}{tag}{_RESET}"
        line = self.redact(f"{stamp} {tag} {event}{self._source} {body}".rstrip()) + "\n"
        self._write(line)

    def debug(self, event: str, **fields: object) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: object) -> None:
        self.log("info", event, **fields)

    def warn(self, event: str, **fields: object) -> None:
        self.log("warn", event, **fields)

    def error(self, event: str, **fields: object) -> None:
        self.log("error", event, **fields)

    def _write(self, line: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._emit(line)
            return
        self._buffer.append(line)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)

    def _emit(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed: logging must never take the proxy down

    def flush(self) -> None:
        self._scheduled = False
        if self._buffer:
            text = "".join(self._buffer)
            self._buffer.clear()
            self._emit(text)


@dataclass(slots=True)
class AttemptEvent:
    """One upstream attempt and its verdict, as the sinks receive it."""

    listener: str
    route: str
    model_id: str
    endpoint: str
    model: str
    cycle: int
    attempt: int  # 1-based attempt number in the request
    outcome: str  # "success" | "status" | "timeout" | "connect_error" | "stream_error" | ...
    status: int | None
    error: str | None
    latency: float  # seconds to the verdict
    ttft: float | None  # seconds to the first meaningful stream event, for streams
    retry: bool  # this attempt was a retry of the same model
    fallback: bool  # this attempt moved to a later model of the chain
    error_body: str | None = None  # with log.include_error_body: the upstream's error body
    waited: float = 0.0  # seconds waited before this attempt was sent
    key: str | None = None  # masked label of the key used (key pools)

    def step(self) -> TrailStep:
        """This attempt as a step of its request's trail (`AttemptRunner._report` makes the
        same tuple from its values, without an event)."""
        return (
            self.model,
            self.model_id,
            self.endpoint,
            self.key,
            self.outcome,
            self.status,
            self.error,
            self.latency,
            self.waited,
            self.ttft,
            self.retry,
            self.fallback,
        )


# A step of a request's trail, a plain tuple (as `marshal` writes it): an attempt's
# (model, model_id, endpoint, key, outcome, status, error, latency, waited, ttft, retry,
# fallback); or (None, ids): models left out (circuit open).  (A first try that answered,
# the usual request, is no step: `RequestEvent.first_key` and the three after it.)
TrailStep = tuple[Any, ...]


def first_try_step(
    model: str | None,
    model_id: str | None,
    endpoint: str | None,
    key: str | None,
    ttft: float | None,
    latency: float,
    status: int | None,
) -> TrailStep:
    """A first try that answered as a whole step (`AttemptEvent.step`'s layout): the one
    place its four values (`RequestEvent.first_key` ...) and its model are put together."""
    return (
        model,
        model_id,
        endpoint,
        key,
        "success",
        status,
        None,
        latency,
        0.0,
        ttft,
        False,
        False,
    )


class RequestEvent(NamedTuple):
    """One client request, reported once when its answer has ended.

    A tuple, not a dataclass: the handler makes it with `tuple.__new__` from its values in
    field order, with no Python `__init__` (a slotted dataclass's, called with keywords,
    was ~17,000 instructions a request: the keywords go through a dict); the journal
    queues those values as its row (`Sink.plain_request`)."""

    request_id: str
    started_at: float  # wall clock
    listener: str
    route: str
    method: str
    path: str
    requested_model: str | None = None  # what the client asked for
    served_model: str | None = None  # the model name sent upstream
    served_by: str | None = None  # model id (of the model that finished the answer)
    endpoint: str | None = None
    status: int = 0
    attempts: int = 0
    # A stream that broke after commit: "prefill" | "restart" (finished by `served_by`) or
    # "gave_up"; None when nothing broke.
    recovered: str | None = None
    latency: float = 0.0
    streamed: bool = False
    body_bytes: int = 0  # body bytes sent to the client
    # What the upstream said of its usage: a whole body's part that holds it, still to be
    # decoded (bytes), or a stream's, decoded (`tuple(Usage)`: a plain tuple, as written).
    usage: bytes | tuple[int | None, ...] | None = None
    error: str | None = None
    session: str | None = None  # hash of the client's session id, when it sent one
    # Only with `journal.bodies = true` (debugging): the bodies, as received and sent.
    request_body: bytes | None = None
    response_body: bytes | None = None
    # The request's steps in order, when a sink reads them (the journal), as plain tuples
    # (`TrailStep`): each attempt's, and (None, model ids) for models left out because
    # their circuit was open.  None when there were none, or only a first try that
    # answered (the usual request): that attempt's key label, time to first token,
    # latency and status are the four fields after this one (None otherwise), so that
    # the usual event holds strings and numbers only.  (A container in it would keep the
    # cyclic collector busy while the journal queues it: see `JournalSink.request`.)
    trail: list[TrailStep] | None = None
    first_key: str | None = None
    first_ttft: float | None = None
    first_latency: float | None = None
    first_status: int | None = None


class Sink:
    """Receives telemetry; subclasses override what they need (all no-ops here)."""

    # True when the sink reads `RequestEvent.usage` and `.trail`: only then are they kept.
    wants_usage = False
    # True when the sink's `request` reads its event by position only (the journal): it is
    # handed the same values as a plain tuple, when the caller has one (no copy to make).
    plain_request = False

    def attempt(self, event: AttemptEvent) -> None:
        return None

    def plain_handler(self) -> Callable[[tuple[Any, ...]], None]:
        """What `Telemetry` calls with a request's values, for a `plain_request` sink:
        its `request` (the journal may hand a callable of the C module instead)."""
        return self.request  # type: ignore[return-value]

    def request(self, event: RequestEvent) -> None:
        return None

    def circuit(self, model_id: str, state: str, open_for: float) -> None:
        return None

    def skipped(self, listener: str, model_ids: list[str]) -> None:
        """Models of a chain left out of a request because their circuit is open."""
        return None

    def stream_open(self, listener: str, delta: int) -> None:
        return None

    def stream_broken(self, listener: str, model_id: str, reason: str) -> None:
        return None

    def recovery(self, listener: str, model_id: str, action: str) -> None:
        return None

    def reload(self, result: str, detail: str) -> None:
        return None


class Telemetry:
    """The engine's single reporting object: logs, then fans out to the sinks."""

    def __init__(self, logger: Logger, sinks: Iterable[Sink] = ()) -> None:
        self.log = logger
        self.sinks: list[Sink] = list(sinks)
        # A sink that reads usage also reads the trail: each request's steps are kept.
        self.wants_usage = any(s.wants_usage for s in self.sinks)
        # Per event, the sinks that handle it (a sink's inherited no-op is not called):
        # these run for every attempt and request.
        self._attempt = _handlers(self.sinks, "attempt")
        self._request = _handlers([s for s in self.sinks if not s.plain_request], "request")
        self._plain = [s.plain_handler() for s in self.sinks if s.plain_request]
        self._skipped = _handlers(self.sinks, "skipped")
        self._stream_open = _handlers(self.sinks, "stream_open")

    def attempt(self, e: AttemptEvent) -> None:
        log = self.log
        if log.threshold <= 20:
            level = "info"
            log.log(
                level,
                "attempt",
                listener=e.listener,
                endpoint=e.endpoint,
                model=e.model,
                cycle=e.cycle,
                attempt=e.attempt,
                outcome=e.outcome,
                status=e.status,
                error=e.error,
                latency_ms=round(e.latency * 1000, 1),
                ttft_ms=None if e.ttft is None else round(e.ttft * 1000, 1),
                body=e.error_body,
            )
        for handle in self._attempt:
            handle(e)

    def request(self, e: RequestEvent, values: tuple[Any, ...] | None = None) -> None:
        """A request ended; `values`: the event's values as a plain tuple, if the caller
        made the event from one (the sinks that read by position get it)."""
        if self.log.threshold <= 20:
            self.log.info(
                "request",
                id=e.request_id,
                listener=e.listener,
                method=e.method,
                path=e.path,
                served_by=e.served_by,
                attempts=e.attempts,
                status=e.status,
                latency_ms=round(e.latency * 1000, 1),
                recovered=e.recovered,
                error=e.error,
            )
        for handle in self._request:
            handle(e)
        for handle in self._plain:
            handle(e if values is None else values)

    def circuit(self, model_id: str, state: str, open_for: float) -> None:
        self.log.info(
            "cooldown",
            model=model_id,
            state=state,
            open_for_s=round(open_for, 1) if state == "open" else None,
        )
        for sink in self.sinks:
            sink.circuit(model_id, state, open_for)

    def skipped(self, listener: str, model_ids: list[str]) -> None:
        for handle in self._skipped:
            handle(listener, model_ids)

    def stream_open(self, listener: str, delta: int) -> None:
        for handle in self._stream_open:
            handle(listener, delta)

    def stream_broken(self, listener: str, model_id: str, reason: str) -> None:
        self.log.warn("stream_broken", listener=listener, model=model_id, reason=reason)
        for sink in self.sinks:
            sink.stream_broken(listener, model_id, reason)

    def recovery(self, listener: str, model_id: str, action: str) -> None:
        self.log.info("stream_recovery", listener=listener, model=model_id, action=action)
        for sink in self.sinks:
            sink.recovery(listener, model_id, action)

    def reload(self, result: str, detail: str) -> None:
        for sink in self.sinks:
            sink.reload(result, detail)


def _handlers(sinks: list[Sink], name: str) -> list[Callable[..., None]]:
    """The bound `name` methods of the sinks that override the base's no-op."""
    base = getattr(Sink, name)
    return [getattr(s, name) for s in sinks if getattr(type(s), name) is not base]
