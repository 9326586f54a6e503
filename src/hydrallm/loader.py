"""Turn a TOML config file (schema 1 or schema 2) into a `config.Config`.

`load_config` does the IO; `parse_config` is pure (text and an environment in, a `Config`
out) and never raises anything but `ConfigError`, which lists every problem found, each on
one line with its place (`model 0: ...`, `endpoint "zai": ...`, `retry.default_timeout: ...`).

Schema 1 (`[server]`, `[endpoints.NAME]`, `[[models]]`) yields one listener named "default";
schema 2 (`[providers.NAME]`, `[models.ID]`, `[[listeners]]`) yields one per `[[listeners]]`.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

from hydrallm import units
from hydrallm.config import (
    API_TYPES,
    ApiType,
    Config,
    CooldownConfig,
    EndpointConfig,
    ListenerConfig,
    LogConfig,
    ModelConfig,
    Prefill,
    RetryConfig,
    Route,
    ServerConfig,
)
from hydrallm.errors import ConfigError

CONFIG_ENV_VAR: Final = "HYDRALLM_CONFIG"
TEMPLATE_NAME: Final = "default_config.toml"
DEFAULT_LISTENER: Final = "default"

_TOP_TABLES = (
    "server",
    "log",
    "retry",
    "cooldown",
    "endpoints",
    "providers",
    "models",
    "listeners",
)
_SERVER_KEYS = (
    "host",
    "port",
    "read_timeout",
    "write_timeout",
    "max_body_size",
    "shutdown_timeout",
    "auth_keys",
    "workers",
)
_LOG_KEYS = ("level", "include_error_body")
_RETRY_KEYS = (
    "max_cycles",
    "default_timeout",
    "default_interval",
    "exponential_backoff",
    "max_interval",
    "max_retry_after",
    "first_token_timeout",
    "stream_idle_timeout",
    "total_timeout",
    "retry_on",
    "fallback_on",
    "fallback_on_body",
    "fallback_on_timeout",
    "midstream",
)
_COOLDOWN_KEYS = ("enabled", "failures", "duration", "max_duration")
_ENDPOINT_KEYS = (
    "url",
    "api_key",
    "strip_version_prefix",
    "interval",
    "aws_region",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_profile",
    "prefill",
)
_MODEL_KEYS = ("endpoint", "provider", "type", "model", "attempts", "timeout", "interval")
_LISTENER_KEYS = (
    "name",
    "host",
    "port",
    "read_timeout",
    "write_timeout",
    "models",
    "auth_keys",
    "routes",
)
_LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warn", "error")
_ENV_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_TOML_POSITION = re.compile(r"^(.*) \(at (line \d+, column \d+|end of document)\)$")
_SUPPORTED = ", ".join(API_TYPES)

_T = TypeVar("_T")
LogLevel = Literal["debug", "info", "warn", "error"]


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
    return resources.files("hydrallm").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and parse the config file at `path`; `env` defaults to the process environment.

    Raises ConfigError when the file is missing, unreadable or invalid.
    """
    env = os.environ if env is None else env
    where = str(path)
    try:
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
        level = _log_level(log_level)
        if level is None:
            problems.append(
                f"--log-level {_show(log_level)} is not one of {', '.join(_LOG_LEVELS)}"
            )
        else:
            log = replace(log, level=level)
    if problems:
        raise ConfigError(problems, config.path)
    return replace(config, server=server, listeners=listeners, log=log)


def _log_level(text: str) -> LogLevel | None:
    lowered = text.strip().lower()
    if lowered == "warning":
        return "warn"
    for level in _LOG_LEVELS:
        if lowered == level:
            return level
    return None


# --------------------------------------------------------------------------- message helpers


