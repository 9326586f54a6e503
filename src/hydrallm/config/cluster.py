"""`[cluster]`: the Redis that instances share their state through (issue 18).

    [cluster]
    redis = "redis://host:6379/0"   # or rediss://; may be "$REDIS_URL"
    password = "$REDIS_PASSWORD"    # optional; a password in the URL works too
    prefix = "hydrallm"             # keys and channel start with "<prefix>:"

The password (in the URL or in `password`) is a secret: it is redacted from logs and never
shown; `masked_url` is the form every message uses.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from hydrallm.config import ClusterConfig
from hydrallm.config.tables import Table, or_default, shown

CLUSTER_KEYS = ("redis", "prefix", "password")
# Patterns of rare paths stay source text: `re` compiles (and caches) one at its first use,
# not every start.
_PREFIX = r"[A-Za-z0-9_.:-]{1,64}"


def cluster_section(t: Table) -> ClusterConfig:
    d = ClusterConfig()
    url = t.string("redis", secret=False) or None
    password = t.string("password", secret=True) or None
    prefix = or_default(t.string("prefix"), d.prefix)
    if not re.fullmatch(_PREFIX, prefix):
        t.report.problem(
            f"{t.where('prefix')}: {shown(prefix)} must be 1 to 64 letters, digits or _ . : -"
        )
        prefix = d.prefix
    if url is not None:
        try:
            parts = urlsplit(url)
            host = parts.hostname
            _ = parts.port
        except ValueError:
            t.report.problem(f"{t.where('redis')}: {shown(masked_url(url))} is not a valid URL")
            return ClusterConfig(None, prefix, password)
        if parts.scheme not in ("redis", "rediss"):
            t.report.problem(
                f"{t.where('redis')}: {shown(masked_url(url))} must start with redis:// or rediss://"
            )
        elif not host:
            t.report.problem(f"{t.where('redis')}: {shown(masked_url(url))} has no host")
        if parts.password:
            t.report.secrets.add(parts.password)
        if parts.password and password:
            t.report.problem(f"{t.where('password')}: the redis URL already has a password")
    elif password is not None:
        t.report.warnings.append(f"{t.where('password')}: set without cluster.redis; ignored")
    return ClusterConfig(redis=url, prefix=prefix, password=password)


def masked_url(url: str) -> str:
    """The URL without its userinfo (a password is a secret): `redis://…@host:6379/0`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid redis URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"…@{host}", parts.path, "", ""))
