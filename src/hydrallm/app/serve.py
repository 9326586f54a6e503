"""Blocking entry point used by `hydrallm serve`: event loop, optional worker processes."""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
from collections.abc import Callable

from hydrallm.app.lifecycle import Proxy, bind_message, install_uvloop, port_is_free, serve
from hydrallm.config import Config
from hydrallm.errors import StartupError
from hydrallm.observe.events import Logger


def run_server(
    config: Config,
    *,
    workers: int | None = None,
    reload_config: Callable[[], Config] | None = None,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Run the proxy until SIGINT/SIGTERM: in this process, or in `workers` processes.

    `reload_config` reloads the config on SIGHUP / file change (the CLI passes one that
    re-applies its flags); by default the file at `config.path` is read again.
    `on_listening` is called once the proxy listens (with workers: before they start).
    """
    count = workers if workers is not None else config.server.workers
    if count > 1:
        from hydrallm.app.workers import can_fork

        if not can_fork():
            Logger(config.log.level).warn(
                "workers", problem="worker processes need fork(); running a single process"
            )
            count = 1
    if count <= 1:
        ready = None if on_listening is None else (lambda _: on_listening())
        _serve_here(config, 0, None, False, reload_config, tagged=False, ready=ready)
        return
    _run_workers(config, count, reload_config, on_listening)


def _run_workers(
    config: Config,
    count: int,
    reload_config: Callable[[], Config] | None,
    on_listening: Callable[[], None] | None,
) -> None:
    # The supervisor's code (and the state the workers share) loads only for workers.
    from hydrallm.app.workers import Supervisor, balanced_reuse_port, bind_shared
    from hydrallm.app.workershare import Hub

    reuse = balanced_reuse_port() and all(lc.port != 0 for lc in config.listeners)
    sockets: dict[str, socket.socket] | None = None
    if reuse:
        # Each worker binds with SO_REUSEPORT, which would also share a port that another
        # program holds with it: check first that every port is really free.
        for lc in config.listeners:
            if not port_is_free(lc.host, lc.port):
                raise StartupError(bind_message(lc, OSError(errno.EADDRINUSE, "in use")))
    else:
        sockets = bind_shared(config)

    # Without Redis the workers still share breaker state, through the supervisor.
    hub = Hub(count) if config.cluster.redis is None else None

    def worker_main(index: int, inherited: dict[str, socket.socket] | None) -> int:
        line = hub.in_child(index) if hub is not None else None
        return _serve_here(config, index, inherited, reuse, reload_config, tagged=True, hub=line)

    def log(message: str) -> None:
        sys.stderr.write(f"hydrallm: {message}\n")
        sys.stderr.flush()

    if on_listening is not None:
        on_listening()
    if Supervisor(count, worker_main, log=log, hub=hub).run(sockets) != 0:
        raise StartupError("a worker process stopped unexpectedly (see its messages above)")


def _serve_here(
    config: Config,
    worker: int,
    sockets: dict[str, socket.socket] | None,
    reuse_port: bool,
    reload_config: Callable[[], Config] | None,
    *,
    tagged: bool,
    hub: socket.socket | None = None,
    ready: Callable[[Proxy], None] | None = None,
) -> int:
    install_uvloop()
    logger = Logger(config.log.level, secrets=config.secrets, worker=worker if tagged else None)
    asyncio.run(
        serve(
            config,
            logger=logger,
            worker=worker,
            reuse_port=reuse_port,
            sockets=sockets,
            reload_config=reload_config,
            hub=hub,
            ready=ready,
        )
    )
    return 0
