"""Run a real hydrallm proxy in-process for tests and the demo.

    async with ProxyHarness(config_text, env={...}) as proxy:
        url = proxy.url()              # first listener, e.g. "http://127.0.0.1:41234"
        proxy.logs()                   # everything the proxy logged so far

Listener ports are replaced by 0 so the OS picks free ones: tests never collide.  On
close, the captured log is scanned for every configured secret (see `check_no_secrets`).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping

from hydrallm.app.lifecycle import Proxy
from hydrallm.app.lifecycle import start as start_proxy
from hydrallm.config import Config
from hydrallm.config.load import parse_config
from hydrallm.observe.events import Logger, Sink
from hydrallm.testing.service import AsyncService


def with_free_ports(config: Config) -> Config:
    listeners = tuple(dataclasses.replace(lc, port=0) for lc in config.listeners)
    return dataclasses.replace(config, listeners=listeners)


class ProxyHarness(AsyncService):
    def __init__(
        self,
        config: str | Config,
        *,
        env: Mapping[str, str] | None = None,
        level: str = "debug",
        sinks: list[Sink] | None = None,
        free_ports: bool = True,
    ) -> None:
        if isinstance(config, str):
            config = parse_config(config, env=dict(env or {}))
        self.config = with_free_ports(config) if free_ports else config
        self.stream = io.StringIO()
        self.level = level
        self.sinks = sinks
        self._proxy: Proxy | None = None

    @property
    def proxy(self) -> Proxy:
        assert self._proxy is not None, "the proxy is not running"
        return self._proxy

    async def start(self) -> None:
        logger = Logger(self.level, stream=self.stream, secrets=self.config.secrets, color=False)
        self._proxy = await start_proxy(self.config, logger=logger, sinks=self.sinks)

    async def close(self) -> None:
        if self._proxy is not None:
            await self._proxy.close()
            self._proxy = None
            self.check_no_secrets()

    def check_no_secrets(self) -> None:
        """Every scenario run through the harness doubles as a leak check: no configured
        secret (API key, AWS secret, proxy key) may appear in anything the proxy logged."""
        text = self.stream.getvalue()
        leaked = [s for s in self.config.secrets if len(s) >= 8 and s in text]
        if leaked:
            shown = ", ".join(f"{s[:3]}…" for s in leaked)
            raise AssertionError(f"secrets leaked into the proxy's log: {shown}")

    def url(self, listener: str | None = None) -> str:
        addresses = self.proxy.addresses()
        name = listener or next(iter(addresses))
        host, port = addresses[name]
        return f"http://{host}:{port}"

    def logs(self) -> str:
        self.proxy.state.telemetry.log.flush()
        return self.stream.getvalue()
