"""Blocking entry point used by `hydrallm serve`: event loop, optional worker processes."""

from __future__ import annotations

import asyncio

from hydrallm.config import Config
from hydrallm.observe import Logger
from hydrallm.runner import install_uvloop, serve


def run_server(config: Config, *, workers: int | None = None) -> None:
    """Run the proxy in this process until SIGINT/SIGTERM."""
    install_uvloop()
    logger = Logger(config.log.level, secrets=config.secrets)
    asyncio.run(serve(config, logger=logger))
