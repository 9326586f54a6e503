"""Turn a TOML config file (schema 1 or schema 2) into a `config.Config`.

`load_config` does the IO; `parse_config` is pure (text and an environment in, a `Config`
out) and never raises anything but `ConfigError`, which lists every problem found, each on
one line with its place (`model 0: ...`, `endpoint "zai": ...`, `retry.default_timeout: ...`).

Schema 1 (`[server]`, `[endpoints.NAME]`, `[[models]]`) yields one listener named "default";
schema 2 (`[providers.NAME]`, `[models.ID]`, `[[listeners]]`) yields one per `[[listeners]]`.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from hydrallm.config import (
    Config,
    EndpointConfig,
    ListenerConfig,
    ModelConfig,
)
from hydrallm.config.cluster import CLUSTER_KEYS, cluster_section
from hydrallm.config.endpoints import (
    ENDPOINT_KEYS,
    build_model,
    endpoint_section,
    finish_endpoint,
    model_entries,
)
from hydrallm.config.sections import (
    COOLDOWN_KEYS,
    DEFAULT_LISTENER,
    JOURNAL_KEYS,
    LOG_KEYS,
    LOG_LEVELS,
    RETRY_KEYS,
    ROUTING_KEYS,
    SERVER_KEYS,
    TOML_POSITION,
    TOP_TABLES,
    check_listeners,
    cooldown_section,
    journal_section,
    listener_section,
    log_section,
    prices_section,
    retry_section,
    routing_section,
    server_section,
)
from hydrallm.config.sections import log_level as parse_log_level
from hydrallm.config.tables import (
    Report,
    Table,
    shown,
    suggestion,
)
from hydrallm.errors import ConfigError

CONFIG_ENV_VAR: Final = "HYDRALLM_CONFIG"
TEMPLATE_NAME: Final = "default_config.toml"

# --------------------------------------------------------------------------- paths and IO


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """`~/.config/hydrallm/config.toml` (Windows: `%USERPROFILE%\\.config\\hydrallm\\config.toml`)."""
    env = os.environ if env is None else env
    home_var = "USERPROFILE" if sys.platform == "win32" else "HOME"
    home = env.get(home_var)
    base = Path(home) if home else Path.home()
    return base / ".config" / "hydrallm" / "config.toml"


def resolve_config_path(cli_path: str | None, env: Mapping[str, str]) -> Path:
    """The config file to use: the --config flag, else $HYDRALLM_CONFIG, else the default."""
    if cli_path:
        return Path(cli_path).expanduser()
    from_env = env.get(CONFIG_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser()
    return default_config_path(env)


def default_template() -> str:
    """The commented starter config that `hydrallm edit` writes when no file exists."""
    from importlib import resources  # only `hydrallm edit` writes the template

    return resources.files("hydrallm.config").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and parse the config file at `path`; `env` defaults to the process environment.

    Raises ConfigError when the file is missing, unreadable or invalid.
    """
    env = os.environ if env is None else env
    where = str(path)
    try:
        # A FIFO (or a device) would block the read forever, waiting for a writer: only a
        # regular file is read.  stat() itself never blocks.
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(where)
        if not stat.S_ISREG(mode):
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file"
            raise ConfigError(
                [f"{where} is {kind}; the config must be a regular file"],
                where,
                heading="cannot load config",
            )
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            [f'no config file at {where}; run "hydrallm edit" to create one'],
            where,
            heading="cannot load config",
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            [f"{where} is a directory, not a config file"], where, heading="cannot load config"
        ) from None
    except OSError as exc:
        raise ConfigError(
            [f"cannot read {where}: {exc.strerror or exc}"], where, heading="cannot load config"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{where} is not valid UTF-8 (byte {exc.start}); TOML files must be UTF-8"],
            where,
            heading="cannot load config",
        ) from None
    return parse_config(text, path=where, env=env)


# --------------------------------------------------------------------------- CLI overrides


def apply_overrides(
    config: Config, *, host: str | None, port: int | None, log_level: str | None
) -> Config:
    """Return `config` with the --host, --port and --log-level flags applied.

    --host applies to every listener, --port only when there is exactly one listener.
    """
    problems: list[str] = []
    server, listeners, log = config.server, config.listeners, config.log
    if host is not None:
        server = replace(server, host=host)
        listeners = tuple(replace(item, host=host) for item in listeners)
    if port is not None:
        if len(listeners) > 1:
            problems.append(
                "--port cannot be used with several listeners; set each listener's port in the config"
            )
        elif not 1 <= port <= 65535:
            problems.append(f"--port {port} is out of range (1..65535)")
        else:
            server = replace(server, port=port)
            listeners = tuple(replace(item, port=port) for item in listeners)
    if log_level is not None:
        level = parse_log_level(log_level)
        if level is None:
            problems.append(f"--log-level {shown(log_level)} is not one of {', '.join(LOG_LEVELS)}")
        else:
            log = replace(log, level=level)
    if problems:
        raise ConfigError(problems, config.path)
    return replace(config, server=server, listeners=listeners, log=log)


# --------------------------------------------------------------------------- the whole file


