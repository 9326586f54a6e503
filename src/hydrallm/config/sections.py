"""The config schema's pieces: which keys each table takes, and how each section, endpoint,
model and listener is read (with every problem recorded on the `Report`).

`loader.parse_config` drives these over a whole file; both schemas share them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from hydrallm.config import (
    AFFINITIES,
    API_TYPES,
    GEMINI_URL,
    KEY_STRATEGIES,
    OPENAI_APIS,
    ApiType,
    AwsCredential,
    CooldownConfig,
    EndpointConfig,
    JournalConfig,
    ListenerConfig,
    LogConfig,
    ModelConfig,
    OpenAIApi,
    Prefill,
    PrefillFlag,
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
    masked_url,
    or_default,
    shown,
    suggestion,
    url_secrets,
)
from hydrallm.dataclass import dataclass

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
AWS_PAIR_KEYS = ("access_key_id", "secret_access_key", "session_token")
ENDPOINT_KEYS = (
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
    "prefill_flag",
    "api_keys",
    "key_strategy",
    "aws_profiles",
    "aws_key_pairs",
)
MODEL_KEYS = ("endpoint", "provider", "type", "model", "attempts", "timeout", "interval", "api")
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
SUPPORTED = ", ".join(API_TYPES)

LogLevel = Literal["debug", "info", "warn", "error"]


# --------------------------------------------------------------------------- sections

MIDSTREAM: tuple[Literal["continue", "error"], ...] = ("continue", "error")
PREFILL: tuple[Prefill, ...] = ("auto", "yes", "no")
PREFILL_FLAG: tuple[PrefillFlag, ...] = ("none", "prefix", "continue_final_message")


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


# --------------------------------------------------------------------------- endpoints


def endpoint_section(name: str, t: Table) -> EndpointConfig:
    """An endpoint as written; its url is checked (or defaulted) once its models are known."""
    pool = key_pool(t)
    single = t.string("api_key", secret=True)
    return EndpointConfig(
        name=name,
        url=t.string("url") or "",
        # With only `api_keys`, the first one is also `api_key`: a path that does not choose
        # from the pool still sends a key of the pool, never the client's own.
        api_key=single if single is not None or not pool else pool[0],
        strip_version_prefix=t.boolean("strip_version_prefix", False),
        interval=t.duration("interval"),
        aws_region=t.string("aws_region") or None,
        aws_access_key_id=t.string("aws_access_key_id", secret=True) or None,
        aws_secret_access_key=t.string("aws_secret_access_key", secret=True) or None,
        aws_session_token=t.string("aws_session_token", secret=True) or None,
        aws_profile=t.string("aws_profile") or None,
        prefill=or_default(t.choice("prefill", PREFILL), "auto"),
        prefill_flag=or_default(t.choice("prefill_flag", PREFILL_FLAG), "none"),
        api_keys=pool,
        key_strategy=or_default(t.choice("key_strategy", KEY_STRATEGIES), "fill-first"),
        aws_pool=aws_pool(t),
    )


def key_pool(t: Table) -> tuple[str, ...]:
    """`api_key` (unless absent or "-") then `api_keys`, each resolved, duplicates dropped."""
    single = t.string("api_key", secret=True)
    listed = t.strings("api_keys", secret=True) or ()
    keys = ([single] if single and single != "-" else []) + list(listed)
    return tuple(dict.fromkeys(keys))


def aws_pool(t: Table) -> tuple[AwsCredential, ...]:
    """Bedrock pool members: `aws_profiles = ["a", "b"]` and
    `aws_key_pairs = [{access_key_id = "$ID", secret_access_key = "$SECRET"}, ...]`.
    A pair whose id or secret refers to an unset variable is left out (with a warning)."""
    pool = [AwsCredential(profile=name) for name in t.strings("aws_profiles") or ()]
    raw = t.raw.get("aws_key_pairs", MISSING)
    if raw is MISSING:
        return tuple(pool)
    if not isinstance(raw, list):
        t.report.problem(
            f"{t.where('aws_key_pairs')}: expected an array of tables, got {shown(raw)}"
        )
        return tuple(pool)
    for index, item in enumerate(raw):
        pair = Table(item, f"{t.place}: aws_key_pairs[{index}]", t.report, AWS_PAIR_KEYS)
        key_id = pair.string("access_key_id", secret=True)
        secret = pair.string("secret_access_key", secret=True)
        token = pair.string("session_token", secret=True)
        if not pair.has("access_key_id") or not pair.has("secret_access_key"):
            t.report.problem(f"{pair.place}: needs both access_key_id and secret_access_key")
        elif key_id and secret:
            pool.append(AwsCredential(None, key_id, secret, token or None))
    return tuple(pool)


def checked_url(url: str, place: str, report: Report, *, api_key: str | None = None) -> str:
    """The endpoint URL with trailing slashes of its path trimmed (its query kept).

    Userinfo and query values are secrets (collected for redaction, never shown in a
    problem).  A fragment is refused: the request path would be appended after it and
    never reach the upstream.
    """
    report.secrets.update(url_secrets(url))
    where = shown(masked_url(url))
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        report.problem(f"{place}: url {where} is not a valid URL")
        return url.rstrip("/")
    if parts.scheme.lower() not in ("http", "https"):
        report.problem(f"{place}: url {where} must start with http:// or https://")
    elif not host:
        report.problem(f"{place}: url {where} has no host")
    if "#" in url:
        report.problem(
            f"{place}: url {where} has a fragment (#...); the request path would be appended"
            " after it and never sent: remove it"
        )
    userinfo = parts.username is not None or parts.password is not None
    if userinfo and api_key not in (None, "", "-"):
        report.problem(
            f"{place}: url {where} carries credentials (user:password@) and api_key is set;"
            " an upstream request can carry only one of them: remove one"
        )
    elif userinfo and api_key is None:
        report.warnings.append(
            f"{place}: url {where} carries credentials (user:password@); a client's own"
            ' Authorization header cannot be sent with them: set api_key = "-" to strip it'
        )
    trimmed = urlunsplit(parts._replace(path=parts.path.rstrip("/"), fragment=""))
    return trimmed


def finish_endpoint(
    endpoint: EndpointConfig, types: set[str | None], report: Report
) -> EndpointConfig:
    """Check the url (defaulting it for bedrock-only endpoints) and the AWS credentials."""
    place = f"endpoint {shown(endpoint.name)}"
    region = endpoint.aws_region
    if region is not None and not re.fullmatch(r"[a-z0-9-]+", region):
        report.problem(f"{place}: aws_region {shown(region)} is not a valid AWS region")
    url = endpoint.url
    if url:
        url = checked_url(url, place, report, api_key=endpoint.api_key)
    elif types == {"bedrock"}:
        # Left empty: the bedrock provider builds the regional URL from the region it
        # resolves at signing time (aws_region, environment, profile, us-east-1).
        url = ""
    elif types == {"gemini"}:
        url = GEMINI_URL
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
class ModelEntry:
    """One model entry as written, before its endpoint and type are known to be valid."""

    place: str
    endpoint: str | None
    type: str | None
    model: str | None
    attempts: int
    timeout: float | None
    interval: float | None
    name: str | None
    api: str | None = None


def model_entry(t: Table) -> ModelEntry:
    endpoint = t.string("endpoint") or None
    provider = t.string("provider") or None
    if endpoint and provider and endpoint != provider:
        t.report.problem(
            f"{t.place}: endpoint {shown(endpoint)} and provider {shown(provider)} differ;"
            " set only one of them"
        )
    # The original treats attempts <= 0 as a single try; keep that.
    attempts = max(t.integer("attempts", 1), 1)
    return ModelEntry(
        place=t.place,
        endpoint=endpoint or provider,
        type=t.string("type") or None,
        model=t.string("model") or None,
        attempts=attempts,
        timeout=t.duration("timeout"),
        interval=t.duration("interval"),
        name=t.string("name") or None,
        api=t.string("api") or None,
    )


def schema1_ids(entries: Sequence[ModelEntry], report: Report) -> list[str]:
    """Ids of `[[models]]` entries: `name`, else "<endpoint>/<model>" made unique with #2, #3…"""
    named = {entry.name for entry in entries if entry.name is not None}
    used: set[str] = set()
    for entry in entries:
        if entry.name is None:
            continue
        if entry.name in used:
            report.problem(f"{entry.place}: name {shown(entry.name)} is already used")
        used.add(entry.name)
    ids: list[str] = []
    next_suffix: dict[str, int] = {}
    for entry in entries:
        if entry.name is not None:
            ids.append(entry.name)
            continue
        base = f"{entry.endpoint or ''}/{entry.model or ''}"
        # Continue counting where the last entry of this base stopped: restarting at #2
        # for every duplicate made 20,000 entries of one model quadratic.
        count = next_suffix.get(base, 1)
        ident = base if count == 1 else f"{base}#{count}"
        while ident in used or ident in named:
            count += 1
            ident = f"{base}#{count}"
        next_suffix[base] = count + 1
        used.add(ident)
        ids.append(ident)
    return ids


