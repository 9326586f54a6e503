"""The translators: one request's body, answer and stream from one API family to another.

Loaded at the first translation (through `hydrallm.formats.translate`, whose own module holds
only what routing asks of every request): a proxy whose chains stay within one family never
creates the IR's classes nor the families' converters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Protocol

from hydrallm.dataclass import dataclass
from hydrallm.formats.frames import utf8
from hydrallm.formats.sse import SSEDecoder, SSEEvent
from hydrallm.formats.translate import (
    CLIENT_APIS,
    UPSTREAM_APIS,
    BadRequest,
    ClientApi,
    Json,
    MalformedUpstream,
    Untranslatable,
    UpstreamApi,
    anthropic,
    anthropic_stream,
    chat,
    chat_stream,
    gemini,
    ir,
    responses,
)
from hydrallm.formats.translate.errors import (
    ClientError,
    UpstreamError,
    client_error,
    read_error,
)


class _Decoder(Protocol):
    def feed(self, event: SSEEvent) -> list[ir.Event]: ...
    def close(self) -> list[ir.Event]: ...


class _Encoder(Protocol):
    def encode(self, event: ir.Event) -> bytes: ...


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """What to send: POST `path` (and `query`, "" for none) with JSON `body`."""

    path: str
    query: str
    body: Json
    stream: bool


_READ = {
    "anthropic": anthropic.parse_request,
    "chat": chat.parse_request,
    "responses": responses.parse_request,
}
_WRITE = {
    "anthropic": anthropic.build_request,
    "chat": chat.build_request,
    "gemini": gemini.build_request,
}
_PARSE = {
    "anthropic": anthropic.parse_response,
    "chat": chat.parse_response,
    "gemini": gemini.parse_response,
}
_ANSWER = {
    "anthropic": anthropic.build_response,
    "chat": chat.build_response,
    "responses": responses.build_response,
}


class StreamTranslator:
    """Upstream SSE bytes in, client SSE bytes out, chunk by chunk."""

    def __init__(self, decoder: _Decoder, encoder: _Encoder) -> None:
        self._sse = SSEDecoder()
        self._decoder = decoder
        self._encoder = encoder
        self.finished = False  # the client got its terminal event
        self.error: UpstreamError | None = None  # an in-stream error the upstream sent

    def _emit(self, events: list[ir.Event]) -> bytes:
        out = bytearray()
        for event in events:
            if self.finished or self.error is not None:
                break
            if isinstance(event, ir.StreamError):
                self.error = UpstreamError(event.status, event.message)
            out += self._encoder.encode(event)
            if isinstance(event, ir.Finish):
                self.finished = True
        return bytes(out)

    def feed(self, data: bytes) -> bytes:
        """Client bytes for these upstream bytes (often b"" until an event completes).

        Raises `formats.sse.SSEError` on an event larger than 1 MiB, `MalformedUpstream`
        on an event of the right JSON but the wrong shape (both ValueErrors): the
        stream is broken, as if cut.
        """
        out = bytearray()
        for event in self._sse.feed(data):
            out += self._emit(self._read(event))
        return bytes(out)

    def _read(self, event: SSEEvent) -> list[ir.Event]:
        try:
            return self._decoder.feed(event)
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            raise MalformedUpstream(f"unreadable upstream stream event ({exc})") from exc

    def close(self) -> bytes:
        """The upstream ended: the last bytes.  `finished` False afterwards means cut."""
        out = bytearray()
        for event in self._sse.flush():
            out += self._emit(self._read(event))
        return bytes(out + self._emit(self._decoder.close()))


class Translator:
    """One request's translation from client API `client` to upstream API `upstream`."""

    def __init__(
        self, client: ClientApi, upstream: UpstreamApi, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.upstream = upstream
        self._clock = clock  # dates the answer (`created`, `created_at`)
        self._request: ir.Request | None = None

    def request(self, body: Json, model: str) -> UpstreamCall:
        """The upstream call for the client's body, asking for `model`.

        Raises `Untranslatable` (skip this model) or `BadRequest` (answer 400).
        """
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        try:
            request = _READ[self.client](body)
            request.model = model
            out = _WRITE[self.upstream](request)
        except (BadRequest, Untranslatable):
            raise
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            # A field of the wrong type somewhere the client's API would refuse too.
            raise BadRequest(f"malformed request body ({type(exc).__name__}: {exc})") from exc
        request.created = int(self._clock())
        self._request = request
        if self.upstream == "gemini":
            path, query = gemini.path(model, request.stream)
        elif self.upstream == "anthropic":
            path, query = "/v1/messages", ""
        else:
            path, query = "/v1/chat/completions", ""
        return UpstreamCall(path, query, out, request.stream)

    @property
    def parsed(self) -> ir.Request:
        if self._request is None:
            raise RuntimeError("Translator.request() must be called first")
        return self._request

    def response(self, body: bytes | Json) -> bytes:
        """A 2xx JSON answer of the upstream, as the client's API answers.

        Raises `MalformedUpstream` (a ValueError) when it is not such an answer.
        """
        data = json.loads(body) if isinstance(body, (bytes, str)) else body
        if not isinstance(data, dict):
            raise MalformedUpstream("the upstream answer is not a JSON object")
        try:
            answer = _ANSWER[self.client](_PARSE[self.upstream](data), self.parsed)
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            raise MalformedUpstream(f"unreadable upstream answer ({exc})") from exc
        return utf8(ir.dumps(answer))

    def stream(self) -> StreamTranslator:
        """A translator for the upstream's 2xx SSE stream."""
        decoder: _Decoder
        if self.upstream == "anthropic":
            decoder = anthropic_stream.Decoder()
        elif self.upstream == "chat":
            decoder = chat_stream.Decoder()
        else:
            decoder = gemini.Decoder()
        encoder: _Encoder
        if self.client == "anthropic":
            encoder = anthropic_stream.Encoder(self.parsed)
        elif self.client == "chat":
            encoder = chat_stream.Encoder(self.parsed)
        else:
            encoder = responses.Encoder(self.parsed)
        return StreamTranslator(decoder, encoder)

    def error(self, status: int, body: bytes) -> ClientError:
        """A non-2xx upstream answer, in the client's error format (status kept)."""
        return client_error(self.client, read_error(status, body))


def translator_for(
    client: ClientApi, upstream: UpstreamApi, clock: Callable[[], float] = time.time
) -> Translator:
    """The translator for one request; same-family pairs are passed through, not here."""
    if client not in CLIENT_APIS or upstream not in UPSTREAM_APIS:
        raise ValueError(f"no translation from {client!r} to {upstream!r}")
    if client == upstream:
        raise ValueError(f"{client!r} to {upstream!r} is a pass-through, not a translation")
    return Translator(client, upstream, clock)
