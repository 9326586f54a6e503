"""The resolved configuration: frozen dataclasses, no IO.

`loader.py` turns a TOML file (either schema) into a `Config`; everything else in the
package reads only these types.  Durations are float seconds, sizes are int bytes,
`$ENV` references are already resolved (an unset variable is `None`), and defaults
are already applied, so the hot path never looks anything up twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Literal

from hydrallm.dataclass import dataclass

ApiType = Literal["openai", "anthropic", "bedrock", "gemini"]
API_TYPES: tuple[ApiType, ...] = ("openai", "anthropic", "bedrock", "gemini")
# The upstream API an `openai` model is called with (a Responses client on "chat" is translated).
OpenAIApi = Literal["chat", "responses"]
OPENAI_APIS: tuple[OpenAIApi, ...] = ("chat", "responses")
GEMINI_URL = "https://generativelanguage.googleapis.com"
Prefill = Literal["auto", "yes", "no"]
# How an OpenAI-compatible endpoint marks the last assistant message as a prefix to continue.
PrefillFlag = Literal["none", "prefix", "continue_final_message"]
KeyStrategy = Literal["fill-first", "round-robin", "least-limited"]
KEY_STRATEGIES: tuple[KeyStrategy, ...] = ("fill-first", "round-robin", "least-limited")
Affinity = Literal["off", "key", "session"]
AFFINITIES: tuple[Affinity, ...] = ("off", "key", "session")

DEFAULT_FALLBACK_ON_BODY: tuple[str, ...] = (
    "context_length_exceeded",
    "prompt is too long",
    "maximum context length",
)


@dataclass(frozen=True, slots=True)
class AwsCredential:
    """One member of a Bedrock endpoint's pool: a named profile, or a static key pair."""

    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One upstream (`[endpoints.NAME]` or `[providers.NAME]`)."""

    name: str
    url: str  # scheme://host[:port][/base], trailing slashes trimmed
    api_key: str | None = None  # None: client auth passes through; "-": strip client auth
    strip_version_prefix: bool = False
    interval: float | None = None
    aws_region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    aws_profile: str | None = None
    prefill: Prefill = "auto"
    prefill_flag: PrefillFlag = "none"
    # The key pool: `api_key` (when set and not "-") first, then `api_keys`, duplicates
    # dropped.  Empty: no pool (client credentials pass through, or "-" strips them).
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    key_strategy: KeyStrategy = "fill-first"
    # Bedrock: `aws_profiles` then `aws_key_pairs`, each one pool member.
    aws_pool: tuple[AwsCredential, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One entry of a chain."""

    id: str  # [models.ID] key, a [[models]] entry's `name`, else "<endpoint>/<model>"
    endpoint: str  # name of an EndpointConfig
    type: ApiType
    model: str  # "*" forwards the client's requested model unchanged
    attempts: int = 1  # >= 1
    timeout: float = 30.0  # resolved: model timeout or retry.default_timeout
    interval: float = 0.1  # resolved: model > endpoint > retry.default_interval
    api: OpenAIApi = "chat"  # openai models only


