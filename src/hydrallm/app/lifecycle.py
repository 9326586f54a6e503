"""Process lifecycle: listeners up, signals, graceful drain, shutdown.

`serve()` is the programmatic entry point that the CLI (and tests) call.  Shutdown follows
uvicorn's shape: stop accepting, let in-flight requests finish within
`server.shutdown_timeout`, then cancel what is left (streams are then ended with an error
event by the relay), and return.  SIGHUP and config-file changes reload (`reload.py`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import field

from hydrallm.app.reload import Reloader
from hydrallm.app.runtime import ProxyState, build_runtime
from hydrallm.config import Config, ListenerConfig
from hydrallm.config.exposure import exposure_warnings
from hydrallm.dataclass import build_pending, dataclass
from hydrallm.errors import StartupError
from hydrallm.observe.events import Logger, Sink, Telemetry
from hydrallm.observe.journal import JournalSink
from hydrallm.observe.log import bridge_aiohttp_logging
from hydrallm.observe.metrics import MetricsSink
from hydrallm.observe.status import StatusSink
from hydrallm.proxy.h1client import LeanTransport
from hydrallm.proxy.h1server import H1Server
from hydrallm.proxy.handler import make_handler


def install_uvloop() -> bool:
    """Use uvloop's event loop where it is available (not on Windows)."""
    if sys.platform == "win32":
        return False
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


@dataclass(slots=True)
class _Listener:
    config: ListenerConfig
    server: H1Server


