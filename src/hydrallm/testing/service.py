"""The lifecycle every test server here shares: `start()`, `close()`, `async with`; and
the aiohttp server under each fake provider."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from aiohttp import web


class AsyncService:
    """Base for servers used as `async with Server() as s:` (start on enter, close on exit)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class WebFake(AsyncService):
    """A fake provider on an aiohttp server: every request, any method and path, goes to
    `_handle`; `url` is valid between `start()` and `close()`."""

    _host = "127.0.0.1"
    _port = 0  # a free one
    # A client that goes away cancels its handler (how a fake's `hang()` ends).
    _cancel_on_disconnect = True
    _runner: web.AppRunner | None = None
    _url: str | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app,
            handler_cancellation=self._cancel_on_disconnect,
            access_log=None,
            shutdown_timeout=0.5,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        host, port = runner.addresses[0][:2]
        self._runner, self._url = runner, f"http://{host}:{port}"

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`, without a trailing slash."""
        if self._url is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._url