def build_model(
    ident: str,
    entry: ModelEntry,
    endpoints: Mapping[str, EndpointConfig],
    retry: RetryConfig,
    report: Report,
) -> ModelConfig | None:
    """The final model, or None (with problems recorded) when the entry is invalid."""
    place = entry.place
    endpoint = endpoints.get(entry.endpoint) if entry.endpoint is not None else None
    if entry.endpoint is None:
        report.problem(f"{place}: endpoint is required")
    elif endpoint is None:
        report.problem(f"{place}: endpoint {shown(entry.endpoint)} not found")
    if entry.model is None:
        report.problem(f"{place}: model is required")
    api_type: ApiType | None = None
    if entry.type is None:
        report.problem(f"{place}: type is required")
    else:
        api_type = next((api for api in API_TYPES if api == entry.type), None)
        if api_type is None:
            report.problem(
                f"{place}: unsupported type {shown(entry.type)} (supported: {SUPPORTED})"
            )
    api: OpenAIApi = "chat"
    if entry.api is not None:
        chosen = next((a for a in OPENAI_APIS if a == entry.api), None)
        if api_type not in (None, "openai"):
            report.problem(f'{place}: api applies only to type "openai" models')
        elif chosen is None:
            report.problem(f'{place}: api {shown(entry.api)} must be "chat" or "responses"')
        else:
            api = chosen
    if endpoint is None or api_type is None or entry.model is None:
        return None
    interval = entry.interval
    if interval is None:
        interval = or_default(endpoint.interval, retry.default_interval)
    return ModelConfig(
        id=ident,
        endpoint=endpoint.name,
        type=api_type,
        model=entry.model,
        attempts=entry.attempts,
        timeout=or_default(entry.timeout, retry.default_timeout),
        interval=interval,
        api=api,
    )


def model_entries(raw: object, report: Report) -> list[tuple[str, ModelEntry]]:
    """(id, entry) for `[[models]]` (schema 1) or `[models.ID]` (schema 2), in file order."""
    if isinstance(raw, list):
        entries = [
            model_entry(Table(item, f"model {index}", report, (*MODEL_KEYS, "name")))
            for index, item in enumerate(raw)
        ]
        return list(zip(schema1_ids(entries, report), entries, strict=True))
    if isinstance(raw, dict):
        return [
            (ident, model_entry(Table(item, f"model {shown(ident)}", report, MODEL_KEYS)))
            for ident, item in raw.items()
        ]
    report.problem(f"models: expected [[models]] entries or [models.ID] tables, got {shown(raw)}")
    return []


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
