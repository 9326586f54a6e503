"""Human-readable description of a loaded config (`hydrallm check`).  Never prints secrets."""

from __future__ import annotations

from hydrallm.config import Config
from hydrallm.units import format_duration


def describe_config(config: Config) -> str:
    lines: list[str] = []
    if config.path:
        lines.append(f"config: {config.path} (valid)")
    for warning in config.warnings:
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
        out.append(
            f"    {i}. {m.endpoint} / {m.model} [{m.type}] attempts={m.attempts}"
            f" timeout={format_duration(m.timeout)} interval={format_duration(m.interval)}"
            f"  ({ep.url}; {key})"
        )
    return out
