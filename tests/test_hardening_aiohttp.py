"""The library contracts hydrallm's HTTP layer relies on (issue 12): a dependency upgrade
that changes them must fail here, with a message that says what to look at, not silently
in production.

The client-facing server is hydrallm's own (proxy/h1server.py) over httptools' llhttp
parser; aiohttp remains for the upstream client and the test fakes, pinned in
pyproject.toml to the minor range this was tested with.
"""

from __future__ import annotations

import subprocess
import sys

import aiohttp
import httptools
import pytest


def test_aiohttp_is_the_pinned_minor() -> None:
    major_minor = tuple(int(x) for x in aiohttp.__version__.split(".")[:2])
    assert major_minor == (3, 14), (
        f"aiohttp {aiohttp.__version__}: the client side was checked on 3.14; run the suite,"
        " fix what fails, then widen the pin in pyproject.toml"
    )


def test_serving_loads_no_aiohttp_server_module() -> None:
    """`hydrallm serve` answers clients with h1server: aiohttp's web server machinery is
    neither needed nor loaded (startup time is a goal)."""
    code = (
        "import sys, hydrallm.app.serve, hydrallm.cli.main\n"
        "print(' '.join(m for m in sys.modules"
        " if m.startswith(('aiohttp.web', 'hydrallm.proxy.connguard'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"loaded by serve: {out.stdout}"


class _Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_message_begin(self) -> None:
        self.events.append("begin")

    def on_url(self, url: bytes) -> None:
        self.events.append(f"url {url.decode()}")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.events.append(f"header {name.decode()}={value.decode()}")

    def on_headers_complete(self) -> None:
        self.events.append("headers")

    def on_body(self, body: bytes) -> None:
        self.events.append(f"body {body.decode()}")

    def on_message_complete(self) -> None:
        self.events.append("complete")


def test_httptools_delivers_whole_headers_and_pipelined_messages() -> None:
    """h1server counts on one on_header call per header (name and value whole, even when
    split across reads), and on the keep-alive and version getters."""
    rec = _Recorder()
    parser = httptools.HttpRequestParser(rec)
    parser.feed_data(b"POST /a?b HTTP/1.1\r\nHo")
    parser.feed_data(b"st: x\r\nContent-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\nHost: y\r\n\r\n")
    assert rec.events == [
        "begin",
        "url /a?b",
        "header Host=x",
        "header Content-Length=2",
        "headers",
        "body hi",
        "complete",
        "begin",
        "url /",
        "header Host=y",
        "headers",
        "complete",
    ]
    assert parser.should_keep_alive() is True
    assert parser.get_http_version() == "1.1"
    assert parser.get_method() == b"GET"


def test_httptools_reports_callback_errors_and_refuses_ambiguous_framing() -> None:
    """h1server raises its own exception in a callback and reads it back from the
    HttpParserCallbackError's __context__; llhttp itself must refuse CL+TE."""

    class Refusing(_Recorder):
        def on_headers_complete(self) -> None:
            raise LookupError("mine")

    parser = httptools.HttpRequestParser(Refusing())
    with pytest.raises(httptools.HttpParserCallbackError) as info:
        parser.feed_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(info.value.__context__, LookupError)

    parser = httptools.HttpRequestParser(_Recorder())
    with pytest.raises(httptools.HttpParserError) as bad:
        parser.feed_data(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    assert "Content-Length" in str(bad.value) or "Transfer-Encoding" in str(bad.value)
    assert not issubclass(httptools.HttpParserUpgrade, httptools.HttpParserError), (
        "HttpParserUpgrade became an HttpParserError: h1server catches it first, keep it so"
    )
