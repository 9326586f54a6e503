"""`FakeUpstream`: an aiohttp server that answers like an LLM provider, and misbehaves on cue.

    async with FakeUpstream() as fake:
        fake.script(faults.status(429, retry_after=1), faults.reset_mid_stream(3))
        ...  # the first request gets a 429, the second a reset stream, the rest answer

Paths are routed by their ending, so any base path works: `.../chat/completions`
(OpenAI chat), `.../responses` (OpenAI Responses), `.../messages` (Anthropic),
`.../messages/count_tokens` and `.../models`. A JSON body with `"stream": true`
gets a server-sent-event stream.

A request that ends in an assistant turn (a prefill) is answered as the real provider
would (`testing.prefill`: Anthropic continues, or refuses for Claude 4.6+ and with
thinking on; OpenAI answers anew unless a chat request carries a continuation flag);
`prefill=` chooses another behaviour.  With `vary=True` every answer is a new sample:
the opening is the same, the middle differs between models and between requests, as
two samples of a real model do.  Tool call ids and thinking signatures are new in every
answer, as on the real APIs.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from hydrallm.testing import prefill_rules as prefills
from hydrallm.testing.answers import (
    CANONICAL_TEXT,
    AnswerSpec,
    Api,
    api_for_path,
    error_body,
    error_event,
    json_answer,
    models_body,
    stream_answer,
)
from hydrallm.testing.exchange import Exchange, RecordedRequest, Sink
from hydrallm.testing.faults import FailureMix, Fault, Reset
from hydrallm.testing.service import WebFake
from hydrallm.testing.wire import fresh_call, sample_text

__all__ = ["FakeUpstream", "RecordedRequest", "sample_text"]

_ANTHROPIC_APIS = (Api.MESSAGES, Api.COUNT_TOKENS)


class FakeUpstream(WebFake):
    """An aiohttp server on 127.0.0.1:<random port> answering as an LLM provider.

    Each request takes the next fault queued with `script()`; when the script is
    empty, one drawn from `failure_mix` (seeded by `rng_seed`), else `default`,
    else a normal answer. Every request is recorded in `requests`, aborted or not.
    """

    def __init__(
        self,
        *,
        name: str = "fake",
        text: str = CANONICAL_TEXT,
        chunk_words: int = 1,
        default: Fault | None = None,
        rng_seed: int | None = None,
        failure_mix: FailureMix | None = None,
        models: tuple[str, ...] = ("fake-model",),
        host: str = "127.0.0.1",
        port: int = 0,
        prefill: prefills.PrefillBehaviour | Mapping[str, prefills.PrefillBehaviour] | None = None,
        vary: bool = False,
    ) -> None:
        self.name = name
        # None: each model behaves as its real provider; a str: every model; a mapping:
        # per model name (others as their provider).
        self.prefill = prefill
        self.vary = vary
        self.prefills: list[str] = []  # the assistant prefills received, in order
        self.text = text
        self.chunk_words = chunk_words
        self.default = default or Fault()
        self.failure_mix = failure_mix
        self.models = models
        self.requests: list[RecordedRequest] = []
        # Requests whose client went away before the fake had finished answering.
        self.aborted = 0
        self._host = host
        self._port = port
        self._rng = random.Random(rng_seed)
        self._script: deque[Fault] = deque()
        self._closing = False
        self._closed = asyncio.Event()
        self._abort_seen = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------

    async def close(self) -> None:
        """Drop every connection at once and stop listening."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        self._closed.set()
        if runner.server is not None:
            for connection in runner.server.connections:
                if connection.transport is not None:
                    connection.transport.abort()
        await runner.cleanup()

    # --- control and observation -------------------------------------------------------

    def script(self, *faults: Fault) -> None:
        """Queue faults: the next requests get them in order, then the default."""
        self._script.extend(faults)

    @property
    def pending(self) -> int:
        """Scripted faults not used yet."""
        return len(self._script)

    @property
    def open_connections(self) -> int:
        """Client connections currently open."""
        server = self._runner.server if self._runner else None
        return len(server.connections) if server is not None else 0

    async def wait_aborted(self, count: int = 1, timeout: float = 1.0) -> None:
        """Wait until `count` requests in all have seen their client go away."""
        async with asyncio.timeout(timeout):
            while self.aborted < count:
                # Single-threaded: nothing can set the event between clear and wait.
                self._abort_seen.clear()
                await self._abort_seen.wait()

    async def wait_idle(self, timeout: float = 1.0) -> None:
        """Wait until no client connection is open."""
        # aiohttp offers no hook for a closed connection; a short poll is enough here.
        async with asyncio.timeout(timeout):
            while self.open_connections:
                await asyncio.sleep(0.005)

    # --- answering --------------------------------------------------------------------

    def _next_fault(self) -> Fault:
        if self._script:
            return self._script.popleft()
        if self.failure_mix is not None:
            return self.failure_mix.choose(self._rng)
        return self.default

    def prefill_behaviour(
        self, api: Api | None, model: str, payload: Mapping[str, Any]
    ) -> prefills.PrefillBehaviour:
        """What `model` does with a prefilled request (see `testing.prefill`)."""
        chosen = self.prefill
        if isinstance(chosen, str):
            return chosen
        if chosen is not None and model in chosen:
            return chosen[model]
        return prefills.default_behaviour(api, model, payload)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        api = api_for_path(request.path)
        payload = _json_object(body)
        model = payload.get("model")
        name = model if isinstance(model, str) else self.models[0]
        prefix = None
        if api in (Api.CHAT, Api.RESPONSES, Api.MESSAGES):
            prefix = prefills.assistant_prefill(api, payload)
        behaviour: prefills.PrefillBehaviour = "ignore"
        refused: Fault | None = None
        if prefix is not None:
            self.prefills.append(prefix)
            behaviour = self.prefill_behaviour(api, name, payload)
            # Validation comes before anything else: a scripted fault waits for the next.
            refused = prefills.refusal(behaviour, api, payload)
        fault = refused or self._next_fault()
        stream = payload.get("stream") is True
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query_string=request.query_string,
                headers=CIMultiDict(request.headers),
                body=body,
                received_at=time.monotonic(),
                model=model if isinstance(model, str) else None,
                stream=stream,
                api=api,
                fault=fault,
            )
        )
        answer_id = f"{self.name}{len(self.requests):04d}"
        text = fault.text if fault.text is not None else self.text
        thinking = fault.thinking
        if self.vary:
            text = sample_text(text, name, len(self.requests))
            thinking = sample_text(thinking, name, len(self.requests)) if thinking else None
        if prefix is not None and behaviour != "ignore" and refused is None:
            # A model that takes the prefill answers with what follows it, and thinks no
            # more (its reasoning would have come before the prefilled text).
            text = text[len(prefix) :]
            thinking = None
        options = payload.get("stream_options")
        spec = AnswerSpec(
            model=name,
            answer_id=answer_id,
            text=text,
            chunk_words=self.chunk_words,
            input_tokens=max(1, len(body) // 4),
            tool_call=fresh_call(fault.tool_call, answer_id),
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            thinking=thinking,
        )
        ex = Exchange(request, api, payload, fault, spec, extra_headers=dict(fault.headers))
        try:
            return await self._answer(ex)
        except asyncio.CancelledError:
            self._note_client_gone(ex)
            raise
        except ConnectionError:
            self._note_client_gone(ex)
            # aiohttp finds the connection dead when finishing this response, quietly.
            return ex.response or web.Response()

    def _note_client_gone(self, ex: Exchange) -> None:
        if not ex.aborted_by_us and not self._closing:
            self.aborted += 1
            self._abort_seen.set()

    async def _answer(self, ex: Exchange) -> web.StreamResponse:
        fault = ex.fault
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.hang:
            await self._closed.wait()
            return self._abort(ex)
        if fault.reset is Reset.BEFORE_HEADERS:
            return self._abort(ex)
        code = fault.status_code
        if fault.anthropic_status is not None and ex.api in _ANTHROPIC_APIS:
            code = fault.anthropic_status
        if code != 200 or fault.body is not None:
            return self._status_answer(ex, code)
        if ex.api is None:
            return self._status_answer(ex, 404)
        if ex.payload.get("stream") is True and ex.api in (Api.CHAT, Api.RESPONSES, Api.MESSAGES):
            return await self._stream(ex)
        if fault.error_kind is not None:
            # A non-streaming request cannot carry an error event: the provider says the
            # same thing with an overloaded status (529 on Anthropic paths, 503 elsewhere).
            code = 529 if ex.api in _ANTHROPIC_APIS else 503
            body = _encode(error_body(ex.api, code, fault.error_message, kind=fault.error_kind))
            headers = {"Content-Type": "application/json", **ex.extra_headers}
            return web.Response(status=code, body=body, headers=headers)
        return await self._single(ex, self._json_body(ex))

    def _status_answer(self, ex: Exchange, code: int) -> web.Response:
        body = ex.fault.body
        if body is None:
            body = _encode(error_body(ex.api, code))
        headers = {"Content-Type": "application/json", **ex.extra_headers}
        return web.Response(status=code, body=body, headers=headers)

    def _json_body(self, ex: Exchange) -> bytes:
        api = ex.api
        if api is Api.MODELS:
            anthropic = "anthropic-version" in ex.request.headers
            return _encode(models_body(self.models, anthropic=anthropic, owner=self.name))
        assert api is not None
        return _encode(json_answer(api, ex.spec))

    async def _single(self, ex: Exchange, body: bytes) -> web.StreamResponse:
        fault = ex.fault
        headers = {"Content-Type": "application/json", **ex.extra_headers}
        if fault.gzip:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        timed = fault.reset or fault.stall or fault.first_event_delay or fault.chunk_interval
        if not timed:
            return web.Response(body=body, headers=headers)
        response = web.StreamResponse(headers=headers)
        response.content_length = len(body)
        await self._prepare(ex, response)
        if fault.reset is Reset.AFTER_HEADERS:
            return self._abort(ex)
        if fault.first_event_delay:
            await asyncio.sleep(fault.first_event_delay)
        half = len(body) // 2
        sink = Sink(response, compress=False)
        if await self._send_chunks(ex, sink, (body[:half], body[half:]), None):
            await sink.finish()
        return response

    async def _stream(self, ex: Exchange) -> web.StreamResponse:
        fault, spec = ex.fault, ex.spec
        assert ex.api is not None
        stream = stream_answer(ex.api, spec)
        headers = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            **ex.extra_headers,
        }
        if fault.gzip:
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(headers=headers)
        await self._prepare(ex, response)
        sink = Sink(response, compress=fault.gzip)
        if fault.reset is Reset.AFTER_HEADERS:
            return self._abort(ex)
        if fault.first_event_delay:
            await asyncio.sleep(fault.first_event_delay)
        error: bytes | None = None
        if fault.error_kind is not None:
            at = 0 if fault.error_first else len(stream.head) + fault.after_chunks
            error = error_event(
                ex.api, fault.error_kind, fault.error_message, spec=spec, sequence_number=at
            )
            if fault.error_first:
                await sink.send(error)
                await sink.finish()
                return response
        for event in stream.head:
            await sink.send(event)
        if not await self._send_chunks(ex, sink, stream.content, error):
            return response
        for event in stream.tail:
            await sink.send(event)
        if not fault.omit_done:
            for event in stream.terminal:
                await sink.send(event)
        await sink.finish()
        return response

    async def _send_chunks(
        self, ex: Exchange, sink: Sink, chunks: tuple[bytes, ...], error: bytes | None
    ) -> bool:
        """Send content chunks with the fault's timing; False when the answer ended early."""
        fault = ex.fault
        cut = min(fault.after_chunks, len(chunks))
        for i in range(len(chunks) + 1):
            if i == cut:
                if fault.reset is Reset.MID_STREAM:
                    self._abort(ex)
                    return False
                if error is not None:
                    await sink.send(error)
                    await sink.finish()
                    return False
                if fault.stall:
                    await asyncio.sleep(fault.stall)
            if i == len(chunks):
                break
            if i and fault.chunk_interval:
                await asyncio.sleep(fault.chunk_interval)
            await sink.send(chunks[i])
        return True

    async def _prepare(self, ex: Exchange, response: web.StreamResponse) -> None:
        ex.response = response
        await response.prepare(ex.request)

    def _abort(self, ex: Exchange) -> web.StreamResponse:
        """Reset the connection (RST, not FIN) and give aiohttp something to discard."""
        ex.aborted_by_us = True
        transport = ex.request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0 makes close() send a RST, as a crashed or killed peer would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return ex.response or web.Response()


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()