def _show(value: object) -> str:
    """A value as it may appear inside a one-line problem message."""
    if isinstance(value, str):
        return units.show_value(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return units.show_value(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return _show(str(value))


def _suggest(word: str, options: Iterable[str], *, brackets: bool = False) -> str:
    """` (did you mean "x"?)` for the closest of `options`, or nothing."""
    close = difflib.get_close_matches(word, list(options), n=1)
    if not close:
        return ""
    return f" (did you mean [{close[0]}]?)" if brackets else f" (did you mean {_show(close[0])}?)"


def _unset_consequence(key: str) -> str:
    if key == "api_key":
        return "the client's own credentials will pass through"
    if key.startswith("aws_"):
        return "it is treated as not configured"
    if key == "auth_keys":
        return "that key is ignored"
    return "it is treated as not set"


# --------------------------------------------------------------------------- reading tables

_HEADER_UNSAFE = re.compile(r"[\r\n\x00]")
_MISSING: Final = object()


@dataclass
class _Report:
    """What one parse found: problems (fatal), warnings, and secrets to redact."""

    env: Mapping[str, str]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)

    def problem(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)

    def resolve(self, value: str, place: str, key: str) -> str | None:
        """Replace a whole-value `$NAME` / `${NAME}` by the variable; None when unset/empty."""
        match = _ENV_REF.fullmatch(value)
        if match is None:
            return value
        name = match.group(1) or match.group(2)
        resolved = self.env.get(name)
        if resolved:
            return resolved
        warning = f"{place}: {key} refers to {value}, which is not set; {_unset_consequence(key)}"
        if warning not in self.warnings:
            self.warnings.append(warning)
        return None


class _Table:
    """Typed, validated access to the keys of one TOML table.

    Each getter returns the default (after recording a problem) when the value is unusable,
    so reading continues and every problem of the file is reported at once.
    """

    def __init__(
        self,
        raw: object,
        place: str,
        report: _Report,
        allowed: Sequence[str],
        *,
        dotted: bool = False,
    ) -> None:
        self.place = place
        self.report = report
        self.dotted = dotted
        self.raw: Mapping[str, object] = raw if isinstance(raw, dict) else {}
        if not isinstance(raw, dict):
            report.problem(f"{place}: expected a table, got {_show(raw)}")
        for key in self.raw:
            if key not in allowed:
                report.problem(f"{place}: unknown key {_show(key)}{_suggest(key, allowed)}")

    def where(self, key: str) -> str:
        return f"{self.place}.{key}" if self.dotted else f"{self.place}: {key}"

    def has(self, key: str) -> bool:
        return key in self.raw

    def _wrong(self, key: str, expected: str, value: object) -> None:
        self.report.problem(f"{self.where(key)}: expected {expected}, got {_show(value)}")

    def _value(self, key: str) -> tuple[object, bool]:
        """The raw value (env references resolved) and whether it came from the environment."""
        value = self.raw.get(key, _MISSING)
        if isinstance(value, str) and _ENV_REF.fullmatch(value):
            resolved = self.report.resolve(value, self.place, key)
            return (_MISSING if resolved is None else resolved), True
        return value, False

    def string(self, key: str, *, secret: bool = False) -> str | None:
        value, _ = self._value(key)
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            self._wrong(key, "a string", value)
            return None
        if secret and _HEADER_UNSAFE.search(value):
            # Keys go into HTTP headers: a line break there would inject a header.
            self.report.problem(
                f"{self.where(key)}: contains a line break or NUL, which cannot go into an HTTP header"
            )
            return None
        if secret and value != "-":
            self.report.secrets.add(value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value, from_env = self._value(key)
        if value is _MISSING:
            return default
        if from_env and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            self._wrong(key, "true or false", value)
            return default
        return value

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value, from_env = self._value(key)
        if value is _MISSING:
            return default
        if from_env and isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,18}", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong(key, "an integer", value)
            return default
        if minimum is not None and value < minimum:
            self.report.problem(f"{self.where(key)}: must be at least {minimum}, got {value}")
            return default
        return value

    def port(self, key: str, default: int) -> int:
        value = self.integer(key, default)
        if not 1 <= value <= 65535:
            self.report.problem(f"{self.place}: {key} {value} is out of range (1..65535)")
            return default
        return value

    def _parsed(
        self, key: str, parse: Callable[[Any], _T], kinds: tuple[type, ...], expected: str
    ) -> _T | None:
        value, _ = self._value(key)
        if value is _MISSING:
            return None
        if isinstance(value, bool) or not isinstance(value, kinds):
            self._wrong(key, expected, value)
            return None
        try:
            return parse(value)
        except ValueError as exc:
            self.report.problem(f"{self.where(key)}: {exc}")
            return None

    def duration(self, key: str) -> float | None:
        return self._parsed(
            key, units.parse_duration, (str, int, float), 'a duration such as "30s"'
        )

    def size(self, key: str) -> int | None:
        return self._parsed(key, units.parse_size, (str, int), 'a size such as "100MiB"')

    def choice(self, key: str, options: Sequence[_T]) -> _T | None:
        value = self.string(key)
        if value is None:
            return None
        for option in options:
            if value == option:
                return option
        allowed = ", ".join(str(o) for o in options)
        self.report.problem(f"{self.where(key)}: {_show(value)} is not one of {allowed}")
        return None

    def strings(self, key: str, *, secret: bool = False) -> tuple[str, ...] | None:
        """A list of strings; `$NAME` items that are unset are dropped (with a warning)."""
        value = self.raw.get(key, _MISSING)
        if value is _MISSING:
            return None
        if not isinstance(value, list):
            self._wrong(key, "an array of strings", value)
            return None
        items: list[str] = []
        for item in value:
            if not isinstance(item, str):
                self._wrong(key, "an array of strings", item)
                continue
            resolved = self.report.resolve(item, self.place, key)
            if resolved is None:
                continue
            if secret and _HEADER_UNSAFE.search(resolved):
                self.report.problem(
                    f"{self.where(key)}: contains a line break or NUL, which cannot go into an HTTP header"
                )
                continue
            if secret:
                self.report.secrets.add(resolved)
            items.append(resolved)
        return tuple(items)

    def statuses(self, key: str) -> frozenset[int] | None:
        value = self.raw.get(key, _MISSING)
        if value is _MISSING:
            return None
        if not isinstance(value, list):
            self._wrong(key, "an array of HTTP status codes", value)
            return None
        codes: set[int] = set()
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int):
                self._wrong(key, "an array of HTTP status codes", item)
            elif not 100 <= item <= 599:
                self.report.problem(f"{self.where(key)}: status {item} is out of range (100..599)")
            else:
                codes.add(item)
        return frozenset(codes)


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


