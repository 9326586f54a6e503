"""The config schema's pieces: which keys each table takes, and how each section and
listener is read (with every problem recorded on the `Report`).  Endpoints and models:
`config.endpoints`.

`load.parse_config` drives these over a whole file; both schemas share them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Literal

from hydrallm.config import (
    AFFINITIES,
    CooldownConfig,
    JournalConfig,
    ListenerConfig,
    LogConfig,
    Price,
    RetryConfig,
    Route,
    RoutingConfig,
    ServerConfig,
    units,
)
from hydrallm.config.tables import (
    MISSING,
    Report,
    Table,
    or_default,
    shown,
    suggestion,
)

DEFAULT_LISTENER: Final = "default"

TOP_TABLES = (
    "server",
    "log",
    "retry",
    "cooldown",
    "routing",
    "endpoints",
    "providers",
    "models",
    "listeners",
    "cluster",
    "journal",
    "prices",
)
JOURNAL_KEYS = ("enabled", "path", "retention", "max_size", "bodies")
PRICE_KEYS = ("input", "output", "cache_read", "cache_write")
SERVER_KEYS = (
    "host",
    "port",
    "read_timeout",
    "write_timeout",
    "max_body_size",
    "shutdown_timeout",
    "auth_keys",
    "workers",
    "keepalive_timeout",
)
LOG_KEYS = ("level", "include_error_body")
RETRY_KEYS = (
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
    "quota_threshold",
    "hold",
    "midstream_max_bytes",
)
COOLDOWN_KEYS = ("enabled", "failures", "duration", "max_duration", "quota_duration")
ROUTING_KEYS = ("affinity", "affinity_ttl")
LISTENER_KEYS = (
    "name",
    "host",
    "port",
    "read_timeout",
    "write_timeout",
    "models",
    "auth_keys",
    "routes",
)
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warn", "error")
# A pattern (compiled by `re` at its first use: only a TOML error needs it).
TOML_POSITION = r"^(.*) \(at (line \d+, column \d+|end of document)\)$"

LogLevel = Literal["debug", "info", "warn", "error"]


# --------------------------------------------------------------------------- sections

MIDSTREAM: tuple[Literal["continue", "error"], ...] = ("continue", "error")


MAX_WORKERS = 256


def server_section(t: Table) -> ServerConfig:
    d = ServerConfig()
    return ServerConfig(
        host=or_default(t.string("host"), d.host),
        port=t.port("port", d.port),
        read_timeout=or_default(t.duration("read_timeout"), d.read_timeout),
        write_timeout=or_default(t.duration("write_timeout"), d.write_timeout),
        max_body_size=or_default(t.size("max_body_size"), d.max_body_size),
        shutdown_timeout=or_default(t.duration("shutdown_timeout"), d.shutdown_timeout),
        auth_keys=or_default(t.strings("auth_keys", secret=True), d.auth_keys),
        # Each worker is a process: an unbounded count is a fork bomb waiting for a typo.
        workers=t.integer("workers", d.workers, minimum=1, maximum=MAX_WORKERS),
        keepalive_timeout=or_default(t.duration("keepalive_timeout"), d.keepalive_timeout),
    )


def log_section(t: Table) -> LogConfig:
    d = LogConfig()
    level: LogLevel = d.level
    text = t.string("level")
    if text is not None:
        parsed = log_level(text)
        if parsed is None:
            t.report.problem(
                f"{t.where('level')}: {shown(text)} is not one of {', '.join(LOG_LEVELS)}"
            )
        else:
            level = parsed
    return LogConfig(
        level=level, include_error_body=t.boolean("include_error_body", d.include_error_body)
    )


def journal_section(t: Table) -> JournalConfig:
    d = JournalConfig()
    retention = d.retention
    text = t.raw.get("retention")
    if text is not None:
        try:
            retention = units.parse_long_duration(text)  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            t.report.problem(f"{t.where('retention')}: {exc}")
    return JournalConfig(
        enabled=t.boolean("enabled", d.enabled),
        path=t.string("path") or d.path,
        retention=retention,
        max_size=or_default(t.size("max_size"), d.max_size),
        bodies=t.boolean("bodies", d.bodies),
    )


def prices_section(raw: object, report: Report) -> tuple[tuple[str, Price], ...]:
    """[prices."<model id or glob>"] tables, in file order."""
    if not isinstance(raw, dict):
        report.problem(f'prices: expected [prices."MODEL"] tables, got {shown(raw)}')
        return ()
    out: list[tuple[str, Price]] = []
    for pattern, table in raw.items():
        t = Table(table, f"prices.{shown(pattern)}", report, PRICE_KEYS, dotted=True)
        values: dict[str, float | None] = {}
        for key in PRICE_KEYS:
            value = t.raw.get(key)
            if value is None:
                values[key] = None
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                report.problem(
                    f"{t.where(key)}: expected USD per million tokens (a number >= 0),"
                    f" got {shown(value)}"
                )
                values[key] = None
            else:
                values[key] = float(value)
        out.append((str(pattern), Price(**values)))
    return tuple(out)


def retry_section(t: Table) -> RetryConfig:
    d = RetryConfig()
    return RetryConfig(
        max_cycles=t.integer("max_cycles", d.max_cycles, minimum=1),
        default_timeout=or_default(t.duration("default_timeout"), d.default_timeout),
        default_interval=or_default(t.duration("default_interval"), d.default_interval),
        exponential_backoff=t.boolean("exponential_backoff", d.exponential_backoff),
        max_interval=or_default(t.duration("max_interval"), d.max_interval),
        max_retry_after=or_default(t.duration("max_retry_after"), d.max_retry_after),
        first_token_timeout=or_default(t.duration("first_token_timeout"), d.first_token_timeout),
        stream_idle_timeout=or_default(t.duration("stream_idle_timeout"), d.stream_idle_timeout),
        total_timeout=t.duration("total_timeout"),
        retry_on=t.statuses("retry_on"),
        fallback_on=or_default(t.statuses("fallback_on"), d.fallback_on),
        fallback_on_body=or_default(t.strings("fallback_on_body"), d.fallback_on_body),
        fallback_on_timeout=t.boolean("fallback_on_timeout", d.fallback_on_timeout),
        midstream=or_default(t.choice("midstream", MIDSTREAM), d.midstream),
        quota_threshold=or_default(t.duration("quota_threshold"), d.quota_threshold),
        hold=or_default(t.duration("hold"), d.hold),
        midstream_max_bytes=or_default(t.size("midstream_max_bytes"), d.midstream_max_bytes),
    )


def cooldown_section(t: Table) -> CooldownConfig:
    d = CooldownConfig()
    return CooldownConfig(
        enabled=t.boolean("enabled", d.enabled),
        failures=t.integer("failures", d.failures, minimum=1),
        duration=or_default(t.duration("duration"), d.duration),
        max_duration=t.duration("max_duration"),
        quota_duration=or_default(t.duration("quota_duration"), d.quota_duration),
    )


def routing_section(t: Table) -> RoutingConfig:
    d = RoutingConfig()
    return RoutingConfig(
        affinity=or_default(t.choice("affinity", AFFINITIES), d.affinity),
        affinity_ttl=or_default(t.duration("affinity_ttl"), d.affinity_ttl),
    )


# --------------------------------------------------------------------------- listeners


def routes_section(t: Table, known: Mapping[str, None]) -> tuple[Route, ...]:
    raw = t.raw.get("routes", MISSING)
    if raw is MISSING:
        return ()
    if not isinstance(raw, dict):
        t.report.problem(f"{t.place}: routes: expected a table of patterns, got {shown(raw)}")
        return ()
    routes: list[Route] = []
    for pattern, value in raw.items():
        where = f"{t.place}: route {shown(pattern)}"
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            t.report.problem(f"{where}: expected an array of model ids, got {shown(value)}")
            continue
        ids = [r for i in items if (r := t.report.resolve(i, t.place, "routes")) is not None]
        if not ids:
            t.report.problem(f"{where}: has no models")
        for ident in ids:
            if ident not in known:
                t.report.problem(f"{where}: unknown model {shown(ident)}{suggestion(ident, known)}")
        routes.append(Route(pattern=pattern, models=tuple(ids)))
    return tuple(routes)


def listener_section(
    index: int, raw: object, server: ServerConfig, known: Mapping[str, None], report: Report
) -> ListenerConfig:
    name_value = raw.get("name") if isinstance(raw, dict) else None
    named = isinstance(name_value, str) and name_value != ""
    place = f"listener {shown(name_value)}" if named else f"listener {index}"
    t = Table(raw, place, report, LISTENER_KEYS)
    name = t.string("name")
    if not name:
        report.problem(f"{place}: name is required")
        name = f"listener-{index}"
    models = t.strings("models") or ()
    if not models:
        report.problem(f"{place}: no models configured (set models = [...])")
    for ident in models:
        if ident not in known:
            report.problem(f"{place}: unknown model {shown(ident)}{suggestion(ident, known)}")
    defaults = ListenerConfig(name=name)
    return ListenerConfig(
        name=name,
        host=or_default(t.string("host"), defaults.host),
        port=t.port("port", defaults.port),
        read_timeout=or_default(t.duration("read_timeout"), server.read_timeout),
        write_timeout=or_default(t.duration("write_timeout"), server.write_timeout),
        models=models,
        routes=routes_section(t, known),
        auth_keys=or_default(t.strings("auth_keys", secret=True), server.auth_keys),
    )


def check_listeners(listeners: Sequence[ListenerConfig], report: Report) -> None:
    names: set[str] = set()
    addresses: dict[tuple[str, int], str] = {}
    for listener in listeners:
        place = f"listener {shown(listener.name)}"
        if listener.name in names:
            report.problem(f"{place}: the name is used by more than one listener")
        names.add(listener.name)
        address = (listener.host, listener.port)
        other = addresses.setdefault(address, listener.name)
        if other != listener.name:
            report.problem(
                f"{place}: {listener.host}:{listener.port} is already used by"
                f" listener {shown(other)}"
            )


def log_level(text: str) -> LogLevel | None:
    lowered = text.strip().lower()
    if lowered == "warning":
        return "warn"
    for level in LOG_LEVELS:
        if lowered == level:
            return level
    return None