def _decode(text: str, path: str | None) -> dict[str, Any]:
    name = (Path(path).name or path) if path else "config"
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.match(TOML_POSITION, str(exc))
        if match:
            problem = f"{name}: TOML syntax error at {match.group(2)}: {match.group(1)}"
        else:
            problem = f"{name}: TOML syntax error: {exc}"
    except RecursionError:
        problem = f"{name}: TOML syntax error: values are nested too deeply"
    raise ConfigError([" ".join(problem.splitlines())], path)


def _bracketed(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else shown(key)


def parse_config(text: str, *, path: str | None = None, env: Mapping[str, str]) -> Config:
    """Parse config `text` (either schema); `env` resolves `$NAME` values.

    Pure: no file or environment access beyond the arguments.  Raises ConfigError listing
    every problem found; never raises anything else.
    """
    data = _decode(text, path)
    report = Report(env=env)
    for key, value in data.items():
        if key in TOP_TABLES:
            continue
        if isinstance(value, dict | list):
            hint = suggestion(key, TOP_TABLES, brackets=True)
            report.problem(f"unknown table [{_bracketed(key)}]{hint}")
        else:
            report.problem(f"unknown top-level key {shown(key)}{suggestion(key, TOP_TABLES)}")

    def section(name: str, keys: Sequence[str]) -> Table:
        return Table(data.get(name, {}), name, report, keys, dotted=True)

    server = server_section(section("server", SERVER_KEYS))
    log = log_section(section("log", LOG_KEYS))
    retry = retry_section(section("retry", RETRY_KEYS))
    cooldown = cooldown_section(section("cooldown", COOLDOWN_KEYS))
    cluster = cluster_section(section("cluster", CLUSTER_KEYS))
    routing = routing_section(section("routing", ROUTING_KEYS))
    journal = journal_section(section("journal", JOURNAL_KEYS))
    prices = prices_section(data.get("prices", {}), report)

    endpoints: dict[str, EndpointConfig] = {}
    for group_name in ("endpoints", "providers"):
        group = data.get(group_name, {})
        if not isinstance(group, dict):
            report.problem(f"{group_name}: expected [{group_name}.NAME] tables, got {shown(group)}")
            continue
        for name, raw in group.items():
            place = f"endpoint {shown(name)}"
            if name in endpoints:
                report.problem(f"{place}: defined in both [endpoints] and [providers]")
                continue
            endpoints[name] = endpoint_section(name, Table(raw, place, report, ENDPOINT_KEYS))

    raw_models = data.get("models", [])
    entries = model_entries(raw_models, report)
    if not entries and isinstance(raw_models, list | dict):
        report.problem("at least one model must be configured")
    # A dict: ordered (for suggestions and the default chain) and O(1) to ask "is it known".
    known = dict.fromkeys(ident for ident, _ in entries)
    # Types by endpoint in one pass: asking every endpoint about every entry is quadratic.
    endpoint_types: dict[str, set[str | None]] = {}
    for _, entry in entries:
        if entry.endpoint is not None:
            endpoint_types.setdefault(entry.endpoint, set()).add(entry.type)
    models: dict[str, ModelConfig] = {}
    for ident, entry in entries:
        model = build_model(ident, entry, endpoints, retry, report)
        if model is not None:
            models[ident] = model

    for name, endpoint in endpoints.items():
        types = endpoint_types.get(name, set())
        endpoints[name] = finish_endpoint(endpoint, types, report)

    raw_listeners = data.get("listeners", [])
    listeners: tuple[ListenerConfig, ...] = ()
    if not isinstance(raw_listeners, list):
        report.problem(f"listeners: expected [[listeners]] entries, got {shown(raw_listeners)}")
    elif raw_listeners:
        listeners = tuple(
            listener_section(index, raw, server, known, report)
            for index, raw in enumerate(raw_listeners)
        )
        check_listeners(listeners, report)
        _warn_unused(listeners, known, data.get("server"), report)
    else:
        listeners = (
            ListenerConfig(
                name=DEFAULT_LISTENER,
                host=server.host,
                port=server.port,
                read_timeout=server.read_timeout,
                write_timeout=server.write_timeout,
                models=tuple(known),
                auth_keys=server.auth_keys,
            ),
        )
    # Chains may mix model types (issue 16): the original's "mixed model types are not
    # allowed" no longer applies.

    if report.problems:
        raise ConfigError(report.problems, path)
    return Config(
        server=server,
        log=log,
        retry=retry,
        cooldown=cooldown,
        routing=routing,
        endpoints=endpoints,
        models=models,
        listeners=listeners,
        cluster=cluster,
        journal=journal,
        prices=prices,
        path=path,
        warnings=tuple(report.warnings),
        secrets=frozenset(report.secrets),
    )


def _warn_unused(
    listeners: Sequence[ListenerConfig], known: Iterable[str], server: object, report: Report
) -> None:
    """Warn about settings that [[listeners]] make pointless, so a typo is not silent."""
    used = {
        i for item in listeners for i in (*item.models, *(m for r in item.routes for m in r.models))
    }
    for ident in known:
        if ident not in used:
            report.warnings.append(f"model {shown(ident)} is not used by any listener")
    if isinstance(server, dict):
        ignored = [key for key in ("host", "port") if key in server]
        if ignored:
            report.warnings.append(
                f"server: {' and '.join(ignored)} {'is' if len(ignored) == 1 else 'are'}"
                " not used when [[listeners]] are configured"
            )