@dataclass(slots=True)
class Proxy:
    """A running proxy: its state and its listeners."""

    state: ProxyState
    listeners: dict[str, _Listener] = field(default_factory=dict)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    reuse_port: bool = False
    # Listeners accept on sockets inherited from a parent process: addresses are fixed.
    fixed_sockets: bool = False
    # Listeners taken out by a reload, finishing their requests in the background.
    drains: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def config(self) -> Config:
        return self.state.current.config

    def addresses(self) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        for name, lst in self.listeners.items():
            addrs = lst.server.addresses
            if addrs:
                host, port = addrs[0][0], addrs[0][1]
                out[name] = (str(host), int(port))
        return out

    async def start_listener(self, lc: ListenerConfig, sock: socket.socket | None = None) -> None:
        """Serve `lc`, binding its address (or accepting on `sock`, already listening)."""
        log = self.state.telemetry.log
        server = H1Server(
            make_handler(self.state, lc.name),
            read_timeout=lc.read_timeout,
            keepalive_timeout=self.config.server.keepalive_timeout,
            on_timeout=lambda peer: log.warn(
                "client_timeout",
                listener=lc.name,
                peer=peer,
                problem="request head not complete within read_timeout",
            ),
            log=log,
        )
        try:
            if sock is not None:
                await server.listen(sock=sock, backlog=128)
            else:
                await server.listen(lc.host, lc.port, reuse_port=self.reuse_port, backlog=1024)
        except OSError as exc:
            raise StartupError(bind_message(lc, exc)) from exc
        self.listeners[lc.name] = _Listener(lc, server)

    async def stop_listener(self, name: str) -> None:
        lst = self.listeners.pop(name, None)
        if lst is not None:
            await lst.server.shutdown(self.config.server.shutdown_timeout)

    async def detach_listener(self, name: str) -> _Listener | None:
        """Stop accepting on a listener (its requests go on); `drain()` finishes it."""
        lst = self.listeners.pop(name, None)
        if lst is not None:
            lst.server.close()
        return lst

    def drain(self, lst: _Listener) -> None:
        """Let a detached listener's requests finish (within shutdown_timeout), owned here."""
        task = asyncio.create_task(
            lst.server.shutdown(self.config.server.shutdown_timeout),
            name=f"hydrallm-drain-{lst.config.name}",
        )
        self.drains.add(task)
        task.add_done_callback(self.drains.discard)

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace, end the rest."""
        state = self.state
        state.draining = True
        for lst in self.listeners.values():
            lst.server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.server.shutdown_timeout
        while state.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if state.live:
            # Grace is over: cut the upstream side; each relay then ends its client's
            # stream with a protocol-correct error event instead of a silent cut.
            for response in list(state.live):
                response.abort()
            end = loop.time() + 1.0
            while state.in_flight and loop.time() < end:
                await asyncio.sleep(0.02)
        await asyncio.gather(
            *(self.stop_listener(n) for n in list(self.listeners)), *list(self.drains)
        )
        if self.state.cluster is not None:
            await self.state.cluster.close()
        await self.state.transport.close()
        for sink in self.state.telemetry.sinks:
            if isinstance(sink, JournalSink):
                await sink.aclose()  # writes what is still queued
        self.state.telemetry.log.flush()


def bind_message(lc: ListenerConfig, exc: OSError) -> str:
    where = f"{lc.host}:{lc.port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: the port is already in use (listener {lc.name!r})"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (listener {lc.name!r})"
    return f"cannot listen on {where}: {exc.strerror or exc} (listener {lc.name!r})"


async def start(
    config: Config,
    *,
    logger: Logger,
    sinks: list[Sink] | None = None,
    worker: int = 0,
    reuse_port: bool = False,
    sockets: Mapping[str, socket.socket] | None = None,
    hub: socket.socket | None = None,
) -> Proxy:
    """Build the runtime and open every listener (raises StartupError on a bind failure).

    `sinks=None` gives the default sinks: Prometheus metrics, the status history and,
    unless `[journal] enabled = false`, the journal.
    `hub`: this worker's line to the supervisor, to share state with the other workers.
    """
    bridge_aiohttp_logging(logger)
    if sinks is None:
        sinks = [MetricsSink(worker=worker, pid=os.getpid()), StatusSink()]
        if config.journal.enabled:
            sinks.append(make_journal(config, logger, worker))
    telemetry = Telemetry(logger, sinks)
    transport = LeanTransport()
    runtime = build_runtime(config, transport, telemetry)
    state = ProxyState(current=runtime, transport=transport, telemetry=telemetry, worker=worker)
    for sink in sinks:
        if isinstance(sink, JournalSink):
            sink.config_source = lambda: state.current.config  # prices etc. follow reloads
    proxy = Proxy(state, reuse_port=reuse_port, fixed_sockets=sockets is not None)
    try:
        # The cluster's code (and the shared-state records) loads only with something to
        # share state through: Redis, or the supervisor of `--workers` (`start_cluster`).
        if config.cluster.redis is not None or hub is not None:
            from hydrallm.app.cluster import start_cluster

            state.cluster = start_cluster(state, hub)
        for lc in config.listeners:
            await proxy.start_listener(lc, sockets.get(lc.name) if sockets else None)
    except BaseException:
        await proxy.close()
        raise
    return proxy


def make_journal(config: Config, logger: Logger, worker: int) -> JournalSink:
    """The journal sink, started (a file it cannot use is reported once and left off)."""
    loop = asyncio.get_running_loop()

    def report(message: str) -> None:
        # Called from the writer thread too: the log line is written on the loop's thread.
        try:
            loop.call_soon_threadsafe(lambda: logger.error("journal", problem=message))
        except RuntimeError:
            logger.error("journal", problem=message)  # the loop is closed: write directly

    journal = JournalSink(
        config.journal,
        prices=config.prices,
        secrets=config.secrets,
        worker=worker,
        report=report,
    )
    journal.start()
    return journal


def log_startup(proxy: Proxy) -> None:
    log = proxy.state.telemetry.log
    config = proxy.config
    for warning in config.warnings:
        log.warn("config", problem=warning)
    for warning in exposure_warnings(config):
        log.warn("exposed", problem=warning)
    for name, (host, port) in proxy.addresses().items():
        lc = proxy.listeners[name].config
        log.info("listening", listener=name, address=f"http://{host}:{port}", models=len(lc.models))
        for i, mid in enumerate(lc.models, 1):
            m = config.models[mid]
            log.info(
                "model",
                listener=name,
                position=i,
                id=mid,
                endpoint=m.endpoint,
                type=m.type,
                model=m.model,
                attempts=m.attempts,
            )


async def serve(
    config: Config,
    *,
    logger: Logger,
    ready: Callable[[Proxy], None] | None = None,
    sinks: list[Sink] | None = None,
    worker: int = 0,
    reuse_port: bool = False,
    sockets: Mapping[str, socket.socket] | None = None,
    reload_config: Callable[[], Config] | None = None,
    watch_interval: float = 0.5,
    hub: socket.socket | None = None,
) -> None:
    """Run until SIGINT/SIGTERM, then drain and return.

    SIGHUP, and a change of `config.path`, reload with `reload_config` (default: read
    `config.path` again with the process environment; no path and no function: no reload).
    """
    proxy = await start(
        config,
        logger=logger,
        sinks=sinks,
        worker=worker,
        reuse_port=reuse_port,
        sockets=sockets,
        hub=hub,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, proxy.stop_event.set)
        except (NotImplementedError, RuntimeError):
            pass
    reloader: Reloader | None = None
    load = reload_config or _default_loader(config.path)
    if load is not None:
        reloader = Reloader(proxy, load, path=config.path, poll=watch_interval)
        reloader.start()
        if hasattr(signal, "SIGHUP"):
            try:
                loop.add_signal_handler(signal.SIGHUP, reloader.trigger)
            except (NotImplementedError, RuntimeError):
                pass
    log_startup(proxy)
    if ready is not None:
        ready(proxy)
    finish_start(loop)
    try:
        await proxy.stop_event.wait()
        logger.info(
            "shutdown",
            in_flight=proxy.state.in_flight,
            grace_s=proxy.config.server.shutdown_timeout,
        )
    finally:
        if reloader is not None:
            await reloader.close()
        await proxy.close()
        logger.info("stopped")
        logger.flush()


def finish_start(loop: asyncio.AbstractEventLoop) -> None:
    """Once listening, compile the `__init__` of the dataclasses no request has used yet
    (`hydrallm.dataclass` leaves them for later so that the proxy listens sooner): one
    module a turn of the loop, so that a request arriving meanwhile waits for one at most."""
    modules = iter([m for n, m in list(sys.modules.items()) if n.startswith("hydrallm.")])

    def step() -> None:
        module = next(modules, None)
        if module is not None:
            build_pending((module,))
            loop.call_soon(step)

    loop.call_soon(step)


def _default_loader(path: str | None) -> Callable[[], Config] | None:
    if path is None:
        return None

    def load() -> Config:
        from hydrallm.config.load import load_config

        return load_config(path, os.environ)

    return load


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
