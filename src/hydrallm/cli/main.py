"""The `hydrallm` command: a thin click layer over loader, runner and friends.

Global flags (--config/-c, --host, --port/-p, --log-level/-l) are accepted before or after
the subcommand.  Errors the user must fix exit 1 with a one-line (or one-per-problem)
message and no traceback; usage errors exit 2 (click's default).

Every command imports what it needs inside its body: this module is imported on each
start, and `hydrallm serve` (a service that starts at login) and `hydrallm --help` should
not pay for the demo, the terminal views, the journal readers or a subprocess.
`tests/test_startup.py` lists the modules they must not load.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from hydrallm import __build_date__, __commit__, __version__
from hydrallm.errors import HydraError

F = TypeVar("F", bound=Callable[..., Any])

LOG_LEVELS = click.Choice(["debug", "info", "warn", "warning", "error"], case_sensitive=False)


def _global_options(func: F) -> F:
    """Add the global flags to a command; a value given here wins over the group's."""

    @click.option(
        "--config",
        "-c",
        "config_path",
        # Not dir_okay=False: click would exit 2 (usage); a directory given as the config
        # is a config problem (exit 1, "... is a directory"), reported by load_config.
        type=click.Path(),
        default=None,
        help="Config file (default: $HYDRALLM_CONFIG or ~/.config/hydrallm/config.toml).",
    )
    @click.option("--host", default=None, help="Listen address (overrides the config).")
    @click.option(
        "--port",
        "-p",
        type=click.IntRange(1, 65535),
        default=None,
        help="Listen port (overrides the config).",
    )
    @click.option("--log-level", "-l", type=LOG_LEVELS, default=None, help="Log level.")
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        config_path: str | None,
        host: str | None,
        port: int | None,
        log_level: str | None,
        **kwargs: Any,
    ) -> Any:
        ctx = click.get_current_context()
        obj = ctx.ensure_object(dict)
        for key, value in (
            ("config_path", config_path),
            ("host", host),
            ("port", port),
            ("log_level", log_level),
        ):
            if value is not None:
                obj[key] = value
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = 1) -> None:
    """Print an error the user must fix (no traceback) and exit."""
    plain = message.startswith(("config validation failed", "cannot load config"))
    click.echo(message if plain else f"hydrallm: {message}", err=True)
    sys.exit(code)


def load(obj: dict[str, Any]) -> Any:
    """Load the config named by the flags / environment, with the flags applied."""
    from hydrallm.launch import load as load_config

    return load_config(obj)


def handle_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HydraError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        return None

    return wrapper  # type: ignore[return-value]


WORKERS = click.IntRange(1, 256)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@_global_options
@click.option(
    "--workers",
    type=WORKERS,
    default=None,
    help="With no command: worker processes sharing each listener (as `serve --workers`).",
)
@click.pass_context
def main(ctx: click.Context, workers: int | None = None) -> None:
    """hydrallm: an LLM API proxy with automatic retry and model fallback.

    With no command, starts the server (same as `hydrallm serve`).
    """
    if workers is not None:
        ctx.ensure_object(dict)["workers"] = workers
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


@main.command()
@_global_options
@click.option(
    "--workers",
    type=WORKERS,
    default=None,
    help="Worker processes sharing each listener (default: server.workers or 1).",
)
@click.pass_obj
@handle_errors
def serve(obj: dict[str, Any], workers: int | None = None) -> None:
    """Start the proxy server."""
    # `hydrallm serve` with plain flags does not come here: `hydrallm.launch` serves it
    # without loading click.  Both end in the same function.
    from hydrallm.launch import serve as serve_here

    serve_here(obj or {}, workers)


@main.command()
@_global_options
@click.pass_obj
@handle_errors
def check(obj: dict[str, Any]) -> None:
    """Validate the config and print each listener's chain, without starting."""
    from hydrallm.cli.describe import describe_config

    config = load(obj or {})
    click.echo(describe_config(config))
    if config.cluster.redis is not None:
        import asyncio

        from hydrallm.app.cluster import check_redis

        click.echo("")
        click.echo(asyncio.run(check_redis(config)))


@main.command()
@_global_options
@click.pass_obj
@handle_errors
def version(obj: dict[str, Any]) -> None:
    """Print version, commit and build date."""
    commit, built = _build_info()
    click.echo(f"hydrallm {__version__}")
    click.echo(f"commit: {commit}")
    click.echo(f"built: {built}")


def _build_info() -> tuple[str, str]:
    """Commit and date stamped by a release build; in a source checkout, asked of git."""
    import subprocess
    from pathlib import Path

    if __commit__ != "unknown":
        return __commit__, __build_date__
    here = Path(__file__).resolve().parent.parent  # src/hydrallm
    if here.parent.name != "src" or not (here.parent.parent / "pyproject.toml").exists():
        return __commit__, __build_date__  # an installed copy: no checkout to ask
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "log", "-1", "--format=%h %cs"],
            capture_output=True,
            text=True,
            timeout=2,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return __commit__, __build_date__
    if len(out) != 2:
        return __commit__, __build_date__
    return f"{out[0]} (source checkout)", out[1]