# --------------------------------------------------------------------------- sections

_MIDSTREAM: tuple[Literal["continue", "error"], ...] = ("continue", "error")
_PREFILL: tuple[Prefill, ...] = ("auto", "yes", "no")


def _server(t: _Table) -> ServerConfig:
    d = ServerConfig()
    return ServerConfig(
        host=_or(t.string("host"), d.host),
        port=t.port("port", d.port),
        read_timeout=_or(t.duration("read_timeout"), d.read_timeout),
        write_timeout=_or(t.duration("write_timeout"), d.write_timeout),
        max_body_size=_or(t.size("max_body_size"), d.max_body_size),
        shutdown_timeout=_or(t.duration("shutdown_timeout"), d.shutdown_timeout),
        auth_keys=_or(t.strings("auth_keys", secret=True), d.auth_keys),
        workers=t.integer("workers", d.workers, minimum=1),
    )


def _log(t: _Table) -> LogConfig:
    d = LogConfig()
    level: LogLevel = d.level
    text = t.string("level")
    if text is not None:
        parsed = _log_level(text)
        if parsed is None:
            t.report.problem(
                f"{t.where('level')}: {_show(text)} is not one of {', '.join(_LOG_LEVELS)}"
            )
        else:
            level = parsed
    return LogConfig(
        level=level, include_error_body=t.boolean("include_error_body", d.include_error_body)
    )


