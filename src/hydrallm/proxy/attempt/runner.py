"""`AttemptRunner.run`: ONE attempt, prepare → send → classify → peek → `Committed` |
`Final` | `Outcome` (`results.py`).

Every upstream request the proxy makes goes through it: the plan loop in `engine.py` and
mid-stream recovery in `recovery.py` alike.  So an attempt's rules hold everywhere: the
request's time budget bounds it, the breakers hear of it, it is reported to telemetry (and
its step kept for the journal), compressed streams are peeked through (`reading.py`), and
upstream exceptions become outcomes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial

from hydrallm.config import Config, ModelConfig
from hydrallm.errors import ProtocolError, RequestNotPossible, UpstreamError, UpstreamTimeout
from hydrallm.formats.registry import select_format
from hydrallm.observe.events import AttemptEvent, Telemetry, first_try_step
from hydrallm.providers.base import ClientRequest, Provider
from hydrallm.proxy.attempt.reading import (
    DEBUG_BODY_LIMIT,
    ERROR_BODY_LIMIT,
    PRECOMMIT_BODY_LIMIT,
    error_excerpt,
    excerpt,
    peek,
    read_ahead,
    timeout_message,
)
from hydrallm.proxy.attempt.results import Committed, Final, Labels, Outcome
from hydrallm.proxy.deadline import Deadlines
from hydrallm.proxy.translated import (
    BadTranslation,
    Translated,
    TranslatedResponse,
    as_client_error,
    translate_answer,
    translation_for,
    without_foreign_thinking,
)
from hydrallm.proxy.upstream import Response, Transport, message_headers, read_body, take_whole
from hydrallm.routing.breakers import Breakers
from hydrallm.routing.keys import Step
from hydrallm.routing.outcome import Action, StatusDecision, classify_status
from hydrallm.routing.plan import Attempt
from hydrallm.routing.pooling import Chosen, RequestKeys

__all__ = ["AttemptRunner"]


class AttemptRunner:
    """Makes single attempts for one config generation; the world is injected."""

    __slots__ = (
        "_clock",
        "_deadlines",
        "_mixed",
        "breakers",
        "config",
        "providers",
        "telemetry",
        "transport",
    )

    def __init__(
        self,
        config: Config,
        transport: Transport,
        breakers: Breakers,
        telemetry: Telemetry,
        providers: Mapping[str, Provider],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.transport = transport
        self.breakers = breakers
        self.telemetry = telemetry
        self.providers = providers
        self._clock = clock
        self._deadlines: Deadlines | None = None  # created on first use, inside the loop
        # Models of several API families: an Anthropic history may hold another family's
        # (unsigned) thinking, which the pass-through must strip for an Anthropic model.
        self._mixed = len({m.type for m in config.models.values()}) > 1

    def model_name(self, model: ModelConfig, request: ClientRequest) -> str:
        """The model name sent upstream (the requested one for a `"*"` entry)."""
        if model.model == "*":
            return self.providers[model.type].requested_model(request) or "*"
        return model.model

    async def run(
        self,
        request: ClientRequest,
        attempt: Attempt,
        labels: Labels,
        deadline: float | None,
        fallback: bool,
        identity: bool = False,
        keyed: RequestKeys | None = None,
        chosen: Chosen | None = None,
    ) -> Committed | Final | Outcome:
        """Make the attempt; `identity` asks the upstream for an uncompressed body, `chosen`
        is the key of the endpoint's pool to use (its answer is reported to `keyed`)."""
        model = attempt.model
        endpoint = self.config.endpoints[model.endpoint] if chosen is None else chosen.endpoint
        label = chosen.key.label if chosen is not None and chosen.key is not None else None
        provider = self.providers[model.type]
        retry = self.config.retry
        sent = self._clock()
        response: Response | None = None
        ttft: float | None = None
        phase = "response"
        budget_cut = False
        translated: Translated | None = None
        try:
            if model.model == "*" and provider.requested_model(request) is None:
                raise RequestNotPossible('the request names no model to forward for model "*"')
            # Another API family than the client's: the request is translated (issue 16).
            # A same-family model gets None and the byte-exact pass-through.
            # (partial, not a lambda: a closure would make cells of these locals for the
            # whole of this function)
            translated = translation_for(request, model, partial(self.model_name, model, request))
            upstream = request if translated is None else translated.request
            if translated is None and self._mixed and model.type == "anthropic":
                upstream = without_foreign_thinking(request)
            outgoing = await provider.prepare(model, endpoint, upstream)
            headers = outgoing.headers
            if identity:
                headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"]
                headers.append(("Accept-Encoding", "identity"))
            log = self.telemetry.log
            if log.threshold <= 10:
                log.debug(
                    "upstream_request",
                    method=request.method,
                    url=outgoing.url,
                    body=excerpt(outgoing.body, DEBUG_BODY_LIMIT),
                )
            limit = retry.first_token_timeout if request.streaming else model.timeout
            if deadline is not None and deadline - sent < limit:
                limit = max(0.0, deadline - sent)
                budget_cut = True
            deadlines = self._deadlines
            if deadlines is None:
                deadlines = self._deadlines = Deadlines()
            # One timer per 10 ms shared by all attempts, not one per attempt: see deadline.py.
            with deadlines.guard(limit):
                response = await self.transport.send(
                    request.method, outgoing.url, headers, outgoing.body
                )
                status = response.status
                if status >= 400 or status < 200:
                    phase = "body"
                    return await self._answered_error(
                        response,
                        attempt,
                        labels,
                        deadline,
                        fallback,
                        (keyed, chosen, label),
                        outgoing.model_label,
                        translated,
                        sent,
                    )
                get = response.headers.get
                content_type = get("Content-Type", "")
                if translated is not None:
                    # From here on the answer is read in the client's API (see translated.py).
                    phase = "body" if not translated.request.streaming else phase
                    response = await translate_answer(response, translated)
                    get = response.headers.get
                    content_type = get("Content-Type", "")
                if not request.streaming and (
                    content_type == "application/json" or content_type[:17] == "application/json;"
                ):
                    fmt = None  # select_format's own first answer, without the call
                else:
                    fmt = select_format(
                        content_type,
                        api=model.type if translated is None else translated.client_format_api,
                        path=request.path,
                        streaming=request.streaming,
                        encoding=get("Content-Encoding", ""),
                    )
                prefix: list[bytes] = []
                arrived = take_whole(response, PRECOMMIT_BODY_LIMIT) if fmt is None else None
                if arrived is not None:
                    complete = True  # all of it came with the head
                    if arrived:
                        prefix.append(arrived)
                elif fmt is None:
                    phase = "body"
                    complete = await read_ahead(response, prefix)
                else:
                    phase = "first_token"
                    # A compressed stream is relayed as it is; the peek reads through it.
                    complete = await peek(response, fmt, prefix)
                    ttft = self._clock() - sent
        except BaseException as exc:
            if response is not None:
                response.abort()
            if not isinstance(exc, Exception):
                raise  # cancellation: nothing to report
            if isinstance(exc, BadTranslation):
                return self._refused(exc, attempt, model, request)
            return self._outcome(exc, attempt, labels, sent, fallback, phase, budget_cut, label)
        if isinstance(response, TranslatedResponse):
            response.committed = True
        if complete and arrived is None:  # (take_whole released it already)
            response.release()
        if keyed is not None and chosen is not None:  # look-ahead, affinity, cache reads
            keyed.answered(chosen, response.status, response.headers.get, b"")
            keyed.served(model, chosen)
            if prefix and not response.headers.get("Content-Encoding"):
                keyed.usage(chosen, model, prefix)
        self._report(
            attempt, labels, "success", response.status, None, sent, ttft, fallback, key=label
        )
        if complete or fmt is None:
            self.breakers.success(model.id)
        # A stream counts as a success only when it ends well: `stream_ended` says so.
        # Positional, in field order (keyword arguments cost ~0.5 µs more per request).
        return Committed(
            response,
            prefix,
            complete,
            fmt,
            model,
            outgoing.model_label,
            attempt.number,
            (),
            attempt,
            labels,
            deadline,
        )

    async def _answered_error(
        self,
        response: Response,
        attempt: Attempt,
        labels: Labels,
        deadline: float | None,
        fallback: bool,
        key: tuple[RequestKeys | None, Chosen | None, str | None],
        model_label: str,
        translated: Translated | None,
        sent: float,
    ) -> Committed | Final | Outcome:
        """`run`'s attempt answered with an error status (or a 1xx): its body read (up to
        `ERROR_BODY_LIMIT`) and judged; handed back as it is, or the outcome of a failed
        attempt.  `key`: the request's keys, the key used and its label."""
        model = attempt.model
        retry = self.config.retry
        status = response.status
        get = response.headers.get
        keyed, chosen, label = key
        response_encoding = get("Content-Encoding", "")
        body = await read_body(response, ERROR_BODY_LIMIT)
        decision = classify_status(status, get, retry, body)
        # A limit of this key: the next key at once, or the same key later.
        key_step = Step.NOT_A_LIMIT
        if keyed is not None and chosen is not None:
            step = keyed.answered(chosen, status, get, body)
            key_step = step.step
            if key_step is Step.RETRY_SAME:
                decision = StatusDecision(Action.RETRY, retry_after=step.wait)
            elif key_step is Step.NEXT_KEY:
                decision = StatusDecision(Action.FALLBACK)
        snapshot = Final(
            status, message_headers(response), body, attempt.number, model, model_label, False
        )
        if translated is not None:
            # Judged on the upstream's own answer; the client reads its API's.
            snapshot.status, snapshot.headers, snapshot.body = as_client_error(
                snapshot.status, snapshot.headers, body, translated, response_encoding
            )
        shown = (
            error_excerpt(response_encoding, body)
            if status >= 400 and self.config.log.include_error_body
            else None
        )
        self._report(attempt, labels, "status", status, None, sent, None, fallback, shown, label)
        if decision.verdict is Action.RETURN:
            self.breakers.success(model.id)
            if len(body) < ERROR_BODY_LIMIT or translated is not None:
                response.release()
                return snapshot
            # A body longer than we hold: the client gets all of it, relayed.
            return Committed(
                response=response,
                prefix=[body],
                complete=False,
                format=None,
                model=model,
                model_name=model_label,
                attempts=attempt.number,
                chain=(),
                attempt=attempt,
                labels=labels,
                deadline=deadline,
            )
        response.release()
        whole = len(body) < ERROR_BODY_LIMIT
        if key_step is Step.NEXT_KEY:  # the key's limit, not the model's fault
            return Outcome(
                Action.FALLBACK,
                snapshot=snapshot if whole else None,
                counts_for_cooldown=False,
                another_key=True,
            )
        outcome = Outcome(
            Action.FALLBACK if decision.verdict is Action.FALLBACK else Action.RETRY,
            retry_after=decision.retry_after,
            open_for=decision.retry_after if decision.too_long else None,
            # An error body longer than we hold is never handed back cut short.
            snapshot=snapshot if whole else None,
            error=None
            if whole
            else ProtocolError(f"HTTP {status} with a body over {ERROR_BODY_LIMIT} bytes"),
            counts_for_cooldown=retry.is_retryable_status(status) or decision.too_long,
        )
        self._failed(model, outcome)
        return outcome

    def _refused(
        self, exc: BadTranslation, attempt: Attempt, model: ModelConfig, request: ClientRequest
    ) -> Final:
        """A client body its own API would refuse: a 400 in that API, nothing sent."""
        provider = self.providers["anthropic" if request.path.endswith("/messages") else "openai"]
        err = provider.error_body(400, exc.message, "invalid_request_error")
        headers = [("Content-Type", err.content_type), *err.headers]
        name = self.model_name(model, request)
        return Final(400, headers, err.body, attempt.number, model, name, True, exc.message)

    def stream_ended(self, committed: Committed, broken: str | None) -> None:
        """A committed stream ended: well (a success for its model) or broken (a failure)."""
        if committed.complete or committed.format is None:
            return  # judged at commit
        model_id = committed.model.id
        if broken is None:
            self.breakers.success(model_id)
        else:
            self.breakers.failure(model_id, None)

    def _outcome(
        self,
        exc: Exception,
        attempt: Attempt,
        labels: Labels,
        sent: float,
        fallback: bool,
        phase: str,
        budget_cut: bool,
        label: str | None,
    ) -> Outcome:
        """The outcome of an attempt that raised (the one place exceptions become outcomes)."""
        retry = self.config.retry
        outcome: Outcome
        if isinstance(exc, TimeoutError):
            err: UpstreamError = UpstreamTimeout(
                timeout_message(phase, sent, self._clock()), phase=phase
            )
            outcome = Outcome(
                Action.FALLBACK if retry.fallback_on_timeout else Action.RETRY,
                error=err,
                # Cut short by the request's own budget: no sign that the model is unwell.
                counts_for_cooldown=not budget_cut,
            )
            kind = "timeout"
        elif isinstance(exc, RequestNotPossible):
            err = exc
            outcome = Outcome(Action.SKIP_MODEL, error=exc, counts_for_cooldown=False)
            kind = exc.kind
        elif isinstance(exc, UpstreamError):
            err = exc
            outcome = Outcome(Action.RETRY, error=exc)
            kind = exc.kind
        else:
            raise exc
        self._report(attempt, labels, kind, None, err.message, sent, None, fallback, key=label)
        self._failed(attempt.model, outcome)
        return outcome

    def _failed(self, model: ModelConfig, outcome: Outcome) -> None:
        if outcome.counts_for_cooldown:
            self.breakers.failure(model.id, outcome.open_for)

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
        key: str | None = None,
    ) -> None:
        model = attempt.model
        model_id, endpoint, name = model.id, model.endpoint, model.model
        latency = self._clock() - sent
        retry, waited = attempt.is_retry, attempt.wait
        # Positional, in field order: keyword arguments cost ~8,000 instructions more.
        event = AttemptEvent(
            labels.listener,
            labels.route,
            model_id,
            endpoint,
            name,
            attempt.cycle,
            attempt.number,
            outcome,
            status,
            error,
            latency,
            ttft,
            retry,
            fallback,
            error_body,
            waited,
            key,
        )
        if labels.keep:
            trail = labels.trail
            first = labels.first
            if (
                trail is None
                and first is None
                and outcome == "success"
                and not (retry or fallback or waited)
            ):
                # A first try that answered: no step (no tuple kept by the journal), only
                # its values, which the request's event carries.
                labels.first = model
                labels.first_key = key
                labels.first_ttft = ttft
                labels.first_latency = latency
                labels.first_status = status
            else:  # (a retry, a fallback, a failure, a recovery: not every request)
                if trail is None:
                    trail = labels.trail = []
                if first is not None:
                    # Another step follows a first try (a recovery): it becomes a step.
                    trail.append(
                        first_try_step(
                            first.model,
                            first.id,
                            first.endpoint,
                            labels.first_key,
                            labels.first_ttft,
                            labels.first_latency or 0.0,
                            labels.first_status,
                        )
                    )
                    labels.first = labels.first_key = labels.first_ttft = None
                    labels.first_latency = labels.first_status = None
                trail.append(event.step())
        self.telemetry.attempt(event)
