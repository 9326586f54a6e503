"""Shared state between the `--workers` of one machine when no Redis is configured.

The supervisor holds one end of a unix socket pair per worker and runs a small hub on a
thread (started after every fork): a line of JSON a worker writes is passed on to every
other worker, and probe-slot claims are decided there (first come, until it lapses), the
same contract as Redis's SET NX PX.  Bounded: a line longer than `LINE_LIMIT` is dropped,
and a worker that does not read gets at most `BUFFER_LIMIT` bytes queued, the rest dropped
(counted) — a worker that cannot keep up loses updates, never the supervisor's memory.

Lines: {"op": "w", "k", "n", "v"} a record written (fanned out);
{"op": "c", "s": slot, "px": ms, "id": n} a claim, answered to the sender only with
{"op": "c", "id": n, "won": bool, "ms": ms left}; {"op": "r", "s": slot, "by": id} release.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from hydrallm.routing.shared import Write

LINE_LIMIT = 64 * 1024
BUFFER_LIMIT = 1024 * 1024


class _Peer:
    __slots__ = ("inbuf", "outbuf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()


class Hub:
    """The supervisor's side: socket pairs made before the forks, a thread after them."""

    def __init__(self, count: int) -> None:
        pairs = [socket.socketpair() for _ in range(count)]
        self._parent = [p for p, _ in pairs]
        self._child = [c for _, c in pairs]
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._slots: dict[str, tuple[str, float]] = {}  # slot -> owner, monotonic expiry
        self.relayed = 0
        self.dropped = 0

    def in_child(self, index: int) -> socket.socket:
        """In worker `index` after the fork: its end; every other end is closed."""
        for sock in (*self._parent, self._wake_r, self._wake_w):
            sock.close()
        for i, sock in enumerate(self._child):
            if i != index:
                sock.close()
        return self._child[index]

    def start(self) -> None:
        for sock in self._child:
            sock.close()
        self._thread = threading.Thread(target=self._run, name="hydrallm-hub", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            self._thread.join(timeout=2.0)
        for sock in (*self._parent, self._wake_r, self._wake_w):
            sock.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        peers: list[_Peer] = []
        for sock in self._parent:
            sock.setblocking(False)
            peer = _Peer(sock)
            peers.append(peer)
            sel.register(sock, selectors.EVENT_READ, peer)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while True:
                for key, events in sel.select():
                    peer = key.data
                    if peer is None:
                        return
                    if events & selectors.EVENT_WRITE:
                        self._flush(sel, peer)
                    if events & selectors.EVENT_READ and not self._read(sel, peer, peers):
                        sel.unregister(peer.sock)
                        peers.remove(peer)
        finally:
            sel.close()

    def _read(self, sel: selectors.BaseSelector, peer: _Peer, peers: list[_Peer]) -> bool:
        try:
            data = peer.sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        peer.inbuf += data
        while True:
            end = peer.inbuf.find(b"\n")
            if end < 0:
                if len(peer.inbuf) > LINE_LIMIT:
                    peer.inbuf.clear()
                    self.dropped += 1
                return True
            line = bytes(peer.inbuf[: end + 1])
            del peer.inbuf[: end + 1]
            self._handle(sel, peer, peers, line)

    def _handle(
        self, sel: selectors.BaseSelector, peer: _Peer, peers: list[_Peer], line: bytes
    ) -> None:
        try:
            doc = json.loads(line)
            op = doc["op"]
        except (ValueError, KeyError, TypeError):
            return
        if op == "w":
            for other in peers:
                if other is not peer:
                    self._send(sel, other, line)
            self.relayed += 1
        elif op == "c":
            now = time.monotonic()
            slot, px = str(doc["s"]), int(doc["px"])
            owner, until = self._slots.get(slot, ("", 0.0))
            won = now >= until or owner == doc.get("by")
            if won:
                owner, until = str(doc.get("by")), now + px / 1000
                self._slots[slot] = (owner, until)
            reply = {"op": "c", "id": doc.get("id"), "won": won, "ms": int((until - now) * 1000)}
            self._send(sel, peer, json.dumps(reply).encode() + b"\n")
        elif op == "r":
            slot = str(doc["s"])
            if self._slots.get(slot, ("", 0.0))[0] == doc.get("by"):
                del self._slots[slot]

    def _send(self, sel: selectors.BaseSelector, peer: _Peer, line: bytes) -> None:
        if len(peer.outbuf) + len(line) > BUFFER_LIMIT:
            self.dropped += 1
            return
        was_empty = not peer.outbuf
        peer.outbuf += line
        if was_empty:
            self._flush(sel, peer)

    def _flush(self, sel: selectors.BaseSelector, peer: _Peer) -> None:
        try:
            sent = peer.sock.send(peer.outbuf)
            del peer.outbuf[:sent]
        except BlockingIOError:
            pass
        except OSError:
            peer.outbuf.clear()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.outbuf else 0)
        with contextlib.suppress(KeyError, ValueError):
            sel.modify(peer.sock, events, peer)


class HubBackend:
    """A worker's side of the hub, in the shape of `app.cluster.Backend`."""

    def __init__(self, sock: socket.socket, worker: int) -> None:
        self.label = "workers (supervisor hub)"
        self._sock = sock
        self._worker = worker
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = 0

    async def connect(self) -> None:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_unix_connection(
                sock=self._sock, limit=LINE_LIMIT * 2
            )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()

    def _send(self, doc: dict[str, Any]) -> None:
        assert self._writer is not None
        self._writer.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n")

    async def write(self, writes: list[Write]) -> None:
        for w in writes:
            self._send({"op": "w", "k": w.kind, "n": w.name, "v": w.envelope})
        assert self._writer is not None
        await self._writer.drain()

    async def claim(self, slot: str, px: int, me: str) -> tuple[bool, float]:
        self._ids += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self._ids] = future
        self._send({"op": "c", "s": slot, "px": px, "by": me, "id": self._ids})
        try:
            reply = await future
        finally:
            self._replies.pop(self._ids, None)
        return bool(reply.get("won")), max(int(reply.get("ms", 50)), 50) / 1000

    async def release(self, slots: Iterable[str], me: str) -> None:
        for slot in slots:
            self._send({"op": "r", "s": slot, "by": me})

    async def read_all(self, kinds: Iterable[str]) -> list[tuple[str, str, str | None, int | None]]:
        return []  # the workers start together: nothing was shared before them

    async def next_message(self, timeout: float) -> tuple[str, str, str | None, int | None] | None:
        assert self._reader is not None
        try:
            line = await asyncio.wait_for(self._reader.readline(), timeout)
        except TimeoutError:
            return None
        if not line:
            raise ConnectionError("the supervisor's hub closed")
        try:
            doc = json.loads(line)
        except ValueError:
            return None
        if doc.get("op") == "c":
            future = self._replies.get(doc.get("id"))
            if future is not None and not future.done():
                future.set_result(doc)
            return None
        if doc.get("op") == "w":
            return str(doc["k"]), str(doc["n"]), doc.get("v"), None
        return None

    async def heartbeat(self, info: dict[str, Any], ttl: float) -> None:
        return None

    async def instances(self) -> list[dict[str, Any]]:
        return []

    async def leave(self, me: str) -> None:
        return None