def _retry(t: _Table) -> RetryConfig:
    d = RetryConfig()
    return RetryConfig(
        max_cycles=t.integer("max_cycles", d.max_cycles, minimum=1),
        default_timeout=_or(t.duration("default_timeout"), d.default_timeout),
        default_interval=_or(t.duration("default_interval"), d.default_interval),
        exponential_backoff=t.boolean("exponential_backoff", d.exponential_backoff),
        max_interval=_or(t.duration("max_interval"), d.max_interval),
        max_retry_after=_or(t.duration("max_retry_after"), d.max_retry_after),
        first_token_timeout=_or(t.duration("first_token_timeout"), d.first_token_timeout),
        stream_idle_timeout=_or(t.duration("stream_idle_timeout"), d.stream_idle_timeout),
        total_timeout=t.duration("total_timeout"),
        retry_on=t.statuses("retry_on"),
        fallback_on=_or(t.statuses("fallback_on"), d.fallback_on),
        fallback_on_body=_or(t.strings("fallback_on_body"), d.fallback_on_body),
        fallback_on_timeout=t.boolean("fallback_on_timeout", d.fallback_on_timeout),
        midstream=_or(t.choice("midstream", _MIDSTREAM), d.midstream),
    )


def _cooldown(t: _Table) -> CooldownConfig:
    d = CooldownConfig()
    return CooldownConfig(
        enabled=t.boolean("enabled", d.enabled),
        failures=t.integer("failures", d.failures, minimum=1),
        duration=_or(t.duration("duration"), d.duration),
        max_duration=_or(t.duration("max_duration"), d.max_duration),
    )


# --------------------------------------------------------------------------- endpoints


def _endpoint(name: str, t: _Table) -> EndpointConfig:
    """An endpoint as written; its url is checked (or defaulted) once its models are known."""
    return EndpointConfig(
        name=name,
        url=t.string("url") or "",
        api_key=t.string("api_key", secret=True),
        strip_version_prefix=t.boolean("strip_version_prefix", False),
        interval=t.duration("interval"),
        aws_region=t.string("aws_region") or None,
        aws_access_key_id=t.string("aws_access_key_id", secret=True) or None,
        aws_secret_access_key=t.string("aws_secret_access_key", secret=True) or None,
        aws_session_token=t.string("aws_session_token", secret=True) or None,
        aws_profile=t.string("aws_profile") or None,
        prefill=_or(t.choice("prefill", _PREFILL), "auto"),
    )


def _checked_url(url: str, place: str, report: _Report) -> str:
    trimmed = url.rstrip("/")
    try:
        parts = urlsplit(trimmed)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        report.problem(f"{place}: url {_show(url)} is not a valid URL")
        return trimmed
    if parts.scheme.lower() not in ("http", "https"):
        report.problem(f"{place}: url {_show(url)} must start with http:// or https://")
    elif not host:
        report.problem(f"{place}: url {_show(url)} has no host")
    return trimmed


def _finish_endpoint(
    endpoint: EndpointConfig, types: set[str | None], report: _Report
) -> EndpointConfig:
    """Check the url (defaulting it for bedrock-only endpoints) and the AWS credentials."""
    place = f"endpoint {_show(endpoint.name)}"
    region = endpoint.aws_region
    if region is not None and not re.fullmatch(r"[a-z0-9-]+", region):
        report.problem(f"{place}: aws_region {_show(region)} is not a valid AWS region")
    url = endpoint.url
    if url:
        url = _checked_url(url, place, report)
    elif types == {"bedrock"}:
        # Left empty: the bedrock provider builds the regional URL from the region it
        # resolves at signing time (aws_region, environment, profile, us-east-1).
        url = ""
    else:
        report.problem(f"{place}: url is required")
    has_id = endpoint.aws_access_key_id is not None
    has_secret = endpoint.aws_secret_access_key is not None
    if has_id != has_secret:
        report.problem(
            f"{place}: bedrock requires both aws_access_key_id and aws_secret_access_key"
            " to be configured together"
        )
    if endpoint.aws_session_token is not None and not (has_id and has_secret):
        report.problem(
            f"{place}: bedrock aws_session_token requires aws_access_key_id"
            " and aws_secret_access_key"
        )
    return replace(endpoint, url=url)


