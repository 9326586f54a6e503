"""The `hydrallm` console script: `hydrallm serve` without click, everything else with it.

`hydrallm serve` is a service that starts at login; click and its command table cost it
~30 ms of a ~300 ms start (a tenth) to parse four flags.  So a command line that is
plainly a `serve` with well-formed flags (the forms `cli.main` documents: global flags
before or after the command, `--flag value` or `--flag=value`) is read here and served by
the same `serve` that click calls; anything else — another command, `--help`, a value
out of range, an unknown flag — goes to click unchanged, which reports it as it always
has.  `tests/test_launch.py` checks that both read every accepted line alike.
"""

from __future__ import annotations

import os
import sys

# `typing` costs ~10 M instructions: loaded later (asyncio needs it) while the cyclic
# collector is off (see `serve`), not here.  Type checkers take this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["load", "run", "serve", "serve_args"]

LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
_FLAGS = {
    "--config": "config_path",
    "-c": "config_path",
    "--host": "host",
    "--port": "port",
    "-p": "port",
    "--log-level": "log_level",
    "-l": "log_level",
    "--workers": "workers",
}


def serve_args(argv: list[str]) -> dict[str, Any] | None:
    """The flags of a plain `serve` command line (or of none: the group serves too), or
    None when click must read it.  A later flag wins, as in click (the command's own
    flags come after the group's)."""
    obj: dict[str, Any] = {}
    command = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "serve" and not command:
            command = True
            continue
        name, eq, value = arg.partition("=")
        key = _FLAGS.get(name)
        if key is None or (eq and not name.startswith("--")):
            return None
        if not eq:
            if i >= len(argv):
                return None
            value = argv[i]
            i += 1
        if not value or value.startswith("-"):
            return None  # click's business: "-c -x", an empty value
        if key == "config_path" or key == "host":
            obj[key] = value
            continue
        if key == "log_level":
            if value.lower() not in LOG_LEVELS:
                return None
            obj[key] = value.lower()
            continue
        if not value.isdigit() or value != str(int(value)):
            return None
        number = int(value)
        if not (1 <= number <= (65535 if key == "port" else 256)):
            return None
        obj[key] = number
    return obj


def load(obj: dict[str, Any]) -> Any:
    """Load the config named by the flags / environment, with the flags applied."""
    from hydrallm.config.load import apply_overrides, load_config, resolve_config_path

    path = resolve_config_path(obj.get("config_path"), os.environ)
    config = load_config(path, os.environ)
    return apply_overrides(
        config, host=obj.get("host"), port=obj.get("port"), log_level=obj.get("log_level")
    )


def serve(obj: dict[str, Any], workers: int | None = None) -> None:
    """Start the proxy server (raises `HydraError` for what the user must fix)."""
    import gc

    # Starting makes what lives as long as the process (modules, classes, the config) and
    # frees next to nothing: the collector's passes over it would find no garbage.  It is
    # on again once the proxy listens (or, whatever happens, when this returns), with what
    # starting made frozen out of its view: under load its full passes then walk only what
    # requests made (c16: ~25k objects, 33 ms a pass every ~10 s, before; ~2k after).
    gc.disable()
    try:
        from hydrallm.app.serve import run_server

        if workers is None:
            workers = obj.get("workers")
        config = load(obj)
        run_server(
            config, workers=workers, reload_config=lambda: load(obj), on_listening=_listening
        )
    finally:
        gc.enable()


def _listening() -> None:
    import gc

    gc.freeze()
    gc.enable()


def run(args: list[str] | None = None) -> None:
    """The console script."""
    argv = sys.argv[1:] if args is None else list(args)
    obj = serve_args(argv)
    if obj is None:
        from hydrallm.cli.main import main

        main(args=argv)
        return
    from hydrallm.errors import HydraError

    try:
        serve(obj)
    except HydraError as exc:
        message = str(exc)
        plain = message.startswith(("config validation failed", "cannot load config"))
        sys.stderr.write((message if plain else f"hydrallm: {message}") + "\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
