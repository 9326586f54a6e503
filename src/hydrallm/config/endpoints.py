"""How endpoints and models are read from the config: an endpoint's keys and key pools,
its AWS credentials, its URL (checked once its models are known), and each model, in
either schema (with every problem recorded on the `Report`).  The other sections:
`config.sections`; `load.parse_config` drives both over a whole file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

from hydrallm.config import (
    API_TYPES,
    GEMINI_URL,
    KEY_STRATEGIES,
    OPENAI_APIS,
    ApiType,
    AwsCredential,
    EndpointConfig,
    ModelConfig,
    OpenAIApi,
    Prefill,
    PrefillFlag,
    RetryConfig,
)
from hydrallm.config.tables import (
    MISSING,
    Report,
    Table,
    masked_url,
    or_default,
    shown,
    url_secrets,
)
from hydrallm.dataclass import dataclass

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
SUPPORTED = ", ".join(API_TYPES)
PREFILL: tuple[Prefill, ...] = ("auto", "yes", "no")
PREFILL_FLAG: tuple[PrefillFlag, ...] = ("none", "prefix", "continue_final_message")


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