# --------------------------------------------------------------------------- models


@dataclass(frozen=True, slots=True)
class _ModelEntry:
    """One model entry as written, before its endpoint and type are known to be valid."""

    place: str
    endpoint: str | None
    type: str | None
    model: str | None
    attempts: int
    timeout: float | None
    interval: float | None
    name: str | None


def _model_entry(t: _Table) -> _ModelEntry:
    endpoint = t.string("endpoint") or None
    provider = t.string("provider") or None
    if endpoint and provider and endpoint != provider:
        t.report.problem(
            f"{t.place}: endpoint {_show(endpoint)} and provider {_show(provider)} differ;"
            " set only one of them"
        )
    # The original treats attempts <= 0 as a single try; keep that.
    attempts = max(t.integer("attempts", 1), 1)
    return _ModelEntry(
        place=t.place,
        endpoint=endpoint or provider,
        type=t.string("type") or None,
        model=t.string("model") or None,
        attempts=attempts,
        timeout=t.duration("timeout"),
        interval=t.duration("interval"),
        name=t.string("name") or None,
    )


def _schema1_ids(entries: Sequence[_ModelEntry], report: _Report) -> list[str]:
    """Ids of `[[models]]` entries: `name`, else "<endpoint>/<model>" made unique with #2, #3…"""
    named = [entry.name for entry in entries if entry.name is not None]
    used: set[str] = set()
    for entry in entries:
        if entry.name is None:
            continue
        if entry.name in used:
            report.problem(f"{entry.place}: name {_show(entry.name)} is already used")
        used.add(entry.name)
    ids: list[str] = []
    for entry in entries:
        if entry.name is not None:
            ids.append(entry.name)
            continue
        base = f"{entry.endpoint or ''}/{entry.model or ''}"
        ident, count = base, 1
        while ident in used or ident in named:
            count += 1
            ident = f"{base}#{count}"
        used.add(ident)
        ids.append(ident)
    return ids


def _build_model(
    ident: str,
    entry: _ModelEntry,
    endpoints: Mapping[str, EndpointConfig],
    retry: RetryConfig,
    report: _Report,
) -> ModelConfig | None:
    """The final model, or None (with problems recorded) when the entry is invalid."""
    place = entry.place
    endpoint = endpoints.get(entry.endpoint) if entry.endpoint is not None else None
    if entry.endpoint is None:
        report.problem(f"{place}: endpoint is required")
    elif endpoint is None:
        report.problem(f"{place}: endpoint {_show(entry.endpoint)} not found")
    if entry.model is None:
        report.problem(f"{place}: model is required")
    api_type: ApiType | None = None
    if entry.type is None:
        report.problem(f"{place}: type is required")
    else:
        api_type = next((api for api in API_TYPES if api == entry.type), None)
        if api_type is None:
            report.problem(
                f"{place}: unsupported type {_show(entry.type)} (supported: {_SUPPORTED})"
            )
    if endpoint is None or api_type is None or entry.model is None:
        return None
    interval = entry.interval
    if interval is None:
        interval = _or(endpoint.interval, retry.default_interval)
    return ModelConfig(
        id=ident,
        endpoint=endpoint.name,
        type=api_type,
        model=entry.model,
        attempts=entry.attempts,
        timeout=_or(entry.timeout, retry.default_timeout),
        interval=interval,
    )


def _model_entries(raw: object, report: _Report) -> list[tuple[str, _ModelEntry]]:
    """(id, entry) for `[[models]]` (schema 1) or `[models.ID]` (schema 2), in file order."""
    if isinstance(raw, list):
        entries = [
            _model_entry(_Table(item, f"model {index}", report, (*_MODEL_KEYS, "name")))
            for index, item in enumerate(raw)
        ]
        return list(zip(_schema1_ids(entries, report), entries, strict=True))
    if isinstance(raw, dict):
        return [
            (ident, _model_entry(_Table(item, f"model {_show(ident)}", report, _MODEL_KEYS)))
            for ident, item in raw.items()
        ]
    report.problem(f"models: expected [[models]] entries or [models.ID] tables, got {_show(raw)}")
    return []


