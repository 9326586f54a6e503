"""The resolved configuration: frozen dataclasses, no IO.

`loader.py` turns a TOML file (either schema) into a `Config`; everything else in the
package reads only these types.  Durations are float seconds, sizes are int bytes,
`$ENV` references are already resolved (an unset variable is `None`), and defaults
are already applied, so the hot path never looks anything up twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

ApiType = Literal["openai", "anthropic", "bedrock"]
API_TYPES: tuple[ApiType, ...] = ("openai", "anthropic", "bedrock")
Prefill = Literal["auto", "yes", "no"]
# How an OpenAI-compatible endpoint marks the last assistant message as a prefix to continue.
PrefillFlag = Literal["none", "prefix", "continue_final_message"]

DEFAULT_FALLBACK_ON_BODY: tuple[str, ...] = (
    "context_length_exceeded",
    "prompt is too long",
    "maximum context length",
)


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


@dataclass(frozen=True, slots=True)
class Route:
    pattern: str  # glob, matched case-insensitively against the requested model
    models: tuple[str, ...]  # model ids


@dataclass(frozen=True, slots=True)
class ListenerConfig:
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
    level: Literal["debug", "info", "warn", "error"] = "info"
    include_error_body: bool = False


@dataclass(frozen=True, slots=True)
class RetryConfig:
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

    def is_retryable_status(self, status: int) -> bool:
        if self.retry_on is None:
            return status == 429 or status >= 500
        return status in self.retry_on


@dataclass(frozen=True, slots=True)
class CooldownConfig:
    enabled: bool = True
    failures: int = 3
    duration: float = 30.0
    max_duration: float = 300.0


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    cooldown: CooldownConfig = field(default_factory=CooldownConfig)
    endpoints: Mapping[str, EndpointConfig] = field(default_factory=dict)
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    listeners: tuple[ListenerConfig, ...] = ()
    path: str | None = None
    # Startup warnings (unset $ENV variables, exposed keys, ...), each one line.
    warnings: tuple[str, ...] = ()
    # Every resolved secret value (api keys, AWS secrets, auth keys): redacted from logs.
    secrets: frozenset[str] = frozenset()

    def chain(self, ids: tuple[str, ...]) -> tuple[ModelConfig, ...]:
        return tuple(self.models[i] for i in ids)
