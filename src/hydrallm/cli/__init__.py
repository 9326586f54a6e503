"""The `hydrallm` command: click commands, the demo, terminal views, service install."""

from hydrallm.cli.main import main

__all__ = ["main"]
