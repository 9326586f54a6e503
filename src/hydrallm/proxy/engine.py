"""The plan loop: drives one client request through its attempts, waits and fallbacks.

The commit point is explicit: `Engine.run()` returns either `Committed` (an upstream
response the client will now receive, with whatever body bytes were read ahead) or `Final`
(a complete response to send: the last upstream response, or a proxy-made error).  Until
`run()` returns, nothing has been written to the client, so any failure can still be
retried or fallen back from.  After it returns `Committed`, `relay.py` streams the rest.

One attempt is `attempt.AttemptRunner.run`; this module only decides which comes next
(`routing.plan.Planner`), how long to wait, and what the client gets when the plan ends.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import field

from hydrallm.config import Config, ModelConfig
from hydrallm.dataclass import dataclass
from hydrallm.errors import UpstreamError, UpstreamTimeout
from hydrallm.observe.events import Telemetry
from hydrallm.providers.base import ClientRequest, Provider
from hydrallm.proxy.attempt import AttemptRunner, Committed, Final, Labels, Outcome
from hydrallm.proxy.upstream import Transport
from hydrallm.routing.affinity import Affinity
from hydrallm.routing.breakers import Breakers
from hydrallm.routing.holds import Holds
from hydrallm.routing.keys import KeyPools, all_sleeping_error
from hydrallm.routing.outcome import Action
from hydrallm.routing.plan import Planner
from hydrallm.routing.pooling import Chosen, for_request, with_retry_after

__all__ = ["Committed", "Engine", "Final", "Labels"]


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
    # Key pools and session affinity (None: no endpoint has a key).
    keys: KeyPools | None = None
    affinity: Affinity | None = None
    wall: Callable[[], float] = time.time
    # Requests waiting under retry.hold, for the status page (shared across reloads).
    holds: Holds = field(default_factory=Holds)
    attempts: AttemptRunner = field(init=False)

    def __post_init__(self) -> None:
        self.attempts = AttemptRunner(
            self.config, self.transport, self.breakers, self.telemetry, self.providers, self.clock
        )

    async def run(
        self,
        request: ClientRequest,
        chain: Sequence[ModelConfig],
        labels: Labels,
        held: float = 0.0,
    ) -> Committed | Final:
        retry = self.config.retry
        # Per-request key choice; "session" affinity starts on the session's model.
        keyed = (
            for_request(self.keys, self.affinity, request, self.wall)
            if self.keys is not None
            else None
        )
        if keyed is not None:
            chain = keyed.session_chain(chain)
        last_key: int | None = None
        plan_chain = self.breakers.plan(chain)
        if len(plan_chain) != len(chain):
            skipped = [m.id for m in chain if m not in plan_chain]
            if labels.keep:
                step = (None, tuple(skipped))
                if labels.trail is None:
                    labels.trail = [step]
                else:
                    labels.trail.append(step)
            self.telemetry.skipped(labels.listener, skipped)
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
                    attempt = planner.next(Action.SKIP_MODEL)
                    continue
                wait = max(wait, remaining)
                attempt.wait = wait  # what the journal reports as waited
            if wait > 0:
                if deadline is not None and self.clock() + wait >= deadline:
                    planner.withdraw()
                    budget_spent = True
                    break
                await self.sleep(wait)
            # A model whose keys all sleep is left out, without an attempt.
            chosen: Chosen | None = None
            if keyed is not None:
                endpoint = self.config.endpoints[attempt.model.endpoint]
                chosen = keyed.choose(endpoint, last_key if attempt.is_retry else None)
                if chosen is None:
                    planner.withdraw()
                    attempt = planner.next(Action.SKIP_MODEL)
                    continue
                last_key = chosen.key.index if chosen.key is not None else None
            fallback = prev_index is not None and attempt.index != prev_index
            prev_index = attempt.index
            # Positional (identity=False, keyed, chosen): keyword arguments cost more.
            result = await self.attempts.run(
                request, attempt, labels, deadline, fallback, False, keyed, chosen
            )
            if not isinstance(result, Outcome):
                if isinstance(result, Committed):
                    result.chain = plan_chain
                later = attempt.index + 1
                if later < len(plan_chain) and not self.breakers.quiet:
                    for model in plan_chain[later:]:
                        self.breakers.release(model.id)
                return result
            last_model = attempt.model
            last_name = self.attempts.model_name(attempt.model, request)
            if result.snapshot is not None:
                last_response = result.snapshot
            if result.error is not None:
                last_error = result.error
            if result.retry_after is not None:
                not_before[attempt.index] = self.clock() + result.retry_after
            if deadline is not None and self.clock() >= deadline:
                budget_spent = True
                break
            if result.another_key:
                attempt = planner.another_key()
                continue
            attempt = planner.next(result.action, result.retry_after)
        attempts = planner.attempts_made
        # Every key limited: hold (retry.hold) or say when the earliest resets.
        end = keyed.at_end(chain, retry.hold - held) if keyed and not budget_spent else None
        if end is not None:
            if end.hold is not None:
                log = self.telemetry.log
                log.info("held", listener=labels.listener, wait_s=round(end.hold, 3))
                # A client that leaves cancels this task: the entry goes with the wait.
                try:
                    with self.holds.hold(labels.listener, end.hold):
                        await self.sleep(end.hold)
                except asyncio.CancelledError:
                    log.info("hold_cancelled", listener=labels.listener)
                    raise
                return await self.run(request, chain, labels, held + end.hold)
            if last_response is not None:
                last_response.headers = with_retry_after(last_response.headers, end.earliest)
            elif attempts == 0:
                made = all_sleeping_error(self.providers[labels.api_type], end.earliest)
                return Final(*made, 0, last_model, last_name, True, "every key is rate-limited")
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
        # In the client's API's error format (a chain may start with another family's model).
        provider = self.providers[labels.api_type]
        err = provider.error_body(
            status, f"hydrallm: {reason}", "timeout_error" if timed_out else "api_error"
        )
        headers = [("Content-Type", err.content_type), *err.headers]
        return Final(status, headers, err.body, attempts, last_model, last_name, True, reason)
