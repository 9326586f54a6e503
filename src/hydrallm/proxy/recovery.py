"""Mid-stream recovery: finish a broken answer on the next model of the chain.

`make_recovery()` is called by the server for a committed stream; it returns the
`observe` / `recover` pair that `relay()` takes, and a `Committed` whose response
holds back upstream error events (so that an `overloaded_error` in the middle of an
answer is a break to recover from, not the last word the client reads).

On a break, `Recovery.recover()` tries, model by model (the ones after the broken one
in the chain), a continuation:

1. prefill: when the client has received only plain text and the model is expected to
   continue it (`prefill = "auto"`: Anthropic Messages without thinking, OpenAI chat
   with a `prefill_flag`, never Responses), the original request with that text as a
   final assistant message.  Its answer is read until `PrefillProbe` can tell whether the
   model continued (spliced on where the text stops) or ignored the prefill and answered
   anew (restating the opening: handled as a restart, never appended);
2. restart: otherwise, or when the model refuses the prefill (a 4xx naming it), the
   original request again; its output is held back until it has reproduced what the
   client has, and relayed from there (`formats.splice`), in the client's ids.

Across families (issue 16), the next model of ANY type that serves the client's API
continues: `proxy.attempt` translates the continuation for it and reads its answer back in
the client's format, so the splice, the prefix check and the ids work as for one family.
A prefill then goes in the TARGET's terms (a `translated.Continuation`: appended after
translation, with the target's own continuation flag), and is offered by the target's
rules (`prefill = "auto"`: an Anthropic target unless its translated request thinks, a
chat target with a `prefill_flag`, never Responses nor Gemini).  Thinking signed by one
provider never reaches another: the continuation is the client's request, translated as
any attempt is (foreign signed and redacted thinking stripped).

Every continuation is one attempt of `proxy.attempt` (the request's time budget, the
breakers, attempt telemetry and the peek hold for it as for any other); nothing reaches the
client before it has passed the peek and caught up; if nothing works, `recover` returns False and the relay ends the stream with an
error event.  Models that refuse or ignore prefill are remembered in `RecoveryMemory`,
which lives as long as the process (`ProxyState`).  Past `retry.midstream_max_bytes`
relayed, a stream is no longer kept: a break then ends it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import Any

from hydrallm.config import ModelConfig, PrefillFlag
from hydrallm.dataclass import dataclass
from hydrallm.errors import UpstreamError
from hydrallm.formats.body import parse_body
from hydrallm.formats.frames import EventTooLong
from hydrallm.formats.prefill import PrefillProbe, auto_prefill, names_prefill
from hydrallm.formats.splice import Mismatch, UpstreamFailed
from hydrallm.formats.transcript import Transcript
from hydrallm.providers.base import ClientRequest
from hydrallm.proxy.attempt import Committed, Final, Outcome
from hydrallm.proxy.engine import Engine
from hydrallm.proxy.guard import GuardedResponse
from hydrallm.proxy.relay import Recover
from hydrallm.proxy.translated import Continuation, client_api, foreign_prefill, same_terms, serves
from hydrallm.proxy.wire import StreamResponse
from hydrallm.routing.plan import Attempt
from hydrallm.routing.pooling import for_request

__all__ = ["GuardedResponse", "Recovery", "RecoveryMemory", "RelayHooks", "make_recovery"]


@dataclass(slots=True)
class RecoveryMemory:
    """Process-wide: the models that refused, or ignored, an assistant prefill (by id)."""

    no_prefill: set[str] = field(default_factory=set)  # answered 400 naming the prefill
    ignores_prefill: set[str] = field(default_factory=set)  # answered anew


class _Outcome(enum.Enum):
    DONE = "done"  # the answer is finished
    PREFILL_REFUSED = "prefill_refused"  # a 4xx naming the prefill: try a restart
    FAILED = "failed"  # try the next model (from wherever the client now is)
    CLIENT_GONE = "client_gone"  # nobody to finish the answer for


@dataclass(slots=True)
class Recovery:
    """One committed stream's recovery: wire `observe` and `recover` into `relay()`.

    After `recover`, `served_by` names the model that finished the answer and `result` is
    `prefill`, `restart` or `gave_up` (None: no recovery was attempted).
    """

    engine: Engine
    request: ClientRequest
    committed: Committed
    listener: str
    memory: RecoveryMemory
    transcript: Transcript
    guarded: GuardedResponse | None = None
    relayed: int = 0  # body bytes written to the client
    kept: bool = True  # False once past midstream_max_bytes: the stream is not recoverable
    served_by: str | None = None
    result: str | None = None
    number: int = 0  # attempts made for this request so far (the plan's, then recovery's)
    _original: dict[str, Any] | None = None

    def observe(self, data: bytes) -> None:
        self.relayed += len(data)
        if not self.kept:
            return
        if self.relayed > self.engine.config.retry.midstream_max_bytes:
            # Keep memory bounded: what the client has is no longer kept, so no recovery.
            self.kept = False
            self.transcript = Transcript(self.transcript.kind)
            return
        self.transcript.feed(data)

    async def recover(self, committed: Committed, out: StreamResponse, reason: str) -> bool:
        """Finish the answer on another model; False when it could not be done."""
        telemetry = self.engine.telemetry
        broken = committed.model.id
        if not self.kept or (self.guarded is not None and self.guarded.oversized):
            self._note(committed.model, "none", reason)
            return False
        if self.transcript.done:
            return True  # the answer was complete; only the close was missing
        if self.transcript.finished:
            # Only the terminal event is missing: a continuation would finish twice.
            ending = self.committed.format.terminal_event if self.committed.format else None
            if ending is None:
                return False
            try:
                await self._write(out, ending)
            except ConnectionError:
                pass
            return True  # nothing was recovered: the answer was whole, its close is added
        for model in self._candidates(committed.model, committed.chain):
            mode = "prefill" if self._may_prefill(model) else "restart"
            while True:
                outcome, used = await self._try(model, mode, out)
                if outcome is _Outcome.CLIENT_GONE:
                    if self.transcript.done:
                        # The client left right after the answer's end: it was recovered.
                        self._done(broken, model.id, used)
                    return True
                if outcome is _Outcome.DONE:
                    self._done(broken, model.id, used)
                    return True
                if outcome is _Outcome.PREFILL_REFUSED and mode == "prefill":
                    if self.engine.config.endpoints[model.endpoint].prefill == "auto":
                        self.memory.no_prefill.add(model.id)
                    mode = "restart"
                    continue
                break
        self.result = "gave_up"
        telemetry.recovery(self.listener, broken, "gave_up")
        return False

    def _done(self, broken: str, served_by: str, result: str) -> None:
        self.served_by, self.result = served_by, result
        self.engine.telemetry.log.info(
            "stream_recovered", listener=self.listener, served_by=served_by, recovered=result
        )
        self.engine.telemetry.recovery(self.listener, broken, result)

    def _candidates(self, broken: ModelConfig, chain: Sequence[ModelConfig]) -> list[ModelConfig]:
        """The models after the broken one in the chain that can finish the client's answer:
        natively (their provider's streams are recoverable) or by translation (the answer
        is read back in the client's format, which is)."""
        at = next((i for i, m in enumerate(chain) if m.id == broken.id), len(chain))
        providers = self.engine.providers
        client = client_api(self.request)
        out = []
        for m in chain[at + 1 :]:
            if client is None:  # not a translatable API: only a model of the same type
                how = "native" if m.type == broken.type else None
            else:
                how = serves(client, m)
            if how is None:
                continue
            if how == "native" and not providers[m.type].supports_recovery:
                continue
            out.append(m)
        return out

    def _may_prefill(self, model: ModelConfig) -> bool:
        endpoint = self.engine.config.endpoints[model.endpoint]
        setting = endpoint.prefill
        if setting == "no":
            return False
        text = self.transcript.prefill_text()
        if text is None or not text.strip():
            return False
        if setting == "yes":
            return True
        memory = self.memory
        if model.id in memory.no_prefill or model.id in memory.ignores_prefill:
            return False
        foreign = foreign_prefill(
            self.request,
            model,
            endpoint.prefill_flag,
            lambda: self.engine.attempts.model_name(model, self.request),
        )
        if foreign is not None:  # another family: the target's rules
            return foreign
        return auto_prefill(self.transcript.kind, endpoint.prefill_flag, self._body_dict())

    def _body_dict(self) -> dict[str, Any] | None:
        if self._original is None and self.request.json is not None:
            try:
                original = json.loads(self.request.body)
            except ValueError:
                return None
            self._original = original if isinstance(original, dict) else None
        return self._original

    def _continuation(self, mode: str, model: ModelConfig) -> tuple[ClientRequest, str | None]:
        """The request for `model` and the text it is prefilled with (None: a restart)."""
        text = self.transcript.prefill_text() if mode == "prefill" else None
        original = self._body_dict()
        if text is None or original is None or not text.rstrip():
            return self.request, None
        flag: PrefillFlag = self.engine.config.endpoints[model.endpoint].prefill_flag
        if not same_terms(self.request, model):
            # Another family: the prefill is appended in the target's terms, after the
            # request is translated (`translated.translation_for`).
            return Continuation.of(self.request, text.rstrip(), flag), text.rstrip()
        fmt = self.committed.format
        body = fmt.prefill_body(original, text, flag) if fmt is not None else None
        if body is None:
            return self.request, None
        return dataclasses.replace(self.request, body=body, json=parse_body(body)), text.rstrip()

    async def _try(
        self, model: ModelConfig, mode: str, out: StreamResponse
    ) -> tuple[_Outcome, str]:
        """One continuation on `model`; also says how it went on (`prefill`/`restart`)."""
        engine = self.engine
        retry = engine.config.retry
        request, prefilled = self._continuation(mode, model)
        used = "prefill" if prefilled is not None else "restart"
        broken = self.committed
        self.number += 1
        attempt = Attempt(
            model=model,
            index=next((i for i, m in enumerate(broken.chain) if m.id == model.id), 0),
            cycle=broken.attempt.cycle,
            try_no=1,
            number=self.number,
            wait=0.0,
            is_retry=False,
        )
        keyed = for_request(engine.keys, None, request, engine.wall)
        chosen = keyed.choose(engine.config.endpoints[model.endpoint]) if keyed else None
        if keyed is not None and chosen is None:
            self._note(model, mode, "every key of the endpoint is rate-limited")
            return _Outcome.FAILED, used
        # The splice reads the bytes: the continuation is asked for uncompressed.
        result = await engine.attempts.run(
            request,
            attempt,
            broken.labels,
            broken.deadline,
            True,
            identity=True,
            keyed=keyed,
            chosen=chosen,
        )
        if isinstance(result, Outcome):
            error = result.error.message if result.error is not None else None
            if result.snapshot is not None:
                error = f"HTTP {result.snapshot.status}"
            self._note(model, mode, error or "the attempt failed")
            return _Outcome.FAILED, used
        if isinstance(result, Final):
            return self._refusal(mode, result.status, result.body), used
        committed = result
        response = committed.response
        fmt = broken.format
        try:
            if committed.format is not fmt or response.headers.get(
                "Content-Encoding", "identity"
            ) not in ("identity", ""):
                raise UpstreamFailed("the continuation is not a stream of the same format")
            held = list(committed.prefix)
            ended = committed.complete
            if prefilled is not None:
                # Not one byte of a prefilled answer goes out before it is known to continue.
                probe = PrefillProbe(self.transcript.kind, prefilled)
                said = probe.feed(b"".join(held))
                while said is None and not ended:
                    async with asyncio.timeout(retry.stream_idle_timeout):
                        chunk = await response.read_chunk()
                    if chunk:
                        held.append(chunk)
                        said = probe.feed(chunk)
                    else:
                        ended = True
                if probe.eof() == "restated":
                    # The model ignored the prefill and answered anew: a restart, never
                    # appended; remembered so that this model is not offered one again.
                    self.memory.ignores_prefill.add(model.id)
                    self._note(model, mode, "ignored the prefill (answered anew)")
                    prefilled, used = None, "restart"
            assert fmt is not None
            splicer = fmt.splicer(self.transcript, prefilled)
            for chunk in held:
                await self._write(out, splicer.feed(chunk))
            while not ended:
                async with asyncio.timeout(retry.stream_idle_timeout):
                    chunk = await response.read_chunk()
                if not chunk:
                    break
                await self._write(out, splicer.feed(chunk))
            await self._write(out, splicer.eof())
            if not splicer.finished:
                splicer.aligner.finish()
                # A stream that ends without its finish is not a whole answer.
                raise UpstreamFailed("the continuation ended without finishing the answer")
            response.release()
            engine.attempts.stream_ended(committed, None)
            return _Outcome.DONE, used
        except asyncio.CancelledError:
            response.abort()
            raise
        except ConnectionError:
            response.abort()
            return _Outcome.CLIENT_GONE, used
        except (TimeoutError, UpstreamError, UpstreamFailed, Mismatch, EventTooLong) as exc:
            response.abort()
            if not isinstance(exc, Mismatch):
                # A break of the continuation itself counts against its model; a restart
                # that answers differently is no sign that the model is unwell.
                engine.attempts.stream_ended(committed, str(exc) or type(exc).__name__)
            self._note(model, mode, str(exc) or type(exc).__name__)
            return _Outcome.FAILED, used

    def _refusal(self, mode: str, status: int, error: bytes) -> _Outcome:
        # Gemini's refusal names the "model turn" the request ends with.
        refused = names_prefill(error) or b"model turn" in error[:8192]
        if mode == "prefill" and 400 <= status < 500 and refused:
            return _Outcome.PREFILL_REFUSED
        return _Outcome.FAILED

    async def _write(self, out: StreamResponse, data: bytes) -> None:
        if data:
            self.transcript.feed(data)
            await out.write(data)

    def _note(self, model: ModelConfig, mode: str, error: str) -> None:
        self.engine.telemetry.log.info(
            "stream_recovery_attempt",
            listener=self.listener,
            model=model.id,
            mode=mode,
            error=error,
        )


@dataclass(frozen=True, slots=True)
class RelayHooks:
    """What `relay()` takes for a committed response: itself, `observe`, `recover`."""

    committed: Committed
    observe: Callable[[bytes], None] | None = None
    recover: Recover | None = None
    # After the relay: `recovery.served_by` and `recovery.result` (prefill/restart/gave_up)
    # for the request's log line and status entry.
    recovery: Recovery | None = None


def make_recovery(
    engine: Engine,
    request: ClientRequest,
    committed: Committed,
    listener: str,
    memory: RecoveryMemory,
) -> RelayHooks:
    """The relay hooks for a committed response (none when it cannot be recovered)."""
    fmt = committed.format
    if engine.config.retry.midstream != "continue" or fmt is None or not fmt.supports_recovery:
        return RelayHooks(committed)
    if committed.complete or request.json is None:
        return RelayHooks(committed)
    encoding = committed.response.headers.get("Content-Encoding", "identity").lower()
    if encoding not in ("identity", ""):
        return RelayHooks(committed)
    recovery = Recovery(engine, request, committed, listener, memory, fmt.new_transcript())
    recovery.number = committed.attempts
    response = GuardedResponse(committed.response, fmt)
    recovery.guarded = response
    guarded = dataclasses.replace(
        committed, response=response, prefix=response.hold(committed.prefix)
    )
    return RelayHooks(guarded, recovery.observe, recovery.recover, recovery)
