"""Drives one client request through the plan: attempts, waits, classification, commit.

The commit point is explicit: `Engine.run()` returns either `Committed` (an upstream
response the client will now receive, with whatever body bytes were read ahead) or `Final`
(a complete response to send: the last upstream response, or a proxy-made error).  Until
`run()` returns, nothing has been written to the client, so any failure can still be
retried or fallen back from.  After it returns `Committed`, `relay.py` streams the rest.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from hydrallm.config import ApiType, Config, ModelConfig
from hydrallm.errors import (
    ProtocolError,
    RequestNotPossible,
    StreamFailure,
    UpstreamError,
    UpstreamTimeout,
)
from hydrallm.formats.peek import Commit, Failed, Peeker, StreamKind, stream_kind
from hydrallm.observe.events import AttemptEvent, Telemetry
from hydrallm.providers.base import ClientRequest, Provider
from hydrallm.proxy.deadline import Deadlines
from hydrallm.proxy.upstream import Response, Transport, message_headers, read_body
from hydrallm.routing.breakers import Breakers
from hydrallm.routing.outcome import Verdict, classify_status
from hydrallm.routing.plan import Attempt, Next, Planner

# A non-streaming 2xx body is read completely before commit (so a reset mid-body can still
# be retried) up to this size; a larger body is committed and relayed as it comes.
PRECOMMIT_BODY_LIMIT = 4 * 1024 * 1024
# How much of an upstream error body `log.include_error_body` shows, and of an outgoing
# body the debug level shows.
ERROR_LOG_LIMIT = 4096
DEBUG_BODY_LIMIT = 2048
# Error bodies kept for the client / classification are read up to this size.
ERROR_BODY_LIMIT = 1024 * 1024


@dataclass(slots=True)
class Labels:
    listener: str
    route: str
    api_type: ApiType


@dataclass(slots=True)
class Committed:
    """An upstream response the client now receives."""

    response: Response
    prefix: list[bytes]  # body bytes already read, to be written first
    complete: bool  # the whole body is in `prefix`
    kind: StreamKind | None  # stream format, when the body is a stream we understand
    model: ModelConfig
    model_name: str
    attempts: int
    chain: Sequence[ModelConfig]  # the plan's chain, for mid-stream recovery
    attempt: Attempt


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
class _Failure:
    next: Next
    retry_after: float | None = None
    open_for: float | None = None  # open the circuit at once for this long
    snapshot: Final | None = None  # the upstream response, when there was one
    error: UpstreamError | None = None
    counts_for_cooldown: bool = True


@dataclass(slots=True)
class Engine:
    """Per-config-generation request driver.  The world (clock, sleep, random) is injected."""

    config: Config
    transport: Transport
    breakers: Breakers
    telemetry: Telemetry
    providers: Mapping[str, Provider]
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rand: Callable[[], float] = field(default=random.random)
    # Created on first use, inside the running loop.
    deadlines: Deadlines | None = None

    async def run(
        self, request: ClientRequest, chain: Sequence[ModelConfig], labels: Labels
    ) -> Committed | Final:
        retry = self.config.retry
        plan_chain = self.breakers.plan(chain)
        planner = Planner(plan_chain, retry, rand=self.rand)
        started = self.clock()
        deadline = started + retry.total_timeout if retry.total_timeout else None
        last_response: Final | None = None
        last_error: UpstreamError | None = None
        last_model: ModelConfig | None = None
        last_name: str | None = None
        budget_spent = False
        prev_index: int | None = None
        # When each model may be asked again, by its Retry-After: the planner's waits only
        # cover the try right after, but the ask also holds when a later cycle comes back.
        not_before: dict[int, float] = {}
        attempt = planner.first()
        while attempt is not None:
            wait = attempt.wait
            hold = not_before.get(attempt.index)
            if hold is not None:
                remaining = hold - self.clock()
                if remaining > retry.max_retry_after:
                    # Asked to stay away longer than we are willing to wait: not in this request.
                    planner.withdraw()
                    attempt = planner.next(Next.SKIP_MODEL)
                    continue
                wait = max(wait, remaining)
            if wait > 0:
                if deadline is not None and self.clock() + wait >= deadline:
                    planner.withdraw()
                    budget_spent = True
                    break
                await self.sleep(wait)
            fallback = prev_index is not None and attempt.index != prev_index
            prev_index = attempt.index
            result = await self._attempt(request, attempt, labels, deadline, fallback)
            if not isinstance(result, _Failure):
                if isinstance(result, Committed):
                    result.chain = plan_chain
                if not self.breakers.quiet:
                    for later in plan_chain[attempt.index + 1 :]:
                        self.breakers.release(later.id)
                return result
            last_model = attempt.model
            last_name = self._name(attempt.model, request)
            if result.snapshot is not None:
                last_response = result.snapshot
            if result.error is not None:
                last_error = result.error
            if result.counts_for_cooldown:
                self.breakers.failure(attempt.model.id, result.open_for)
            if result.retry_after is not None:
                not_before[attempt.index] = self.clock() + result.retry_after
            if deadline is not None and self.clock() >= deadline:
                budget_spent = True
                break
            attempt = planner.next(result.next, result.retry_after)
        attempts = planner.attempts_made
        if last_response is not None:
            last_response.attempts = attempts
            return last_response
        timed_out = budget_spent or isinstance(last_error, UpstreamTimeout)
        status = 504 if timed_out else 502
        if attempts == 0:
            reason = "no model of the chain could be tried"
        else:
            reason = f"all {attempts} attempt{'s' if attempts != 1 else ''} failed"
        if budget_spent:
            reason += f"; the request's time budget ({retry.total_timeout:g}s) is spent"
        if last_error is not None:
            reason += f"; last error: {last_error.message}"
        provider = self.providers[labels.api_type]
        err = provider.error_body(
            status, f"hydrallm: {reason}", "timeout_error" if timed_out else "api_error"
        )
        headers = [("Content-Type", err.content_type), *err.headers]
        return Final(status, headers, err.body, attempts, last_model, last_name, True, reason)

    def _name(self, model: ModelConfig, request: ClientRequest) -> str:
        if model.model == "*":
            return self.providers[model.type].requested_model(request) or "*"
        return model.model

    async def _attempt(
        self,
        request: ClientRequest,
        attempt: Attempt,
        labels: Labels,
        deadline: float | None,
        fallback: bool,
    ) -> Committed | Final | _Failure:
        model = attempt.model
        endpoint = self.config.endpoints[model.endpoint]
        provider = self.providers[model.type]
        retry = self.config.retry
        sent = self.clock()
        response: Response | None = None
        ttft: float | None = None
        phase = "response"
        budget_cut = False
        try:
            if model.model == "*" and provider.requested_model(request) is None:
                raise RequestNotPossible('the request names no model to forward for model "*"')
            outgoing = await provider.prepare(model, endpoint, request)
            log = self.telemetry.log
            if log.threshold <= 10:
                log.debug(
                    "upstream_request",
                    method=request.method,
                    url=outgoing.url,
                    body=_excerpt(outgoing.body, DEBUG_BODY_LIMIT),
                )
            limit = retry.first_token_timeout if request.streaming else model.timeout
            if deadline is not None and deadline - sent < limit:
                limit = max(0.0, deadline - sent)
                budget_cut = True
            deadlines = self.deadlines
            if deadlines is None:
                deadlines = self.deadlines = Deadlines()
            # One timer per 10 ms shared by all attempts, not one per attempt: see deadline.py.
            with deadlines.guard(limit):
                response = await self.transport.send(
                    request.method, outgoing.url, outgoing.headers, outgoing.body
                )
                status = response.status
                get = response.headers.get
                if status >= 400 or status < 200:
                    phase = "body"
                    response_encoding = get("Content-Encoding", "")
                    body = await read_body(response, ERROR_BODY_LIMIT)
                    decision = classify_status(status, get, retry, body)
                    snapshot = Final(
                        status,
                        message_headers(response),
                        body,
                        attempt.number,
                        model,
                        outgoing.model_label,
                        False,
                    )
                    shown = self._error_body(status, response_encoding, body)
                    if decision.verdict is Verdict.RETURN:
                        self._report(
                            attempt, labels, "status", status, None, sent, None, fallback, shown
                        )
                        self.breakers.success(model.id)
                        if len(body) < ERROR_BODY_LIMIT:
                            response.release()
                            return snapshot
                        # A body longer than we hold: the client gets all of it, relayed.
                        return Committed(
                            response=response,
                            prefix=[body],
                            complete=False,
                            kind=None,
                            model=model,
                            model_name=outgoing.model_label,
                            attempts=attempt.number,
                            chain=(),
                            attempt=attempt,
                        )
                    response.release()
                    response = None
                    self._report(
                        attempt, labels, "status", status, None, sent, None, fallback, shown
                    )
                    whole = len(body) < ERROR_BODY_LIMIT
                    return _Failure(
                        Next.FALLBACK if decision.verdict is Verdict.FALLBACK else Next.RETRY,
                        retry_after=decision.retry_after,
                        open_for=decision.retry_after if decision.too_long else None,
                        # An error body longer than we hold is never handed back cut short.
                        snapshot=snapshot if whole else None,
                        error=None
                        if whole
                        else ProtocolError(
                            f"HTTP {status} with a body over {ERROR_BODY_LIMIT} bytes"
                        ),
                        counts_for_cooldown=retry.is_retryable_status(status) or decision.too_long,
                    )
                content_type = get("Content-Type", "")
                kind = stream_kind(content_type, request.path, model.type)
                if kind is None and (request.streaming or "ndjson" in content_type):
                    # A stream in a format we do not decode (Ollama's NDJSON, ...): relay it
                    # as it comes, from its first byte, instead of buffering it as a body.
                    kind = StreamKind.UNKNOWN
                prefix: list[bytes] = []
                complete = False
                if kind is None:
                    phase = "body"
                    size = 0
                    while size < PRECOMMIT_BODY_LIMIT:
                        chunk = await response.read_chunk()
                        if not chunk:
                            complete = True
                            break
                        prefix.append(chunk)
                        size += len(chunk)
                else:
                    phase = "first_token"
                    # A compressed stream is relayed as it is; the peek reads through it.
                    inflate = _inflater(get("Content-Encoding", ""))
                    if inflate is False:
                        kind = StreamKind.UNKNOWN  # br, zstd...: commit on the first byte
                    peeker = Peeker(kind)
                    while True:
                        chunk = await response.read_chunk()
                        if chunk:
                            prefix.append(chunk)
                            verdict = _feed(peeker, inflate, chunk)
                        else:
                            verdict = _feed(peeker, inflate, b"", end=True) or peeker.eof()
                            complete = True
                        if verdict is None:
                            continue
                        if isinstance(verdict, Commit):
                            ttft = self.clock() - sent
                            break
                        assert isinstance(verdict, Failed)
                        if not verdict.retryable:
                            # The provider's own, final answer (e.g. a validation error as an
                            # exception frame): the client gets it as it is.
                            ttft = self.clock() - sent
                            break
                        raise StreamFailure(f"{verdict.kind}: {verdict.message}")
        except asyncio.CancelledError:
            if response is not None:
                response.abort()
            raise
        except TimeoutError:
            if response is not None:
                response.abort()
            err: UpstreamError = UpstreamTimeout(
                _timeout_message(phase, sent, self.clock()), phase=phase
            )
            self._report(attempt, labels, "timeout", None, err.message, sent, None, fallback)
            return _Failure(
                Next.FALLBACK if retry.fallback_on_timeout else Next.RETRY,
                error=err,
                # Cut short by the request's own budget: no sign that the model is unwell.
                counts_for_cooldown=not budget_cut,
            )
        except RequestNotPossible as exc:
            self._report(attempt, labels, exc.kind, None, exc.message, sent, None, fallback)
            return _Failure(Next.SKIP_MODEL, error=exc, counts_for_cooldown=False)
        except UpstreamError as exc:
            if response is not None:
                response.abort()
            self._report(attempt, labels, exc.kind, None, exc.message, sent, None, fallback)
            return _Failure(Next.RETRY, error=exc)
        if complete:
            response.release()
        self._report(attempt, labels, "success", response.status, None, sent, ttft, fallback)
        self.breakers.success(model.id)
        return Committed(
            response=response,
            prefix=prefix,
            complete=complete,
            kind=kind,
            model=model,
            model_name=outgoing.model_label,
            attempts=attempt.number,
            chain=(),
            attempt=attempt,
        )

    def _report(
        self,
        attempt: Attempt,
        labels: Labels,
        outcome: str,
        status: int | None,
        error: str | None,
        sent: float,
        ttft: float | None,
        fallback: bool,
        error_body: str | None = None,
    ) -> None:
        model = attempt.model
        self.telemetry.attempt(
            AttemptEvent(
                listener=labels.listener,
                route=labels.route,
                model_id=model.id,
                endpoint=model.endpoint,
                model=model.model,
                cycle=attempt.cycle,
                attempt=attempt.number,
                outcome=outcome,
                status=status,
                error=error,
                latency=self.clock() - sent,
                ttft=ttft,
                retry=attempt.is_retry,
                fallback=fallback,
                error_body=error_body,
            )
        )

    def _error_body(self, status: int, encoding: str, body: bytes) -> str | None:
        """The upstream's error body for the log, when `log.include_error_body` is on."""
        if status < 400 or not self.config.log.include_error_body:
            return None
        lowered = encoding.lower()
        if "gzip" in lowered or "deflate" in lowered:
            # Inflate at most what is logged: a 1 MiB gzip of zeros is 1 GiB inflated.
            try:
                inflated = zlib.decompressobj(wbits=47).decompress(body, ERROR_LOG_LIMIT + 1)
            except zlib.error:
                return "(compressed body that could not be decompressed)"
            if len(inflated) > ERROR_LOG_LIMIT:
                shown = inflated[:ERROR_LOG_LIMIT].decode("utf-8", "replace")
                return f"{shown}… (inflated further; {len(body)} bytes compressed)"
            body = inflated
        return _excerpt(body, ERROR_LOG_LIMIT)


def _inflater(encoding: str) -> zlib._Decompress | bool | None:
    """A decompressor for the peek: None when the body is not compressed, False when it is
    compressed in a way the standard library cannot read."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header, detected
    return False


def _feed(
    peeker: Peeker, inflate: zlib._Decompress | bool | None, chunk: bytes, *, end: bool = False
) -> Commit | Failed | None:
    """Feed the peek the plain bytes of `chunk` (None: no verdict yet)."""
    if inflate is None or isinstance(inflate, bool):
        return None if end else peeker.feed(chunk)
    try:
        data = inflate.flush() if end else inflate.decompress(chunk)
    except zlib.error:
        return Commit()  # cannot look inside: the client's own decoder will judge it
    return peeker.feed(data) if data else None


def _excerpt(body: bytes, limit: int) -> str:
    text = body[:limit].decode("utf-8", "replace")
    return text + f"… ({len(body)} bytes)" if len(body) > limit else text


def _timeout_message(phase: str, sent: float, now: float) -> str:
    waited = now - sent
    what = {
        "response": "no response",
        "first_token": "no first token",
        "body": "response body not complete",
    }.get(phase, "no answer")
    return f"{what} after {waited:.1f}s"