# --------------------------------------------------------------------------- listeners


def _routes(t: _Table, known: Sequence[str]) -> tuple[Route, ...]:
    raw = t.raw.get("routes", _MISSING)
    if raw is _MISSING:
        return ()
    if not isinstance(raw, dict):
        t.report.problem(f"{t.place}: routes: expected a table of patterns, got {_show(raw)}")
        return ()
    routes: list[Route] = []
    for pattern, value in raw.items():
        where = f"{t.place}: route {_show(pattern)}"
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            t.report.problem(f"{where}: expected an array of model ids, got {_show(value)}")
            continue
        ids = [r for i in items if (r := t.report.resolve(i, t.place, "routes")) is not None]
        if not ids:
            t.report.problem(f"{where}: has no models")
        for ident in ids:
            if ident not in known:
                t.report.problem(f"{where}: unknown model {_show(ident)}{_suggest(ident, known)}")
        routes.append(Route(pattern=pattern, models=tuple(ids)))
    return tuple(routes)


def _listener(
    index: int, raw: object, server: ServerConfig, known: Sequence[str], report: _Report
) -> ListenerConfig:
    name_value = raw.get("name") if isinstance(raw, dict) else None
    named = isinstance(name_value, str) and name_value != ""
    place = f"listener {_show(name_value)}" if named else f"listener {index}"
    t = _Table(raw, place, report, _LISTENER_KEYS)
    name = t.string("name")
    if not name:
        report.problem(f"{place}: name is required")
        name = f"listener-{index}"
    models = t.strings("models") or ()
    if not models:
        report.problem(f"{place}: no models configured (set models = [...])")
    for ident in models:
        if ident not in known:
            report.problem(f"{place}: unknown model {_show(ident)}{_suggest(ident, known)}")
    defaults = ListenerConfig(name=name)
    return ListenerConfig(
        name=name,
        host=_or(t.string("host"), defaults.host),
        port=t.port("port", defaults.port),
        read_timeout=_or(t.duration("read_timeout"), server.read_timeout),
        write_timeout=_or(t.duration("write_timeout"), server.write_timeout),
        models=models,
        routes=_routes(t, known),
        auth_keys=_or(t.strings("auth_keys", secret=True), server.auth_keys),
    )


def _check_listeners(listeners: Sequence[ListenerConfig], report: _Report) -> None:
    names: set[str] = set()
    addresses: dict[tuple[str, int], str] = {}
    for listener in listeners:
        place = f"listener {_show(listener.name)}"
        if listener.name in names:
            report.problem(f"{place}: the name is used by more than one listener")
        names.add(listener.name)
        address = (listener.host, listener.port)
        other = addresses.setdefault(address, listener.name)
        if other != listener.name:
            report.problem(
                f"{place}: {listener.host}:{listener.port} is already used by"
                f" listener {_show(other)}"
            )


def _check_types(
    listener: ListenerConfig,
    models: Mapping[str, ModelConfig],
    places: Mapping[str, str],
    report: _Report,
) -> None:
    """All models one listener can use (its chain and its routes) must share one API type."""
    expected: ApiType | None = None
    chain = [*listener.models, *(ident for route in listener.routes for ident in route.models)]
    for ident in dict.fromkeys(chain):
        model = models.get(ident)
        if model is None:
            continue
        if expected is None:
            expected = model.type
        elif model.type != expected:
            report.problem(
                f"{places[ident]}: mixed model types are not allowed"
                f' (expected "{expected}", got "{model.type}")'
            )


# --------------------------------------------------------------------------- the whole file


def _decode(text: str, path: str | None) -> dict[str, Any]:
    name = (Path(path).name or path) if path else "config"
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POSITION.match(str(exc))
        if match:
            problem = f"{name}: TOML syntax error at {match.group(2)}: {match.group(1)}"
        else:
            problem = f"{name}: TOML syntax error: {exc}"
    except RecursionError:
        problem = f"{name}: TOML syntax error: values are nested too deeply"
    raise ConfigError([" ".join(problem.splitlines())], path)