def _find_editor() -> list[str] | None:
    import shutil

    for var in ("VISUAL", "EDITOR"):
        value = os.environ.get(var, "").strip()
        if value:
            import shlex

            return shlex.split(value)
    candidates = (
        ["notepad"] if sys.platform == "win32" else ["code", "zed", "nvim", "vim", "vi", "nano"]
    )
    for name in candidates:
        found = shutil.which(name)
        if found:
            return [found, "--wait"] if name in ("code", "zed") else [found]
    return None


@main.command()
@_global_options
@click.pass_obj
@handle_errors
def edit(obj: dict[str, Any]) -> None:
    """Open the config in $EDITOR (created from a commented template if missing), then validate it."""
    import subprocess
    from pathlib import Path

    from hydrallm.config.load import default_template, resolve_config_path
    from hydrallm.errors import ConfigError

    obj = obj or {}
    path = Path(resolve_config_path(obj.get("config_path"), os.environ))
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(default_template(), encoding="utf-8")
        click.echo(f"created {path} from the default template", err=True)
    editor = _find_editor()
    if editor is None:
        fail(f"no editor found: set $EDITOR, or edit {path} by hand")
        return
    try:
        subprocess.run([*editor, str(path)], check=False)
    except OSError as exc:
        fail(f"cannot start editor {editor[0]}: {exc.strerror or exc}")
    try:
        load(obj | {"config_path": str(path)})
    except ConfigError as exc:
        fail(str(exc))
    click.echo(f"{path}: valid", err=True)


def run() -> None:  # pragma: no cover - alias for entry points
    main()


# --------------------------------------------------------------------------- demo, status, service


@main.command()
@click.option(
    "--requests",
    "requests_",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="Requests in each run.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=16,
    show_default=True,
    help="Requests in flight at once.",
)
@click.option(
    "--failure-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.3,
    show_default=True,
    help="Fraction (0..1) of the primary's answers that fail.",
)
@click.option(
    "--seed", type=int, default=7, show_default=True, help="Seed of the failure sequence."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Port of the demo proxy (default: any free port).",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="Leave the demo proxy up after the runs, to curl it and open its status page.",
)
@handle_errors
def demo(
    requests_: int,
    concurrency: int,
    failure_rate: float,
    seed: int,
    port: int,
    keep_running: bool,
) -> None:
    """Show hydrallm hiding a flaky provider: no config, API key or network needed."""
    import asyncio

    from rich.console import Console

    from hydrallm.cli.demo import DemoOptions, run_demo

    options = DemoOptions(
        requests=requests_,
        concurrency=concurrency,
        failure_rate=failure_rate,
        seed=seed,
        port=port,
        keep_running=keep_running,
    )
    report = asyncio.run(run_demo(options, Console(highlight=False)))
    if not report.all_succeeded_through_proxy:
        sys.exit(1)


def _status_url(obj: dict[str, Any], url: str | None) -> str:
    from hydrallm.cli.statusview import default_url

    if url:
        return url
    try:
        config = load(obj)
    except HydraError:
        config = None
    return str(default_url(config))


@main.command()
@_global_options
@click.option("--url", default=None, help="Proxy address (default: the configured listener).")
@click.option("--watch", "-w", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option(
    "--requests",
    "requests_",
    type=click.IntRange(0, 50),
    default=10,
    show_default=True,
    help="Recent requests to show.",
)
@click.pass_obj
@handle_errors
def status(obj: dict[str, Any], url: str | None, watch: bool, requests_: int) -> None:
    """Show a running proxy's models, chains and recent requests."""
    import time

    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from hydrallm.cli.interrupt import ctrl_c_stops
    from hydrallm.cli.statusview import StatusUnavailable, fetch_status, render_status

    target = _status_url(obj or {}, url)
    console = Console(highlight=False)
    if not watch:
        console.print(render_status(fetch_status(target), target, requests=requests_))
        return
    ctrl_c_stops()

    def view() -> Any:
        try:
            return render_status(fetch_status(target), target, requests=requests_)
        except StatusUnavailable as exc:
            return Text(f"hydrallm: {exc} (retrying)", style="red")

    if not console.is_terminal:
        # Piped or logged: one full frame per second, one after the other.
        while True:
            console.print(view())
            console.rule()
            time.sleep(1.0)
    with Live(console=console, auto_refresh=False, screen=False) as live:
        while True:
            live.update(view(), refresh=True)
            time.sleep(1.0)


def _register_commands() -> None:
    from hydrallm.cli.journal_cmds import register as journal
    from hydrallm.cli.service_cmds import register as service

    service(main, _global_options, handle_errors)
    journal(main, _global_options, load, handle_errors)


_register_commands()
