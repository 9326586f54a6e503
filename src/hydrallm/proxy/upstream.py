"""The transport seam (`Transport`, `Response`) and `AiohttpTransport`, the one place
aiohttp's client is used; its exceptions are translated here, once.

`Transport.send()` returns a `Response` whose body is read chunk by chunk.  Automatic
decompression is off: compressed bodies pass through byte for byte with their
`Content-Encoding`.  The default transport is h1client.LeanTransport; it hands requests
for targets behind an environment proxy to `AiohttpTransport`.  aiohttp is imported only
when an `AiohttpTransport` is made (startup time: the client package is large).
"""

from __future__ import annotations

import asyncio
import os
import socket
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    import aiohttp
    from yarl import URL

from hydrallm.errors import ConnectError, ProtocolError, UpstreamError
from hydrallm.proxy.h1upstream import RESPONSE_HOP_BY_HOP, LeanResponse


class Response(Protocol):
    """What the engine needs of an upstream response (the transport seam)."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]

    async def read_chunk(self) -> bytes: ...
    def release(self) -> None: ...
    def abort(self) -> None: ...


class Transport(Protocol):
    async def send(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> Response: ...

    async def close(self) -> None: ...


def message_headers(response: Response) -> list[tuple[str, str]]:
    """The response's headers less the ones about the upstream connection (a new list)."""
    if type(response) is LeanResponse:
        return response.message[:]  # sorted out while its head was parsed
    return [(k, v) for k, v in response.headers.items() if k.lower() not in RESPONSE_HOP_BY_HOP]


def take_whole(response: Response, limit: int) -> bytes | None:
    """The whole body at once when it has all arrived and is under `limit` bytes (no
    await, no read loop: a LeanTransport answer that came in one piece), else None."""
    if type(response) is LeanResponse:
        return response.take_whole(limit)
    return None


async def read_body(response: Response, limit: int) -> bytes:
    """Read the body to its end, or until `limit` bytes (what was read is returned)."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.read_chunk()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def translate(exc: BaseException) -> UpstreamError:
    """Map aiohttp / OS exceptions to the package's own error types."""
    import aiohttp

    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientConnectorDNSError):
        return ConnectError(f"cannot connect to {exc.host}:{exc.port}: {exc.os_error}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ProtocolError("upstream closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ProtocolError(f"upstream body broken: {_short(exc)}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return ProtocolError(f"invalid upstream response: {_short(exc)}")
    if isinstance(exc, aiohttp.ClientOSError | ConnectionError | OSError):
        return ProtocolError(f"connection error: {_short(exc)}")
    if isinstance(exc, aiohttp.ClientError):
        return ProtocolError(f"upstream error: {_short(exc)}")
    return ProtocolError(f"upstream error: {type(exc).__name__}")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


class AiohttpResponse:
    __slots__ = ("_resp", "headers", "reason", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.reason = resp.reason or ""
        self.headers = resp.headers

    async def read_chunk(self) -> bytes:
        """Next piece of the body as it arrived; b"" at the end."""
        try:
            return await self._resp.content.readany()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate(exc) from exc

    def release(self) -> None:
        # Returns the connection to the pool when the body was read to the end,
        # otherwise closes it (aiohttp decides).
        self._resp.release()

    def abort(self) -> None:
        self._resp.close()


_LARGE = 1024 * 1024


def _payload(body: bytes) -> bytes | aiohttp.payload.BytesPayload:
    import aiohttp

    if len(body) <= _LARGE:
        return body
    # aiohttp warns (ResourceWarning) about raw bodies over 1 MiB, suggesting streaming;
    # the body is already in memory and is written at once, so the warning does not apply.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return aiohttp.payload.BytesPayload(body)


_LOOPBACK_NAMES = frozenset({"localhost", "::1", "[::1]"})


class EnvProxies:
    """The standard proxy variables (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`),
    read once at startup.

    aiohttp's `trust_env=True` reads them again on every request (about 20 µs); a proxy
    that sits in front of every request of an agent reads them once instead.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        def get(name: str) -> str | None:
            return env.get(name) or env.get(name.upper()) or None

        fallback = get("all_proxy")
        self.by_scheme = {
            "http": get("http_proxy") or fallback,
            "https": get("https_proxy") or fallback,
        }
        raw = get("no_proxy") or ""
        self.no_proxy = tuple(p.strip().lower().lstrip(".") for p in raw.split(",") if p.strip())
        self.enabled = any(self.by_scheme.values())

    def for_url(self, url: URL) -> str | None:
        return self.for_host(url.scheme, url.host or "")

    def for_host(self, scheme: str, host: str) -> str | None:
        """The proxy to reach `host` through, or None for a direct connection."""
        proxy = self.by_scheme.get(scheme)
        if proxy is None:
            return None
        host = host.lower()
        if host in _LOOPBACK_NAMES or host.startswith("127."):
            return None  # a local model server is never reached through a proxy
        for skip in self.no_proxy:
            if skip == "*" or host == skip or host.endswith("." + skip):
                return None
        return proxy


class AiohttpTransport:
    """Pooled aiohttp client.  Created inside a running event loop."""

    def __init__(
        self,
        *,
        limit_per_host: int = 0,
        keepalive: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        import aiohttp

        self._proxies = EnvProxies(os.environ if env is None else env)
        # Pool size: limit=0 is unbounded; concurrency is bounded by the clients instead,
        # and an arbitrary cap here would queue agents' streams behind each other.
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=limit_per_host,
            keepalive_timeout=keepalive,
            enable_cleanup_closed=False,
            ttl_dns_cache=300,
            family=socket.AF_UNSPEC,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
            # The upstream read stops (back-pressure) once 2 x this is buffered and not yet
            # relayed: with aiohttp's 64 KiB default, a client that stops reading left
            # ~0.75 MiB of the upstream's answer queued in the proxy (issue 14, 3b).
            read_bufsize=16 * 1024,
        )

    async def send(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> Response:
        from yarl import URL

        target = URL(url, encoded=True)
        proxy = self._proxies.for_url(target) if self._proxies.enabled else None
        try:
            resp = await self._session.request(
                method,
                target,
                headers=list(headers),
                data=_payload(body) if body or method not in ("GET", "HEAD") else None,
                allow_redirects=False,
                compress=None,
                proxy=proxy,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate(exc) from exc
        return AiohttpResponse(resp)

    async def close(self) -> None:
        await self._session.close()
