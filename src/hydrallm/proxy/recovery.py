"""Mid-stream recovery: finish a broken answer on the next model of the chain.

`make_recovery()` is called by the server for a committed stream; it returns the
`observe` / `recover` pair that `relay()` takes, and a `Committed` whose response
holds back upstream error events (so that an `overloaded_error` in the middle of an
answer is a break to recover from, not the last word the client reads).

On a break, `Recovery.recover()` tries, model by model (the ones after the broken one
in the chain), a continuation:

1. prefill: when the client has received only plain text, the original request with that
   text as a final assistant message; the answer is spliced on where the text stops;
2. restart: otherwise, or when the model refuses the prefill (a 4xx naming it), the
   original request again; its output is held back until it has reproduced what the
   client has, and relayed from there (`midstream.splice`).

Nothing reaches the client before the continuation has passed the usual peek and caught
up; if nothing works, `recover` returns False and the relay ends the stream with the
original failure as an error event.  Models that refuse prefill are remembered in
`RecoveryMemory`, which lives as long as the process (`ProxyState`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from hydrallm.config import ModelConfig
from hydrallm.errors import StreamFailure, UpstreamError
from hydrallm.formats.base import WireFormat
from hydrallm.formats.frames import EventSplitter, parse_event
from hydrallm.formats.peek import Commit
from hydrallm.formats.prefill import names_prefill
from hydrallm.formats.registry import select_format
from hydrallm.formats.splice import Mismatch, UpstreamFailed
from hydrallm.formats.transcript import Transcript
from hydrallm.providers.base import ClientRequest
from hydrallm.proxy.body import parse_body
from hydrallm.proxy.engine import Committed, Engine
from hydrallm.proxy.relay import Recover
from hydrallm.proxy.upstream import Response, read_body
from hydrallm.routing.pooling import ready_endpoint

ERROR_BODY_LIMIT = 64 * 1024


@dataclass(slots=True)
class RecoveryMemory:
    """Process-wide: the models that refused an assistant prefill (by model id)."""

    no_prefill: set[str] = field(default_factory=set)


class _Outcome(enum.Enum):
    DONE = "done"  # the answer is finished
    PREFILL_REFUSED = "prefill_refused"  # a 4xx naming the prefill: try a restart
    FAILED = "failed"  # try the next model (from wherever the client now is)
    CLIENT_GONE = "client_gone"  # nobody to finish the answer for


class GuardedResponse:
    """An upstream response whose error events become a `StreamFailure` instead of bytes.

    Bytes are handed on in whole events (a partial event is held until its end), so an
    error event can be caught before any of it is written to the client.
    """

    __slots__ = ("_failure", "_format", "_inner", "_split", "headers", "reason", "status")

    def __init__(self, inner: Response, fmt: WireFormat) -> None:
        self._inner = inner
        self._format = fmt
        self._split = EventSplitter()
        self._failure: str | None = None
        self.status: int = inner.status
        self.reason: str = inner.reason
        self.headers: CIMultiDictProxy[str] = inner.headers

    def hold(self, prefix: list[bytes]) -> list[bytes]:
        """Filter the bytes read before commit the same way (they reach the client first)."""
        passed = self._filter(b"".join(prefix))
        return [passed] if passed else []

    async def read_chunk(self) -> bytes:
        if self._failure is not None:
            raise StreamFailure(self._failure)
        while True:
            chunk = await self._inner.read_chunk()
            if not chunk:
                return self._split.flush()
            passed = self._filter(chunk)
            if passed:
                return passed
            if self._failure is not None:
                raise StreamFailure(self._failure)

    def _filter(self, chunk: bytes) -> bytes:
        """The whole events of `chunk` up to an error event (which sets `_failure`)."""
        events = self._split.feed(chunk)
        for i, raw in enumerate(events):
            if self._format.maybe_error(raw):
                event = parse_event(raw)
                if self._format.is_error_event(event):
                    self._failure = f"upstream error event: {_describe(event.data)}"
                    return b"".join(events[:i])
        return b"".join(events)

    def release(self) -> None:
        self._inner.release()

    def abort(self) -> None:
        self._inner.abort()


def _describe(data: dict[str, Any] | None) -> str:
    error = (data or {}).get("error")
    if not isinstance(error, dict):
        response = (data or {}).get("response")
        error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or "error"
        return f"{kind}: {error.get('message', '')}"
    return "error"


@dataclass(slots=True)
class Recovery:
    """One committed stream's recovery: wire `observe` and `recover` into `relay()`."""

    engine: Engine
    request: ClientRequest
    committed: Committed
    listener: str
    memory: RecoveryMemory
    transcript: Transcript
    format: WireFormat

    def observe(self, data: bytes) -> None:
        self.transcript.feed(data)

    async def recover(self, committed: Committed, out: web.StreamResponse, reason: str) -> bool:
        """Finish the answer on another model; False when it could not be done."""
        telemetry = self.engine.telemetry
        if self.transcript.done:
            return True  # the answer was complete; only the close was missing
        if self.transcript.finished:
            # Only the terminal event is missing: a continuation would finish twice.
            ending = self.format.terminal_event
            if ending is None:
                return False
            try:
                await self._write(out, ending)
            except ConnectionError:
                pass
            telemetry.recovery(self.listener, committed.model.id, "continued")
            return True
        for model in self._candidates(committed.model, committed.chain):
            mode = "prefill" if self._may_prefill(model) else "restart"
            while True:
                outcome = await self._try(model, mode, out)
                if outcome is _Outcome.CLIENT_GONE:
                    return True
                if outcome is _Outcome.DONE:
                    action = "continued" if mode == "prefill" else "restarted-matched"
                    telemetry.recovery(self.listener, model.id, action)
                    return True
                if outcome is _Outcome.PREFILL_REFUSED and mode == "prefill":
                    if self.engine.config.endpoints[model.endpoint].prefill == "auto":
                        self.memory.no_prefill.add(model.id)
                    mode = "restart"
                    continue
                break
        telemetry.recovery(self.listener, committed.model.id, "gave-up")
        return False

    def _candidates(self, broken: ModelConfig, chain: Sequence[ModelConfig]) -> list[ModelConfig]:
        """The models after the broken one in the chain, that speak the client's API."""
        at = next((i for i, m in enumerate(chain) if m.id == broken.id), len(chain))
        providers = self.engine.providers
        return [
            m
            for m in chain[at + 1 :]
            if m.type == broken.type and providers[m.type].supports_recovery
        ]

    def _may_prefill(self, model: ModelConfig) -> bool:
        setting = self.engine.config.endpoints[model.endpoint].prefill
        if setting == "no" or (setting == "auto" and model.id in self.memory.no_prefill):
            return False
        text = self.transcript.prefill_text()
        return text is not None and bool(text.strip())

    def _body(self, mode: str, model: ModelConfig) -> tuple[bytes, str | None]:
        text = self.transcript.prefill_text() if mode == "prefill" else None
        if text is None or self.request.json is None:
            return self.request.body, None
        try:
            original = json.loads(self.request.body)
        except ValueError:
            return self.request.body, None
        if not isinstance(original, dict):
            return self.request.body, None
        flag = self.engine.config.endpoints[model.endpoint].prefill_flag
        body = self.format.prefill_body(original, text, flag)
        if body is None:
            return self.request.body, None
        return body, text.rstrip()

    async def _try(self, model: ModelConfig, mode: str, out: web.StreamResponse) -> _Outcome:
        engine = self.engine
        retry = engine.config.retry
        # [keys] a ready key of the endpoint's pool (issue 15)
        endpoint = ready_endpoint(engine.keys, engine.config.endpoints[model.endpoint])
        provider = engine.providers[model.type]
        body, prefilled = self._body(mode, model)
        request = dataclasses.replace(self.request, body=body, json=parse_body(body))
        response: Response | None = None
        try:
            outgoing = await provider.prepare(model, endpoint, request)
            # The splice reads the bytes: ask for them uncompressed.
            headers = [(k, v) for k, v in outgoing.headers if k.lower() != "accept-encoding"]
            headers.append(("Accept-Encoding", "identity"))
            held: list[bytes] = []
            async with asyncio.timeout(retry.first_token_timeout):
                response = await engine.transport.send(
                    request.method, outgoing.url, headers, outgoing.body
                )
                status = response.status
                if status >= 300:
                    error = await read_body(response, ERROR_BODY_LIMIT)
                    response.release()
                    response = None
                    return self._refusal(mode, status, error)
                fmt = select_format(
                    response.headers.get("Content-Type", ""),
                    api=model.type,
                    path=request.path,
                    streaming=True,
                )
                if fmt is not self.format or response.headers.get(
                    "Content-Encoding", "identity"
                ) not in ("identity", ""):
                    raise StreamFailure("the continuation is not a stream of the same format")
                peeker = fmt.peeker()
                while True:
                    chunk = await response.read_chunk()
                    verdict = peeker.feed(chunk) if chunk else peeker.eof()
                    if chunk:
                        held.append(chunk)
                    if verdict is None:
                        continue
                    if not isinstance(verdict, Commit):
                        raise StreamFailure(f"{verdict.kind}: {verdict.message}")
                    break
            splicer = self.format.splicer(self.transcript, prefilled)
            for chunk in held:
                await self._write(out, splicer.feed(chunk))
            while True:
                async with asyncio.timeout(retry.stream_idle_timeout):
                    chunk = await response.read_chunk()
                if not chunk:
                    await self._write(out, splicer.eof())
                    response.release()
                    response = None
                    if not splicer.finished:
                        splicer.aligner.finish()
                    return _Outcome.DONE
                await self._write(out, splicer.feed(chunk))
        except asyncio.CancelledError:
            if response is not None:
                response.abort()
            raise
        except ConnectionError:
            if response is not None:
                response.abort()
            return _Outcome.CLIENT_GONE
        except (TimeoutError, UpstreamError, UpstreamFailed, Mismatch) as exc:
            if response is not None:
                response.abort()
            self._note(model, mode, exc)
            return _Outcome.FAILED

    def _refusal(self, mode: str, status: int, error: bytes) -> _Outcome:
        if mode == "prefill" and 400 <= status < 500 and names_prefill(error):
            return _Outcome.PREFILL_REFUSED
        return _Outcome.FAILED

    async def _write(self, out: web.StreamResponse, data: bytes) -> None:
        if data:
            self.transcript.feed(data)
            await out.write(data)

    def _note(self, model: ModelConfig, mode: str, exc: BaseException) -> None:
        self.engine.telemetry.log.info(
            "stream_recovery_attempt",
            listener=self.listener,
            model=model.id,
            mode=mode,
            error=str(exc) or type(exc).__name__,
        )


@dataclass(frozen=True, slots=True)
class RelayHooks:
    """What `relay()` takes for a committed response: itself, `observe`, `recover`."""

    committed: Committed
    observe: Callable[[bytes], None] | None = None
    recover: Recover | None = None


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
    transcript = fmt.new_transcript()
    recovery = Recovery(engine, request, committed, listener, memory, transcript, fmt)
    response = GuardedResponse(committed.response, fmt)
    guarded = dataclasses.replace(
        committed, response=response, prefix=response.hold(committed.prefix)
    )
    return RelayHooks(guarded, recovery.observe, recovery.recover)