@dataclass(frozen=True, slots=True)
class Route:
    """A `[[routes]]` entry: requested models matching `pattern` use this chain."""

    pattern: str  # glob, matched case-insensitively against the requested model
    models: tuple[str, ...]  # model ids


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One address the proxy listens on, with its chain and its own limits."""

    name: str
    host: str = "127.0.0.1"
    port: int = 8080
    read_timeout: float = 60.0
    write_timeout: float = 600.0
    models: tuple[str, ...] = ()  # model ids, the default chain
    routes: tuple[Route, ...] = ()  # file order; first match wins
    auth_keys: tuple[str, ...] = ()  # resolved; empty = no proxy auth


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """`[server]`: the default listener's address, timeouts and body limits."""

    host: str = "127.0.0.1"
    port: int = 8080
    read_timeout: float = 60.0
    write_timeout: float = 600.0
    max_body_size: int = 100 * 1024 * 1024
    shutdown_timeout: float = 30.0
    auth_keys: tuple[str, ...] = ()
    workers: int = 1
    # How long a kept-alive client connection may sit idle between requests.
    keepalive_timeout: float = 75.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    """`[log]`: level, and whether upstream error bodies are logged."""

    level: Literal["debug", "info", "warn", "error"] = "info"
    include_error_body: bool = False


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """`[retry]`: how often, how long and on what the chain is retried."""

    max_cycles: int = 10
    default_timeout: float = 30.0
    default_interval: float = 0.1
    exponential_backoff: bool = False
    max_interval: float = 10.0
    max_retry_after: float = 10.0
    first_token_timeout: float = 60.0
    stream_idle_timeout: float = 120.0
    total_timeout: float | None = None
    retry_on: frozenset[int] | None = None  # None: 429 and every 5xx
    fallback_on: frozenset[int] = frozenset()
    fallback_on_body: tuple[str, ...] = DEFAULT_FALLBACK_ON_BODY
    fallback_on_timeout: bool = True
    midstream: Literal["continue", "error"] = "continue"
    # A Retry-After or stated reset longer than this marks the key exhausted (a quota).
    quota_threshold: float = 600.0
    # How long a request may wait for the earliest key reset when every key sleeps; 0: off.
    hold: float = 0.0
    # Body bytes relayed to the client past which a stream is no longer kept for recovery.
    midstream_max_bytes: int = 4 * 1024 * 1024

    def is_retryable_status(self, status: int) -> bool:
        if self.retry_on is None:
            return status == 429 or status >= 500
        return status in self.retry_on


@dataclass(frozen=True, slots=True)
class CooldownConfig:
    """`[cooldown]`: when a failing model is skipped, and for how long."""

    enabled: bool = True
    failures: int = 3
    duration: float = 30.0
    # Cap for doubling the open period after a failed probe.  None (the default) means
    # "= duration": no doubling, so a recovered primary is probed (with one real request)
    # at least every `duration` and traffic returns within 30 s after any outage.
    max_duration: float | None = None
    # How long an exhausted key sleeps when its quota answer states no reset.
    quota_duration: float = 900.0


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """`[routing]`: which key or model a returning client is sent to."""

    affinity: Affinity = "key"
    affinity_ttl: float = 300.0


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """`[cluster]`: shared state through Redis; `redis` None keeps state per process."""

    redis: str | None = None  # redis:// or rediss:// URL (its password is a secret)
    prefix: str = "hydrallm"  # key and channel prefix, to share one Redis between deployments
    password: str | None = None  # overrides a password in the URL; usually "$ENV"


@dataclass(frozen=True, slots=True)
class JournalConfig:
    """`[journal]`: the request history file, its retention and what it keeps."""

    enabled: bool = True
    path: str | None = None  # None: <state dir>/hydrallm/journal.db
    retention: float = 30 * 86400.0
    max_size: int = 200 * 1024 * 1024
    bodies: bool = False


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens; None: not stated (that part of a cost is unknown)."""

    input: float | None = None
    output: float | None = None
    cache_read: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole resolved configuration (see the module docstring)."""

    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    cooldown: CooldownConfig = field(default_factory=CooldownConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    endpoints: Mapping[str, EndpointConfig] = field(default_factory=dict)
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    listeners: tuple[ListenerConfig, ...] = ()
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    # [prices."<model id or glob>"] in file order (the built-in table comes after).
    prices: tuple[tuple[str, Price], ...] = ()
    path: str | None = None
    # Startup warnings (unset $ENV variables, exposed keys, ...), each one line.
    warnings: tuple[str, ...] = ()
    # Every resolved secret value (api keys, AWS secrets, auth keys): redacted from logs.
    secrets: frozenset[str] = frozenset()

    def chain(self, ids: tuple[str, ...]) -> tuple[ModelConfig, ...]:
        return tuple(self.models[i] for i in ids)
