"""Human-readable description of a loaded config (`hydrallm check`).  Never prints secrets."""

from __future__ import annotations

from hydrallm.config import GEMINI_URL, Config, ModelConfig
from hydrallm.config.exposure import exposure_warnings
from hydrallm.config.tables import masked_url
from hydrallm.config.units import format_duration

# What only `hydrallm check` needs (the translation tables) is imported where it is used.

_API_NAMES = {"anthropic": "Anthropic Messages", "chat": "OpenAI chat", "responses": "Responses"}


def describe_config(config: Config) -> str:
    lines: list[str] = []
    if config.path:
        lines.append(f"config: {config.path} (valid)")
    for warning in (*config.warnings, *exposure_warnings(config)):
        lines.append(f"warning: {warning}")
    retry = config.retry
    lines.append(
        f"retry: max_cycles={retry.max_cycles} exponential_backoff={str(retry.exponential_backoff).lower()}"
        f" first_token_timeout={format_duration(retry.first_token_timeout)}"
        f" stream_idle_timeout={format_duration(retry.stream_idle_timeout)}"
    )
    for lc in config.listeners:
        auth = " (proxy auth on)" if (lc.auth_keys or config.server.auth_keys) else ""
        lines.append("")
        lines.append(f"listener {lc.name}: http://{lc.host}:{lc.port}{auth}")
        for route in lc.routes:
            lines.append(f"  route {route.pattern!r}:")
            lines.extend(_chain_lines(config, route.models))
        if lc.routes:
            lines.append("  default chain:")
        lines.extend(_chain_lines(config, lc.models))
    return "\n".join(lines)


def _chain_lines(config: Config, ids: tuple[str, ...]) -> list[str]:
    out = []
    for i, mid in enumerate(ids, 1):
        m = config.models[mid]
        ep = config.endpoints[m.endpoint]
        key = (
            "key: from config"
            if ep.api_key not in (None, "-")
            else ("key: removed" if ep.api_key == "-" else "key: client's")
        )
        # Userinfo and query values of an endpoint URL are credentials: shown masked.
        if ep.url:
            url = masked_url(ep.url)
        elif m.type == "gemini":
            url = GEMINI_URL
        else:
            url = "bedrock-runtime, regional URL resolved at start"
        api = f" api={m.api}" if m.type == "openai" and m.api != "chat" else ""
        out.append(
            f"    {i}. {m.endpoint} / {m.model} [{m.type}{api}] attempts={m.attempts}"
            f" timeout={format_duration(m.timeout)} interval={format_duration(m.interval)}"
            f"  ({url}; {key})"
        )
        out.append(f"       serves: {serves_line(m)}")
    return out


def serves(model: ModelConfig) -> dict[str, str]:
    """For each client API: "native", "translated (to X)" or "no" (skipped for it)."""
    from hydrallm.formats.translate import CLIENT_APIS, upstream_api

    out: dict[str, str] = {}
    for client in CLIENT_APIS:
        kind = upstream_api(client, model.type, model.api)
        if model.type == "bedrock" and client == "anthropic":
            out[client] = "translated to InvokeModel"
        elif kind == "native":
            out[client] = "native"
        elif kind is None:
            out[client] = "no"
        else:
            out[client] = f"translated to {'OpenAI chat' if kind == 'chat' else kind}"
    if model.type == "bedrock":
        out["bedrock-runtime"] = "native"
    return out


def serves_line(model: ModelConfig) -> str:
    """`Anthropic Messages native; OpenAI chat translated to anthropic; ...`"""
    return "; ".join(f"{_API_NAMES.get(api, api)} {how}" for api, how in serves(model).items())
