"""The aiohttp internals hydrallm relies on (issue 12): an aiohttp upgrade that changes
them must fail here, with a message that says what to look at, not silently in production.

aiohttp is pinned in pyproject.toml to the minor range this was tested with.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque

import aiohttp
from aiohttp import http_parser, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import StreamWriter
from aiohttp.web_protocol import RequestHandler

from hydrallm.proxy import connguard, handler


def _params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


def test_aiohttp_is_the_pinned_minor() -> None:
    major_minor = tuple(int(x) for x in aiohttp.__version__.split(".")[:2])
    assert major_minor == (3, 14), (
        f"aiohttp {aiohttp.__version__}: the internals below were checked on 3.14; run this"
        " file, fix what fails, then widen the pin in pyproject.toml"
    )


async def test_request_handler_internals_used_by_connguard() -> None:
    """connguard.GuardedRequestHandler reads `_messages` (parsed requests waiting to be
    handled) and `_loop`, and overrides data_received / connection_made / connection_lost /
    finish_response / force_close."""
    server = web.Server(lambda r: web.Response())
    h = RequestHandler(server, loop=asyncio.get_running_loop())
    assert isinstance(getattr(h, "_messages", None), deque), (
        "RequestHandler._messages is gone or no longer a deque: connguard's slow-head timer"
        " uses it to tell 'a head is complete' from 'still trickling in'"
    )
    assert getattr(h, "_loop", None) is not None, "RequestHandler._loop is gone (connguard)"
    for name in ("data_received", "connection_made", "connection_lost", "force_close"):
        assert callable(getattr(RequestHandler, name, None)), f"RequestHandler.{name} is gone"
    assert _params(RequestHandler.finish_response) == [
        "self",
        "request",
        "resp",
        "start_time",
    ], "RequestHandler.finish_response changed its signature (connguard overrides it)"
    assert "keepalive_timeout" in _params(RequestHandler.__init__), (
        "RequestHandler no longer takes keepalive_timeout (server.keepalive_timeout)"
    )


async def test_server_internals_used_by_connguard() -> None:
    """GuardedServer builds its handlers with `_loop` and `_kwargs` and hooks
    `_make_request(message, payload, protocol, writer, task)` to learn when a head is done."""
    server = web.Server(lambda r: web.Response(), keepalive_timeout=5)
    assert isinstance(getattr(server, "_kwargs", None), dict), "web.Server._kwargs is gone"
    assert hasattr(server, "_loop"), "web.Server._loop is gone"
    assert _params(web.Server._make_request) == [
        "self",
        "message",
        "payload",
        "protocol",
        "writer",
        "task",
    ], "web.Server._make_request changed: connguard.GuardedServer can no longer see heads"
    assert issubclass(connguard.GuardedServer, web.Server)


def test_raw_100_continue_write_and_output_size() -> None:
    """handler.py answers `Expect: 100-continue` by writing the interim response on the
    request's writer and resetting `output_size` (else it counts as body bytes sent)."""
    assert hasattr(StreamWriter, "output_size"), (
        "StreamWriter.output_size is gone: handler.py resets it after the raw 100 Continue"
    )
    assert "HTTP/1.1 100 Continue" in inspect.getsource(handler)


def test_write_drains_past_its_limit() -> None:
    """relay.py writes in 16 KiB slices and relies on write() waiting for the transport to
    drain once more than LIMIT bytes were written (back-pressure to the upstream read)."""
    params = inspect.signature(StreamWriter.write).parameters
    assert "LIMIT" in params and params["LIMIT"].default == 0x10000, (
        "StreamWriter.write no longer drains past a 64 KiB LIMIT: relay's back-pressure"
        " must call the writer's drain itself"
    )
    assert "await self.drain()" in inspect.getsource(StreamWriter.write)


def test_request_content_encodings_inflated_by_the_parser() -> None:
    """handler._INFLATED must be exactly the set aiohttp's request parser inflates: a body
    in any other coding arrives as sent and is refused with 415."""
    source = inspect.getsource(http_parser)
    assert '{"gzip", "deflate", "br", "zstd"}' in source, (
        "aiohttp's parser inflates a different set of Content-Encodings now:"
        " update hydrallm.proxy.handler._INFLATED"
    )
    assert frozenset({"gzip", "deflate", "br", "zstd"}) == handler._INFLATED


def test_exceptions_the_handler_catches_still_exist() -> None:
    assert issubclass(HttpProcessingError, Exception)
    assert issubclass(web.RequestPayloadError, Exception), (
        "web.RequestPayloadError is gone: handler.py catches it for bodies that do not inflate"
    )
