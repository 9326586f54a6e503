"""The supervisor's hub for `--workers` without Redis: fan-out, probe slots, and bounds.
Real sockets and the hub's real thread; each test's peers stand in for the workers."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from hydrallm.app import workershare
from hydrallm.app.workershare import Hub


@pytest.fixture
def hub() -> Iterator[tuple[Hub, list[socket.socket]]]:
    h = Hub(3)
    # What each worker would keep after the fork (in_child), taken before start() closes
    # the supervisor's copies.
    peers = [s.dup() for s in h._child]
    h.start()
    try:
        yield h, peers
    finally:
        h.close()
        for p in peers:
            p.close()


def lines(sock: socket.socket, count: int, timeout: float = 5.0) -> list[dict]:
    sock.settimeout(timeout)
    buf = b""
    while buf.count(b"\n") < count:
        chunk = sock.recv(65536)
        assert chunk, "hub closed"
        buf += chunk
    return [json.loads(x) for x in buf.splitlines()[:count]]


def test_a_write_reaches_every_other_worker_and_not_the_writer(
    hub: tuple[Hub, list[socket.socket]],
) -> None:
    _, (w0, w1, w2) = hub
    w0.sendall(b'{"op":"w","k":"breaker","n":"m","v":"x"}\n')
    assert lines(w1, 1) == [{"op": "w", "k": "breaker", "n": "m", "v": "x"}]
    assert lines(w2, 1)[0]["n"] == "m"
    w0.settimeout(0.2)
    with pytest.raises(TimeoutError):
        w0.recv(10)


def test_one_worker_wins_a_probe_slot_until_it_lapses_or_is_given_back(
    hub: tuple[Hub, list[socket.socket]],
) -> None:
    _, (w0, w1, _) = hub
    w0.sendall(b'{"op":"c","s":"probe:m","px":60000,"by":"w0","id":1}\n')
    assert lines(w0, 1)[0]["won"] is True
    w1.sendall(b'{"op":"c","s":"probe:m","px":60000,"by":"w1","id":7}\n')
    reply = lines(w1, 1)[0]
    assert (reply["id"], reply["won"]) == (7, False) and reply["ms"] > 50_000
    w1.sendall(b'{"op":"r","s":"probe:m","by":"w1"}\n')  # not its slot: no effect
    w0.sendall(b'{"op":"r","s":"probe:m","by":"w0"}\n')
    # Lines from one worker are handled in order: this reply means the release was too.
    w0.sendall(b'{"op":"c","s":"probe:other","px":100,"by":"w0","id":2}\n')
    assert lines(w0, 1)[0]["id"] == 2
    w1.sendall(b'{"op":"c","s":"probe:m","px":100,"by":"w1","id":8}\n')
    assert lines(w1, 1)[0]["won"] is True


def test_a_worker_that_does_not_read_costs_at_most_the_buffer_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workershare, "BUFFER_LIMIT", 64 * 1024)
    h = Hub(2)
    w0, w1 = (s.dup() for s in h._child)
    h.start()
    try:
        w0.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        line = json.dumps({"op": "w", "k": "k", "n": "n", "v": "x" * 1000}).encode() + b"\n"
        for _ in range(2000):  # ~2 MB for a peer that reads nothing
            w0.sendall(line)
        deadline = time.monotonic() + 5
        while h.relayed < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert h.relayed == 2000
        assert h.dropped > 0  # beyond kernel buffers + 64 KiB, updates were dropped
        # A line without an end beyond LINE_LIMIT is dropped, and the hub keeps going.
        w0.sendall(b"x" * (workershare.LINE_LIMIT + 10))
        w0.sendall(b'\n{"op":"c","s":"probe:z","px":100,"by":"w0","id":1}\n')
        assert lines(w0, 1)[0]["won"] is True
    finally:
        h.close()
        w0.close()
        w1.close()
