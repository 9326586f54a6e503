"""`hydrallm service install | uninstall | status`: the click layer over `service.py`.

Registered on the `hydrallm` group by `main.py` like the journal's commands; everything
heavier is imported inside the commands (see `main.py`'s docstring).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from hydrallm.errors import HydraError

_MANAGERS = click.Choice(["auto", "systemd", "launchd"])


def _manager(choice: str) -> Any:
    from hydrallm.cli.service import detect_manager

    return detect_manager() if choice == "auto" else choice


def register(
    main: click.Group,
    global_options: Callable[[Any], Any],
    handle_errors: Callable[[Any], Any],
) -> None:
    """Add `service` and its commands to the `hydrallm` command group."""

    @main.group()
    def service() -> None:
        """Run hydrallm at login with systemd (Linux) or launchd (macOS)."""

    @service.command("install")
    @global_options
    @click.option(
        "--manager",
        type=_MANAGERS,
        default="auto",
        show_default=True,
        help="Service manager to write for.",
    )
    @click.pass_obj
    @handle_errors
    def service_install(obj: dict[str, Any], manager: str) -> None:
        """Write the service file for `hydrallm serve --config PATH` and print how to enable it."""
        from pathlib import Path

        from hydrallm.cli.service import hydrallm_command, install
        from hydrallm.config.load import resolve_config_path

        obj = obj or {}
        done = install(
            resolve_config_path(obj.get("config_path"), os.environ),
            home=Path.home(),
            manager=_manager(manager),
            command=hydrallm_command(),
            env=os.environ,
        )
        verb = "replaced" if done.replaced else "wrote"
        click.echo(f"{verb} {done.path}")
        for warning in done.warnings:
            click.echo(f"warning: {warning}", err=True)
        click.echo("enable and start it with:")
        click.echo(f"  {done.enable_command}")
        if done.manager == "systemd":
            if done.replaced:
                click.echo("(it was installed before: run `systemctl --user daemon-reload` first)")
            click.echo("to keep it running when you are logged out: loginctl enable-linger $USER")

    @service.command("uninstall")
    @click.option("--manager", type=_MANAGERS, default="auto", show_default=True)
    @handle_errors
    def service_uninstall(manager: str) -> None:
        """Remove the service file written by `service install`."""
        from pathlib import Path

        from hydrallm.cli.service import service_path, uninstall

        kind = _manager(manager)
        removed = uninstall(home=Path.home(), manager=kind)
        if removed is None:
            click.echo(f"not installed: there is no {service_path(kind, Path.home())}")
            return
        path, stop = removed
        click.echo(f"removed {path}")
        click.echo(f"if it is still running, stop it with:\n  {stop}")

    @service.command("status")
    @click.option("--manager", type=_MANAGERS, default="auto", show_default=True)
    @handle_errors
    def service_status(manager: str) -> None:
        """Say whether the service is installed, running, and answering."""
        from pathlib import Path

        from hydrallm.cli.service import service_state
        from hydrallm.cli.statusview import StatusUnavailable, default_url, fetch_status
        from hydrallm.config.load import load_config

        state = service_state(home=Path.home(), manager=_manager(manager))
        if not state.installed:
            click.echo(f"installed: no ({state.path} does not exist)")
            click.echo("install it with: hydrallm service install --config PATH")
            return
        click.echo(f"installed: yes ({state.path})")
        click.echo(f"config: {state.config_path or 'unknown'}")
        click.echo(f"{state.manager}: {state.running}")
        if state.running == "not running":
            click.echo(f"start it with: {state.enable_command}")
        if state.config_path:
            try:
                url = default_url(load_config(state.config_path, os.environ))
            except HydraError as exc:
                click.echo(f"answering: unknown (the config does not load: {exc})")
                return
            try:
                fetch_status(url, timeout=2.0)
            except StatusUnavailable:
                click.echo(f"answering: no ({url})")
            else:
                click.echo(f"answering: yes ({url})")
