"""Listeners open beyond this machine that spend the upstream keys without proxy auth:
what `hydrallm serve`, a reload and `hydrallm check` warn about."""

from __future__ import annotations

from hydrallm.config import Config, ListenerConfig


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host in ("127.0.0.1", "::1", "[::1]"):
        return True  # the common answers, without importing ipaddress at every start
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _injects_keys(config: Config, lc: ListenerConfig) -> list[str]:
    ids = set(lc.models)
    for route in lc.routes:
        ids.update(route.models)
    names = set()
    for mid in ids:
        model = config.models[mid]
        ep = config.endpoints[model.endpoint]
        if model.type == "bedrock" or ep.api_key not in (None, "-"):
            names.add(ep.name)
    return sorted(names)


def exposure_warnings(config: Config) -> list[str]:
    """One line per listener open beyond this machine, without proxy auth, spending keys."""
    out = []
    for lc in config.listeners:
        if is_loopback(lc.host) or lc.auth_keys or config.server.auth_keys:
            continue
        endpoints = _injects_keys(config, lc)
        if endpoints:
            out.append(
                f"listener {lc.name!r} listens on {lc.host}:{lc.port} without auth_keys and adds"
                f" the api keys of {', '.join(endpoints)}: anyone who can reach the port can"
                " spend those keys (set server.auth_keys, or listen on 127.0.0.1)"
            )
    return out
