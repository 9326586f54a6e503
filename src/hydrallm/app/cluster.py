"""The IO side of shared state: keeps `SharedState` (routing/shared.py) in step with a store.

Two stores: Redis (`[cluster] redis`, every instance of a deployment) and, with
`--workers N` and no Redis, the supervisor's hub (`app/workershare.py`, the workers of
one machine).  `ClusterLink` owns three background tasks and nothing on the request path
waits for them:

- writer: drains the outbox (coalesced, bounded) and asks for / gives back probe slots;
- reader: applies what others publish (Redis pub/sub, or the hub's fan-out);
- ticker: (re)connects, beats the heartbeat, and every `resync` seconds reads the whole
  shared state and the instances seen.  After a connection is (re)made, this process
  republishes its live records first (Redis may have restarted empty), then reads.

Redis layout (all under `<prefix>:`): `<kind>:<name>` a record envelope with PX;
`probe:<model>` the half-open probe slot (SET NX PX); `instance:<id>` a heartbeat (PX);
channel `<prefix>:events` carries each write as `{"k", "n", "v"}` (v null: deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from hydrallm import __version__
from hydrallm.app.runtime import sharers
from hydrallm.config import Config
from hydrallm.config.cluster import masked_url
from hydrallm.errors import StartupError
from hydrallm.observe.events import Logger
from hydrallm.routing.shared import OUTBOX_LIMIT, Kind, Record, SharedState, Write

if TYPE_CHECKING:
    from hydrallm.app.runtime import ProxyState

Status = Literal["off", "ok", "degraded"]
Message = tuple[str, str, str | None, int | None]  # kind, name, envelope, ms left
INSTALL_HINT = "the [cluster] section needs the cluster extra: pip install 'hydrallm[cluster]'"
OP_TIMEOUT = 1.0  # seconds any single store operation may take before the link is degraded
HEARTBEAT_TTL = 5.0


# Records of each kind listed in status.json / `hydrallm status` (the rest are counted).
REPORT_ROWS = 50


class Backend(Protocol):
    label: str

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def write(self, writes: list[Write]) -> None: ...
    async def claim(self, slot: str, px: int, me: str) -> tuple[bool, float]: ...
    async def release(self, slots: Iterable[str], me: str) -> None: ...
    async def read_all(self, kinds: Iterable[str]) -> list[Message]: ...
    async def next_message(self, timeout: float) -> Message | None: ...
    async def heartbeat(self, info: dict[str, Any], ttl: float) -> None: ...
    async def instances(self) -> list[dict[str, Any]]: ...
    async def leave(self, me: str) -> None: ...


def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"


class ClusterLink:
    """Background tasks that keep one process's `SharedState` in step with a `Backend`."""

    def __init__(
        self,
        shared: SharedState,
        backend: Backend,
        log: Logger,
        info: Callable[[], dict[str, Any]],
        *,
        mode: Literal["redis", "workers"] = "redis",
        heartbeat: float = 1.0,
        resync: float = 5.0,
    ) -> None:
        self.shared = shared
        self.backend = backend
        self.log = log
        self.info = info
        self.mode = mode
        self.heartbeat_s = heartbeat
        self.resync_s = resync
        self.status: Status = "degraded"
        self.instances: list[dict[str, Any]] = []
        self.last_ok: float | None = None
        self._problem: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._up = asyncio.Event()

    def start(self) -> None:
        self.shared.wake = self._wake.set
        for name, body in (("writer", self._writer), ("reader", self._reader)):
            self._tasks.append(asyncio.create_task(body(), name=f"hydrallm-cluster-{name}"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="hydrallm-cluster-ticker"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.shared.connected:  # gone from `hydrallm status` at once, not in 5 s
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.backend.leave(self.shared.instance), OP_TIMEOUT)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.backend.close(), OP_TIMEOUT)

    # --- state --------------------------------------------------------------------------

    def _down(self, exc: BaseException) -> None:
        problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        problem = self.log.redact(problem)  # shown on the status page too
        self.shared.connected = False
        self._up.clear()
        if self.status != "degraded" or self._problem is None:
            self.log.warn(
                "cluster_degraded",
                store=self.backend.label,
                problem=problem,
                consequence="carrying on with this process's own state",
            )
        self.status = "degraded"
        self._problem = problem

    async def _connect(self) -> None:
        await asyncio.wait_for(self.backend.connect(), OP_TIMEOUT * 2)
        self.shared.connected = True
        self.shared.claims.clear()  # what we knew of slots may be stale
        # What this process learned while away goes in first, so that reading back cannot
        # undo it with an older record (the store may also have restarted empty).
        self.shared.republish()
        writes = self.shared.take(limit=OUTBOX_LIMIT)
        try:
            if writes:
                await asyncio.wait_for(self.backend.write(writes), OP_TIMEOUT * 2)
        except BaseException:
            self.shared.requeue(writes)
            raise
        await self._resync()
        self.status = "ok"
        self._problem = None
        self._up.set()
        self._wake.set()
        self.log.info("cluster_connected", store=self.backend.label, mode=self.mode)

    async def _resync(self) -> None:
        kinds = list(self.shared.kinds)
        for kind, name, envelope, pttl in await asyncio.wait_for(
            self.backend.read_all(kinds), OP_TIMEOUT * 2
        ):
            self.shared.receive(kind, name, envelope, pttl)
        self.instances = await asyncio.wait_for(self.backend.instances(), OP_TIMEOUT)
        self.last_ok = time.time()

    # --- tasks --------------------------------------------------------------------------

    async def _ticker(self) -> None:
        backoff = 0.2
        next_resync = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if not self.shared.connected:
                    await self._connect()
                    backoff = 0.2
                    next_resync = loop.time() + self.resync_s
                await asyncio.wait_for(
                    self.backend.heartbeat(self.info(), HEARTBEAT_TTL), OP_TIMEOUT
                )
                self.last_ok = time.time()
                if loop.time() >= next_resync:
                    await self._resync()
                    next_resync = loop.time() + self.resync_s
                await asyncio.sleep(self.heartbeat_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _reader(self) -> None:
        while True:
            await self._up.wait()
            try:
                msg = await self.backend.next_message(1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)
                continue
            if msg is not None:
                self.shared.receive(*msg)

    async def _writer(self) -> None:
        shared = self.shared
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not shared.connected:
                continue  # writes wait in the bounded outbox; the reconnect republishes
            writes = shared.take()
            try:
                if writes:
                    await asyncio.wait_for(self.backend.write(writes), OP_TIMEOUT)
                wanted, released = shared.take_claims()
                if released:
                    await asyncio.wait_for(
                        self.backend.release(released, shared.instance), OP_TIMEOUT
                    )
                for slot, ttl in wanted.items():
                    px = max(1, int(ttl * 1000))
                    won, left = await asyncio.wait_for(
                        self.backend.claim(slot, px, shared.instance), OP_TIMEOUT
                    )
                    shared.claimed(slot, won, left)
            except asyncio.CancelledError:
                shared.requeue(writes)
                raise
            except Exception as exc:
                shared.requeue(writes)
                self._down(exc)
                continue
            if shared.outbox:
                self._wake.set()

    # --- reporting ----------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The `cluster` entry of status.json."""
        records: dict[str, dict[str, Any]] = {}
        counts: dict[str, int] = {}
        for kind in self.shared.kinds.values():
            # Affinity alone may hold thousands of sessions: the report shows a bounded
            # sample of each kind and says how many there are.
            snapshot = list(kind.snapshot())
            counts[kind.name] = len(snapshot)
            records[kind.name] = {name: rec for name, rec, _ in snapshot[:REPORT_ROWS]}
        return {
            "mode": self.mode,
            "state": self.status,
            "store": self.backend.label,
            "instance": self.shared.instance,
            "problem": self._problem,
            "last_ok": None if self.last_ok is None else round(self.last_ok, 3),
            "instances": self.instances,
            "shared": records,
            "shared_counts": counts,
            "outbox": len(self.shared.outbox),
            "dropped": self.shared.dropped,
        }


def redis_backend(config: Config) -> Backend:
    """A Redis backend for `config.cluster` (the redis package is imported only here)."""
    try:
        from hydrallm.app.redisstore import RedisBackend
    except ImportError as exc:
        raise StartupError(INSTALL_HINT) from exc
    return RedisBackend(config.cluster)


async def check_redis(config: Config) -> str:
    """One line for `hydrallm check`: whether the configured Redis answers."""
    cluster = config.cluster
    if cluster.redis is None:
        return "cluster: off (state is kept per process)"
    label = f"{masked_url(cluster.redis)} prefix={cluster.prefix}"
    try:
        backend = redis_backend(config)
    except StartupError as exc:
        return f"cluster: {label}: {exc}"
    started = time.perf_counter()
    try:
        await asyncio.wait_for(backend.connect(), 3.0)
        ms = (time.perf_counter() - started) * 1000
        seen = await asyncio.wait_for(backend.instances(), 3.0)
        return f"cluster: {label}: reachable ({ms:.1f} ms), {len(seen)} instance(s) seen"
    except Exception as exc:
        problem = config_redact(config, f"{type(exc).__name__}: {exc}")
        return f"cluster: {label}: NOT reachable ({problem}); instances would run degraded"
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(backend.close(), 1.0)


def config_redact(config: Config, text: str) -> str:
    for secret in config.secrets:
        text = text.replace(secret, "…")
    return text


def _kind(state: ProxyState, kind: str) -> Kind:
    """A kind whose owner is looked up in the current runtime at each call (reloads)."""

    def apply(name: str, record: Record | None, age: float) -> None:
        sharer = sharers(state.current).get(kind)
        if sharer is not None:
            sharer.adopt(name, record, age)

    def snapshot() -> list[tuple[str, Record, float]]:
        sharer = sharers(state.current).get(kind)
        return sharer.snapshot() if sharer is not None else []

    return Kind(kind, apply, snapshot)


def start_cluster(state: ProxyState, hub: socket.socket | None = None) -> ClusterLink | None:
    """Share this process's state (every kind of `runtime.sharers`) through Redis
    (configured) or the workers' hub.  None (nothing shared, nothing started) without
    either.  Each kind reads `state.current` at each call, so after a reload the new
    runtime's objects are the ones fed.
    """
    config = state.current.config
    backend: Backend
    mode: Literal["redis", "workers"]
    if config.cluster.redis is not None:
        backend, mode = redis_backend(config), "redis"
    elif hub is not None:
        from hydrallm.app.workershare import HubBackend

        backend, mode = HubBackend(hub, state.worker), "workers"
    else:
        return None
    shared = SharedState(instance_id())
    for kind, sharer in sharers(state.current).items():
        shared.register(_kind(state, kind))
        sharer.shared = shared

    def info() -> dict[str, Any]:
        return {
            "instance": shared.instance,
            "host": socket.gethostname(),
            "pid": state.pid,
            "worker": state.worker,
            "version": __version__,
            "listeners": [
                {"name": lc.name, "host": lc.host, "port": lc.port}
                for lc in state.current.config.listeners
            ],
            "seen": round(time.time(), 3),
        }

    link = ClusterLink(shared, backend, state.telemetry.log, info, mode=mode)
    link.start()
    return link
