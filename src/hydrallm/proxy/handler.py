"""The client-facing side: one request handler per listener (served by `h1server`).

Per request: reserved `/_hydrallm/` paths are answered here and never forwarded; proxy auth;
path safety; the body is read (bounded in size and time); the route picks a chain; the
engine runs the plan up to the commit point; then the response is written (whole, or
relayed as it streams).  There is exactly one route: no router, no middleware.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable

from hydrallm.app.runtime import ListenerRuntime, ProxyState
from hydrallm.config import ApiType
from hydrallm.formats.body import BodyError, looks_like_json, parse_body, parse_strict
from hydrallm.observe.events import RequestEvent
from hydrallm.observe.rowcodec import usage_slice
from hydrallm.observe.usage import SESSION_NAMES, UsageMeter, session_hash
from hydrallm.providers.base import ClientRequest, Provider
from hydrallm.providers.urls import UnsafePath, check_path, scrub_upstream
from hydrallm.proxy import admin
from hydrallm.proxy.client_headers import auth_ok, forwarded_headers, readable_encoding, tags
from hydrallm.proxy.engine import Committed, Engine, Final, Labels
from hydrallm.proxy.recovery import Recovery, make_recovery
from hydrallm.proxy.relay import bound_send_queue, relay, return_freed_memory
from hydrallm.proxy.translated import client_type
from hydrallm.proxy.upstream import message_headers
from hydrallm.proxy.wire import (
    BodyTooLarge,
    Handler,
    Request,
    RequestBodyError,
    Response,
    StreamResponse,
    json_response,
)

_JSON_START = frozenset(b"{ \t\r\n")
# The types whose requests carry a `model` the proxy rewrites (Bedrock's is in the path).
_REWRITTEN = frozenset({"openai", "anthropic"})


def make_handler(state: ProxyState, listener_name: str) -> Handler:
    """The request handler of one listener."""
    # Paths that passed check_path, with the client's API type they speak (by the listener's
    # API type too): an agent sends the same few paths all day, and checking and classifying
    # each costs a few µs.  Bounded: a client may send any number of distinct paths.
    checked: dict[tuple[str, str], ApiType] = {}

    # Not a coroutine itself: it returns the one that answers (one coroutine frame less
    # per request, on every resume too).
    def handle(request: Request) -> Awaitable[Response | StreamResponse]:
        runtime = state.current
        path, _, query = request.raw_path.partition("?")
        if path.startswith(admin.PREFIX):
            return admin.handle(request, state, listener_name, path)
        if path == "/" and request.method in ("HEAD", "GET"):
            # Clients probe the base URL (Claude Code sends `HEAD /` at startup): no API
            # path, so nothing to forward; spending a chain attempt and a key on it is waste.
            return _ready(
                Response(200, body=b"hydrallm\n", content_type="text/plain; charset=utf-8")
            )
        listener = runtime.listeners.get(listener_name)
        if listener is None:
            return _ready(_plain_error(503, "this listener is shutting down"))
        known = checked.get((path, listener.api_type))
        exchange = _Exchange(state, runtime.engine, listener, request, path, known)
        if known is None:
            try:
                check_path(path)
            except UnsafePath as exc:
                exchange.unsafe = str(exc)
            else:
                if len(checked) >= 1024:
                    checked.clear()
                checked[(path, listener.api_type)] = exchange.api_type
        return exchange.proxy(query)

    return handle


async def _ready(response: Response) -> Response:
    return response


class _Exchange:
    """One client request on its way through the proxy (what the log line reports)."""

    __slots__ = (
        "api_type",
        "body",
        "engine",
        "labels",
        "listener",
        "meter",
        "metered",
        "path",
        "provider",
        "request",
        "request_id",
        "requested",
        "route",
        "session",
        "started",
        "state",
        "trim",
        "unsafe",
        "wall",
    )

    def __init__(
        self,
        state: ProxyState,
        engine: Engine,
        listener: ListenerRuntime,
        request: Request,
        path: str,
        api_type: ApiType | None = None,
    ) -> None:
        self.started = time.monotonic()
        self.wall = time.time()
        self.state = state
        self.engine = engine
        self.listener = listener
        self.request = request
        self.path = path
        # The client's API (by its path) decides which provider reads the requested model
        # and whose error format the client gets: a chain may start with another family.
        self.api_type = api_type if api_type is not None else client_type(path, listener.api_type)
        self.provider: Provider = engine.providers[self.api_type]
        self.request_id = state.next_request_id()
        self.route = "default"
        self.metered = False  # a sink reads usage: a stream gets a meter, a body a slice
        self.meter: UsageMeter | None = None
        self.body: bytes | None = None  # journal.bodies only
        self.requested: str | None = None
        self.session: str | None = None
        self.labels = _NO_LABELS  # the request's, once made (its steps, for the journal)
        self.trim = False  # a client left mid-stream: return freed memory when idle
        self.unsafe: str | None = None  # why check_path refused the path

    # --- the steps -----------------------------------------------------------------------

    async def proxy(self, query: str) -> Response | StreamResponse:
        listener, request, path = self.listener, self.request, self.path
        strip_auth: frozenset[tuple[str, str]] = frozenset()
        if listener.auth_keys:
            ok, strip_auth = auth_ok(listener.auth_keys, request.headers)
            if not ok:
                return self.refuse(401, "missing or invalid proxy key", "authentication_error")
        if self.unsafe is not None:
            return self.refuse(400, self.unsafe, "invalid_request_error")
        encoding = request.headers.get("Content-Encoding")
        if encoding is not None and not readable_encoding(encoding):
            return self.refuse(
                415,
                f"request Content-Encoding {encoding[:40]!r} is not supported;"
                " send gzip, deflate or an uncompressed body",
                "invalid_request_error",
            )
        limit = self.engine.config.server.max_body_size
        # Content-Length counts compressed bytes; the limit applies after inflation too
        # (counted as the body is read).  (The parser checked its digits.)
        length = request.headers.get("Content-Length")
        if length is not None and int(length) > limit:
            return self.too_large(limit)
        try:
            body = request.body_now(limit)  # all of it here and plain: no read loop
            if body is None:
                if not request.body_complete:
                    expect = request.headers.get("Expect")
                    if expect is not None and expect.lower() == "100-continue":
                        # The client waits for this before sending its body (curl does for
                        # large bodies); auth, path and size were checked first, so a refusal
                        # is sent instead of asking for a body that would be thrown away.
                        request.send_continue()
                # read_timeout bounds head and body together, from the head's first byte.
                deadline = request.began + listener.config.read_timeout
                body = await request.read_body(limit, deadline)
        except BodyTooLarge:
            return self.too_large(limit)
        except TimeoutError:
            return self.refuse(
                408, "the request body did not arrive within read_timeout", "timeout_error"
            )
        except RequestBodyError as exc:
            # A compressed body that does not inflate, or broken chunked framing.
            return self.refuse(400, str(exc), "invalid_request_error")
        parsed = None
        if body:
            content_type = request.headers.get("Content-Type", "")
            if self.api_type in _REWRITTEN and (
                content_type == "application/json" or looks_like_json(body, content_type)
            ):
                # A body a lenient upstream parser would read but we could not would carry
                # the client's model to the provider unrewritten: refuse it.
                try:
                    parsed = parse_strict(body)
                except BodyError as exc:
                    return self.refuse(400, str(exc), "invalid_request_error")
            elif body[0] in _JSON_START:
                parsed = parse_body(body)
        headers, accept = forwarded_headers(request.headers, request.names, strip_auth)
        streaming = (
            (parsed is not None and parsed.stream)
            or "text/event-stream" in accept
            or "/stream" in path
            or "-stream" in path
        )
        # Positional, in field order (keyword arguments cost ~0.5 µs more per request):
        # method, path, query, headers, body, json, streaming.
        client_request = ClientRequest(
            request.method, path, query, headers, body, parsed, streaming
        )
        provider = self.provider
        if type(provider).requested_model is Provider.requested_model:
            # The base's: the body's model (read directly, three calls less).
            self.requested = parsed.requested_model if parsed is not None else None
        else:
            self.requested = provider.requested_model(client_request)
        self.route, chain = listener.resolve(self.requested)
        if self.state.telemetry.wants_usage:
            self.metered = True
            if not _no_session_header(request.names):
                self.session = session_hash(request.headers)
            if self.engine.config.journal.bodies:
                self.body = body
        self.labels = labels = Labels(listener.config.name, self.route, self.api_type, self.metered)
        state = self.state
        state.in_flight += 1
        try:
            result = await self.engine.run(client_request, chain, labels)
            if isinstance(result, Final):
                return self.send_final(result)
            if result.complete:
                return self.send_whole(result)  # no coroutine for the common answer
            return await self.send_committed(result, client_request)
        finally:
            state.in_flight -= 1
            if self.trim and state.in_flight == 0:
                # Later, not now: the connections and tasks of the clients that left are
                # let go by the server after this handler returns.
                asyncio.get_running_loop().call_later(1.0, return_freed_memory)

    def send_final(self, result: Final) -> Response:
        model = result.model
        endpoint = model.endpoint if model is not None else None
        headers = [*result.headers, *tags(result.model_name, endpoint, result.attempts)]
        headers.append(("x-hydrallm-request-id", self.request_id))
        self.finish(
            result.status,
            model.id if model else None,
            result.attempts,
            False,
            result.error,
            (result.model_name, endpoint, result.body),
        )
        body = result.body
        if result.proxy_made:
            # The client learns which endpoint failed by its config name, never the
            # internal URL (nor credentials written in it).
            body = self.scrubbed(body)
        return Response(result.status, body=body, headers=headers)

    def answer_headers(self, committed: Committed) -> list[tuple[str, str]]:
        """The upstream's headers as the client gets them, with hydrallm's tags."""
        headers = message_headers(committed.response)
        headers += tags(committed.model_name, committed.model.endpoint, committed.attempts)
        headers.append(("x-hydrallm-request-id", self.request_id))
        return headers

    def send_whole(self, committed: Committed) -> Response:
        """A committed answer whose whole body was read before the commit."""
        upstream = committed.response
        status = upstream.status
        model = committed.model
        headers = self.answer_headers(committed)
        body = b"".join(committed.prefix)
        self.finish(
            status,
            model.id,
            committed.attempts,
            committed.format is not None,
            None,
            (committed.model_name, model.endpoint, body),
        )
        return Response(status, reason=upstream.reason or None, body=body, headers=headers)

    async def send_committed(
        self, committed: Committed, client_request: ClientRequest
    ) -> Response | StreamResponse:
        if committed.complete:
            return self.send_whole(committed)
        upstream = committed.response
        status = upstream.status
        headers = self.answer_headers(committed)
        reason = upstream.reason or None
        out = StreamResponse(status, reason=reason, headers=headers)
        length = upstream.headers.get("Content-Length")
        if (
            length is not None
            and committed.format is None
            and "Content-Encoding" not in upstream.headers
        ):
            try:
                out.content_length = int(length)
            except ValueError:
                pass
        return await self.relay(out, committed, client_request)

    async def relay(
        self, out: StreamResponse, committed: Committed, client_request: ClientRequest
    ) -> StreamResponse:
        state, engine = self.state, self.engine
        telemetry = state.telemetry
        name = self.listener.config.name
        upstream = committed.response
        is_stream = committed.format is not None
        if is_stream:
            telemetry.stream_open(name, 1)
        broken: str | None = None
        recovery: Recovery | None = None
        # Stays True unless the relay ends normally (a client that went away mid-answer,
        # however it shows: a cancelled handler, a reset while sending the head...).
        self.trim = True
        try:
            try:
                await out.prepare(self.request)
            except ConnectionError:
                # The client left before the head could be sent: nothing more to do.
                upstream.abort()
                return out
            transport = self.request.transport
            if transport is not None:
                bound_send_queue(transport)

            def abort_client() -> None:
                if transport is not None:
                    transport.abort()

            hooks = make_recovery(engine, client_request, committed, name, state.recovery)
            recovery = hooks.recovery
            observe = hooks.observe
            if self.metered:
                # Usage is read from the relayed bytes (only events that carry it are parsed).
                meter = self.meter = UsageMeter(bedrock=committed.model.type == "bedrock")
                observe = meter.feed if observe is None else meter.chain(observe)
            # Registered so that shutdown can end it cleanly once the grace period is over.
            state.live.add(upstream)
            result = await relay(
                hooks.committed,
                out,
                idle_timeout=engine.config.retry.stream_idle_timeout,
                abort_client=abort_client,
                write_timeout=self.listener.config.write_timeout,
                draining=lambda: state.draining,
                observe=observe,
                recover=hooks.recover,
            )
            broken = result.broken
            self.trim = result.client_gone
            if not result.client_gone:
                engine.attempts.stream_ended(committed, broken)
            if broken is not None and not result.recovered:
                telemetry.stream_broken(name, committed.model.id, broken)
            if not result.client_gone:
                try:
                    await out.write_eof()
                except (ConnectionError, RuntimeError):
                    pass
        finally:
            state.live.discard(upstream)
            if is_stream:
                telemetry.stream_open(name, -1)
            served, name_sent = committed.model, committed.model_name
            recovered = recovery.result if recovery is not None else None
            if recovery is not None and recovery.served_by is not None:
                # Finished by a fallback: the request was served by the model that ended it.
                served = engine.config.models.get(recovery.served_by, served)
                name_sent = engine.attempts.model_name(served, client_request)
            self.finish(
                upstream.status,
                served.id,
                committed.attempts,
                is_stream,
                broken,
                (name_sent, served.endpoint, None),
                recovered,
            )
        return out

    # --- answers the proxy makes itself ----------------------------------------------------

    def scrubbed(self, body: bytes) -> bytes:
        """A proxy-made JSON error body with upstream addresses named by endpoint and any
        secret redacted, in every string of it."""
        endpoints = self.engine.config.endpoints
        redact = self.state.telemetry.log.redact

        def clean(value: object) -> object:
            if isinstance(value, str):
                return redact(scrub_upstream(value, endpoints))
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        try:
            return json.dumps(clean(json.loads(body))).encode()
        except ValueError:
            return redact(scrub_upstream(body.decode("utf-8", "replace"), endpoints)).encode()

    def refuse(self, status: int, message: str, kind: str) -> Response:
        """A proxy-made error before any upstream work, in the listener's API format."""
        self.finish(status, None, 0, False, message)
        err = self.provider.error_body(status, f"hydrallm: {message}", kind)
        headers = [("Content-Type", err.content_type), *err.headers]
        headers.append(("x-hydrallm-attempts", "0"))
        headers.append(("x-hydrallm-request-id", self.request_id))
        return Response(status, body=err.body, headers=headers)

    def too_large(self, limit: int) -> Response:
        return self.refuse(
            413, f"request body is larger than the limit of {limit} bytes", "request_too_large"
        )

    def finish(
        self,
        status: int,
        served_by: str | None,
        attempts: int,
        streamed: bool,
        err: str | None,
        served: tuple[str | None, str | None, bytes | None] = (None, None, None),
        recovered: str | None = None,
    ) -> None:
        model_name, endpoint, body = served
        meter = self.meter
        size = None
        usage: bytes | tuple[int | None, ...] | None = None
        if self.metered:
            if body is None:
                if meter is not None:
                    size = meter.size
                    if meter.usage is not None:
                        usage = tuple(meter.usage)
            else:  # decoded by the journal's writer, not here
                usage = usage_slice(body)  # one C call (rowcodec), when it is built
                size = len(body)
        labels = self.labels
        # In RequestEvent's field order, made without a Python __init__ (see its doc); the
        # journal reads the plain tuple.
        values = (
            self.request_id,
            self.wall,
            self.listener.config.name,
            self.route,
            self.request.method,
            self.path,
            self.requested,
            model_name,
            served_by,
            endpoint,
            status,
            attempts,
            recovered,
            time.monotonic() - self.started,
            streamed,
            size or 0,
            usage,
            err,
            self.session,
            self.body,
            body if self.body is not None else None,
            labels.trail,
            labels.first_key,
            labels.first_ttft,
            labels.first_latency,
            labels.first_status,
        )
        self.state.telemetry.request(_new_event(RequestEvent, values), values)


_new_event = tuple.__new__
# A request's labels until it has its own (one refused before any attempt): no first try.
_NO_LABELS = Labels("", "", "openai")
# Bound once: the method looked up on the frozenset each request made a method object.
_no_session_header = SESSION_NAMES.isdisjoint


def _plain_error(status: int, message: str) -> Response:
    return json_response({"error": {"message": message, "type": "api_error"}}, status)