def _bracketed(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _show(key)


def parse_config(text: str, *, path: str | None = None, env: Mapping[str, str]) -> Config:
    """Parse config `text` (either schema); `env` resolves `$NAME` values.

    Pure: no file or environment access beyond the arguments.  Raises ConfigError listing
    every problem found; never raises anything else.
    """
    data = _decode(text, path)
    report = _Report(env=env)
    for key, value in data.items():
        if key in _TOP_TABLES:
            continue
        if isinstance(value, dict | list):
            hint = _suggest(key, _TOP_TABLES, brackets=True)
            report.problem(f"unknown table [{_bracketed(key)}]{hint}")
        else:
            report.problem(f"unknown top-level key {_show(key)}{_suggest(key, _TOP_TABLES)}")

    def section(name: str, keys: Sequence[str]) -> _Table:
        return _Table(data.get(name, {}), name, report, keys, dotted=True)

    server = _server(section("server", _SERVER_KEYS))
    log = _log(section("log", _LOG_KEYS))
    retry = _retry(section("retry", _RETRY_KEYS))
    cooldown = _cooldown(section("cooldown", _COOLDOWN_KEYS))

    endpoints: dict[str, EndpointConfig] = {}
    for group_name in ("endpoints", "providers"):
        group = data.get(group_name, {})
        if not isinstance(group, dict):
            report.problem(f"{group_name}: expected [{group_name}.NAME] tables, got {_show(group)}")
            continue
        for name, raw in group.items():
            place = f"endpoint {_show(name)}"
            if name in endpoints:
                report.problem(f"{place}: defined in both [endpoints] and [providers]")
                continue
            endpoints[name] = _endpoint(name, _Table(raw, place, report, _ENDPOINT_KEYS))

    raw_models = data.get("models", [])
    entries = _model_entries(raw_models, report)
    if not entries and isinstance(raw_models, list | dict):
        report.problem("at least one model must be configured")
    known = [ident for ident, _ in entries]
    models: dict[str, ModelConfig] = {}
    places: dict[str, str] = {}
    for ident, entry in entries:
        places[ident] = entry.place
        model = _build_model(ident, entry, endpoints, retry, report)
        if model is not None:
            models[ident] = model

    for name, endpoint in endpoints.items():
        types = {entry.type for _, entry in entries if entry.endpoint == name}
        endpoints[name] = _finish_endpoint(endpoint, types, report)

    raw_listeners = data.get("listeners", [])
    listeners: tuple[ListenerConfig, ...] = ()
    if not isinstance(raw_listeners, list):
        report.problem(f"listeners: expected [[listeners]] entries, got {_show(raw_listeners)}")
    elif raw_listeners:
        listeners = tuple(
            _listener(index, raw, server, known, report) for index, raw in enumerate(raw_listeners)
        )
        _check_listeners(listeners, report)
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
    for listener in listeners:
        _check_types(listener, models, places, report)

    if report.problems:
        raise ConfigError(report.problems, path)
    return Config(
        server=server,
        log=log,
        retry=retry,
        cooldown=cooldown,
        endpoints=endpoints,
        models=models,
        listeners=listeners,
        path=path,
        warnings=tuple(report.warnings),
        secrets=frozenset(report.secrets),
    )


def _warn_unused(
    listeners: Sequence[ListenerConfig], known: Sequence[str], server: object, report: _Report
) -> None:
    """Warn about settings that [[listeners]] make pointless, so a typo is not silent."""
    used = {
        i for item in listeners for i in (*item.models, *(m for r in item.routes for m in r.models))
    }
    for ident in known:
        if ident not in used:
            report.warnings.append(f"model {_show(ident)} is not used by any listener")
    if isinstance(server, dict):
        ignored = [key for key in ("host", "port") if key in server]
        if ignored:
            report.warnings.append(
                f"server: {' and '.join(ignored)} {'is' if len(ignored) == 1 else 'are'}"
                " not used when [[listeners]] are configured"
            )
