"""Shared state in Redis (redis-py's asyncio client, hiredis when installed).

Imported only when `[cluster] redis` is configured.  Every call is one round trip (a
pipeline where there are several commands) and the client never retries by itself: the
link (`app/cluster.py`) decides what a failure means.  Layout in `app/cluster.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from hydrallm.config import ClusterConfig
from hydrallm.config.cluster import masked_url
from hydrallm.routing.shared import Write

SCAN_LIMIT = 10_000  # keys read per kind in one resync; beyond that the rest waits for pub/sub


class RedisBackend:
    def __init__(self, config: ClusterConfig) -> None:
        assert config.redis is not None
        self.label = masked_url(config.redis)
        self.prefix = config.prefix
        self.channel = f"{config.prefix}:events"
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            config.redis,
            password=config.password,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._pubsub: PubSub | None = None

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    async def connect(self) -> None:
        await self._client.ping()
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel)
        self._pubsub = pubsub

    async def close(self) -> None:
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._client.aclose()

    async def write(self, writes: list[Write]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for w in writes:
            key = self._key(w.kind, w.name)
            if w.envelope is None:
                pipe.delete(key)
            else:
                pipe.set(key, w.envelope, px=w.px)
            message = {"k": w.kind, "n": w.name, "v": w.envelope}
            pipe.publish(self.channel, json.dumps(message, separators=(",", ":")))
        await pipe.execute()

    async def claim(self, slot: str, px: int, me: str) -> tuple[bool, float]:
        key = f"{self.prefix}:{slot}"
        pipe = self._client.pipeline(transaction=False)
        pipe.set(key, me, nx=True, px=px)
        pipe.pttl(key)
        pipe.get(key)
        won, pttl, owner = await pipe.execute()
        if won or owner == me:
            return True, max(int(pttl), 1) / 1000 if int(pttl) > 0 else px / 1000
        # Someone else probes: ask again when their slot lapses.
        return False, max(int(pttl), 50) / 1000

    async def release(self, slots: Iterable[str], me: str) -> None:
        # Delete only a slot we still own (compare and delete, atomically in Redis).
        script = (
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1])"
            " else return 0 end"
        )
        pipe = self._client.pipeline(transaction=False)
        for slot in slots:
            pipe.eval(script, 1, f"{self.prefix}:{slot}", me)
        await pipe.execute()

    async def _scan(self, pattern: str) -> list[str]:
        keys: list[str] = []
        async for key in self._client.scan_iter(match=pattern, count=500):
            keys.append(key)
            if len(keys) >= SCAN_LIMIT:
                break
        return keys

    async def read_all(self, kinds: Iterable[str]) -> list[tuple[str, str, str | None, int | None]]:
        out: list[tuple[str, str, str | None, int | None]] = []
        for kind in kinds:
            start = f"{self.prefix}:{kind}:"
            keys = await self._scan(start.replace("*", "\\*") + "*")
            if not keys:
                continue
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            values = await pipe.execute()
            for i, key in enumerate(keys):
                value, pttl = values[2 * i], values[2 * i + 1]
                if value is not None:
                    out.append((kind, key[len(start) :], value, int(pttl)))
        return out

    async def next_message(self, timeout: float) -> tuple[str, str, str | None, int | None] | None:
        if self._pubsub is None:
            raise ConnectionError("not subscribed")
        msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        if msg is None or msg.get("type") != "message":
            return None
        try:
            doc = json.loads(msg["data"])
            return str(doc["k"]), str(doc["n"]), doc["v"], None
        except (ValueError, KeyError, TypeError):
            return None

    async def heartbeat(self, info: dict[str, Any], ttl: float) -> None:
        key = f"{self.prefix}:instance:{info['instance']}"
        await self._client.set(key, json.dumps(info, separators=(",", ":")), px=int(ttl * 1000))

    async def leave(self, me: str) -> None:
        await self._client.delete(f"{self.prefix}:instance:{me}")

    async def instances(self) -> list[dict[str, Any]]:
        keys = await self._scan(f"{self.prefix}:instance:*")
        if not keys:
            return []
        out = []
        for value in await self._client.mget(keys):
            if value is None:
                continue
            try:
                doc = json.loads(value)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return sorted(out, key=lambda d: str(d.get("instance")))
