"""`hydrallm service`: run the proxy at login/boot with the OS's own service manager.

Linux: a systemd *user* unit at `~/.config/systemd/user/hydrallm.cli.service`.
macOS: a launchd agent at `~/Library/LaunchAgents/dev.hydrallm.plist`.

Both run `<absolute hydrallm> serve --config <absolute config>`.  Nothing here starts or
stops the service itself: the commands to do so are printed, so the user sees exactly
what is run against their session's service manager.  A service manager does not read
the user's shell profile, so `$NAME` references in the config are reported.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from hydrallm.dataclass import dataclass
from hydrallm.errors import HydraError

__all__ = [
    "LAUNCHD_LABEL",
    "SYSTEMD_UNIT",
    "Installed",
    "Manager",
    "ServiceError",
    "ServiceState",
    "detect_manager",
    "env_references",
    "hydrallm_command",
    "install",
    "launchd_plist",
    "service_path",
    "service_state",
    "systemd_unit",
    "uninstall",
]

Manager = Literal["systemd", "launchd"]
SYSTEMD_UNIT = "hydrallm.service"
LAUNCHD_LABEL = "dev.hydrallm"
_ENV_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class ServiceError(HydraError):
    exit_code = 1


def detect_manager(platform: str = sys.platform) -> Manager:
    if platform == "darwin":
        return "launchd"
    if platform.startswith("linux"):
        return "systemd"
    raise ServiceError(
        f"hydrallm service supports Linux (systemd) and macOS (launchd), not {platform}; "
        "run `hydrallm serve` from your system's own service manager instead"
    )


def service_path(manager: Manager, home: Path) -> Path:
    if manager == "systemd":
        return home / ".config" / "systemd" / "user" / SYSTEMD_UNIT
    return home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def hydrallm_command(argv0: str | None = None) -> list[str]:
    """The absolute command that runs this hydrallm (the script, else `python -m hydrallm`)."""
    script = Path(argv0 if argv0 is not None else sys.argv[0])
    if script.name.startswith("hydrallm") and script.is_file():
        return [os.path.abspath(script)]
    found = shutil.which("hydrallm")
    if found and Path(found).parent == Path(sys.executable).parent:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "hydrallm"]


def _walk_strings(value: object, place: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield place, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk_strings(item, f"{place}.{key}" if place else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk_strings(item, f"{place}[{index}]")


def env_references(toml_text: str) -> list[tuple[str, str]]:
    """(place, variable) for every `$NAME` / `${NAME}` value in the config, in file order."""
    try:
        data = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError:
        return []
    found: list[tuple[str, str]] = []
    for place, text in _walk_strings(data, ""):
        match = _ENV_REF.fullmatch(text)
        if match:
            found.append((place, match.group(1) or match.group(2)))
    return found


def _systemd_quote(arg: str) -> str:
    # `%` starts a specifier and `$` a variable in ExecStart; double quotes keep spaces.
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def systemd_unit(command: list[str], config_path: Path, *, stop_timeout: float = 30.0) -> str:
    exec_start = " ".join(
        _systemd_quote(a) for a in [*command, "serve", "--config", str(config_path)]
    )
    return (
        "# Written by `hydrallm service install`; remove with `hydrallm service uninstall`.\n"
        "[Unit]\n"
        "Description=hydrallm LLM API proxy (retry and model fallback)\n"
        "\n"
        "[Service]\n"
        "Type=exec\n"
        f"ExecStart={exec_start}\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "# On SIGTERM hydrallm lets in-flight requests finish (server.shutdown_timeout).\n"
        f"TimeoutStopSec={int(stop_timeout) + 15}\n"
        "Environment=PYTHONUNBUFFERED=1\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def launchd_plist(command: list[str], config_path: Path, log_path: Path) -> bytes:
    plist = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [*command, "serve", "--config", str(config_path)],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ProcessType": "Background",
        "StandardOutPath": str(log_path),
        "StandardErrorPath": str(log_path),
    }
    return plistlib.dumps(plist)


@dataclass(frozen=True, slots=True)
class Installed:
    manager: Manager
    path: Path
    enable_command: str
    warnings: tuple[str, ...]
    replaced: bool


def _enable_command(manager: Manager, path: Path) -> str:
    if manager == "systemd":
        return "systemctl --user enable --now hydrallm"
    return f"launchctl load -w {path}"


def _disable_command(manager: Manager, path: Path) -> str:
    if manager == "systemd":
        return "systemctl --user disable --now hydrallm"
    return f"launchctl unload -w {path}"


def _env_warnings(manager: Manager, toml_text: str, env: Mapping[str, str]) -> list[str]:
    where = "the unit's [Service] section as Environment=NAME=value"
    if manager == "launchd":
        where = "the plist's EnvironmentVariables dictionary"
    warnings = []
    for place, name in env_references(toml_text):
        state = "set in this shell" if env.get(name) else "not set even in this shell"
        warnings.append(
            f"{place} refers to ${name} ({state}); {manager} will not see your shell's "
            f"environment: write the value into the config, or add it to {where}"
        )
    return warnings


def install(
    config_path: Path,
    *,
    home: Path,
    manager: Manager,
    command: list[str],
    env: Mapping[str, str],
) -> Installed:
    """Validate the config, then write the unit/plist; the service is not started."""
    from hydrallm.config.load import load_config

    config_path = Path(os.path.abspath(config_path.expanduser()))
    config = load_config(config_path, env)  # raises ConfigError: no service that cannot start
    text = config_path.read_text(encoding="utf-8")
    path = service_path(manager, home)
    replaced = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    if manager == "systemd":
        path.write_text(
            systemd_unit(command, config_path, stop_timeout=config.server.shutdown_timeout),
            encoding="utf-8",
        )
    else:
        log = home / "Library" / "Logs" / "hydrallm.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(launchd_plist(command, config_path, log))
    return Installed(
        manager=manager,
        path=path,
        enable_command=_enable_command(manager, path),
        warnings=tuple(_env_warnings(manager, text, env)),
        replaced=replaced,
    )


def uninstall(*, home: Path, manager: Manager) -> tuple[Path, str] | None:
    """Remove the unit/plist; returns (removed path, command that stops a running one)."""
    path = service_path(manager, home)
    if not path.exists():
        return None
    path.unlink()
    return path, _disable_command(manager, path)


@dataclass(frozen=True, slots=True)
class ServiceState:
    manager: Manager
    path: Path
    installed: bool
    config_path: str | None  # from the installed file
    running: str  # "running", "not running", or "unknown (...)"
    enable_command: str


def _config_from_file(manager: Manager, path: Path) -> str | None:
    try:
        if manager == "launchd":
            args = plistlib.loads(path.read_bytes()).get("ProgramArguments", [])
        else:
            line = next(
                (
                    x
                    for x in path.read_text(encoding="utf-8").splitlines()
                    if x.startswith("ExecStart=")
                ),
                "",
            )
            args = [
                a.replace("%%", "%").replace("$$", "$")
                for a in re.findall(r'"((?:[^"\\]|\\.)*)"', line)
            ]
    except (OSError, ValueError, plistlib.InvalidFileException):
        return None
    if "--config" in args:
        index = args.index("--config")
        if index + 1 < len(args):
            return str(args[index + 1])
    return None


def _ask_manager(manager: Manager) -> str:
    if manager == "systemd":
        argv = ["systemctl", "--user", "is-active", "hydrallm"]
    else:
        argv = ["launchctl", "list", LAUNCHD_LABEL]
    if shutil.which(argv[0]) is None:
        return f"unknown ({argv[0]} is not available)"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({argv[0]}: {exc})"
    out = (done.stdout.strip() or done.stderr.strip()).splitlines()
    first = out[0] if out else ""
    if manager == "systemd":
        if first == "active":
            return "running"
        if first in ("inactive", "failed", "activating", "deactivating"):
            return "not running" if first == "inactive" else first
        return f"unknown ({first or 'no answer from systemctl --user'})"
    if done.returncode != 0:
        return "not running"
    pid = re.search(r'"PID"\s*=\s*(\d+)', done.stdout)
    return "running" if pid else "not running"


def service_state(*, home: Path, manager: Manager) -> ServiceState:
    path = service_path(manager, home)
    installed = path.exists()
    return ServiceState(
        manager=manager,
        path=path,
        installed=installed,
        config_path=_config_from_file(manager, path) if installed else None,
        running=_ask_manager(manager) if installed else "not running",
        enable_command=_enable_command(manager, path),
    )
