"""The pure part of shared state (routing/shared.py) and the breakers' cluster hooks, with an
injected clock; the [cluster] config section; `hydrallm check` against a real Redis."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from clusterhelp import REDIS_SERVER, RedisServer, config_text
from hydrallm.cli.statusview import render_status
from hydrallm.config import CooldownConfig, ModelConfig
from hydrallm.config.cluster import masked_url
from hydrallm.errors import ConfigError
from hydrallm.routing import shared as shared_mod
from hydrallm.routing.breakers import Breakers
from hydrallm.routing.shared import Kind, SharedState
from opshelp import HYDRALLM, free_port, parse


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def models(*ids: str) -> list[ModelConfig]:
    return [ModelConfig(id=i, endpoint="e", type="openai", model=i) for i in ids]


def received(into: list[tuple[str, dict | None, float]]) -> Kind:
    return Kind("thing", lambda n, r, a: into.append((n, r, a)), lambda: [("x", {"v": 1}, 5.0)])


# --- SharedState -------------------------------------------------------------------------


def test_writes_are_coalesced_per_name_and_the_outbox_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shared_mod, "OUTBOX_LIMIT", 3)
    s = SharedState("me")
    woken: list[int] = []
    s.wake = lambda: woken.append(1)
    s.publish("thing", "a", {"v": 1}, 1.0)
    s.publish("thing", "a", {"v": 2}, 2.0)
    assert len(s.outbox) == 1 and woken
    (write,) = s.take()
    assert json.loads(write.envelope or "") == {"by": "me", "px": 2000, "r": {"v": 2}}
    for name in "abcde":
        s.publish("thing", name, {"v": 0}, 1.0)
    assert [w.name for w in s.take()] == ["c", "d", "e"]
    assert s.dropped == 2


def test_a_failed_send_goes_back_unless_a_newer_write_replaced_it() -> None:
    s = SharedState("me")
    s.publish("thing", "a", {"v": 1}, 1.0)
    s.publish("thing", "b", {"v": 1}, 1.0)
    taken = s.take()
    s.publish("thing", "a", {"v": 9}, 1.0)
    s.requeue(taken)
    out = s.take()
    assert [w.name for w in out] == ["b", "a"]
    assert json.loads(out[1].envelope or "")["r"] == {"v": 9}


def test_receive_ignores_own_records_and_garbage_and_knows_the_age() -> None:
    got: list[tuple[str, dict | None, float]] = []
    s = SharedState("me")
    s.register(received(got))
    other = json.dumps({"by": "other", "px": 10_000, "r": {"v": 1}})
    s.receive("thing", "a", other, 7_500)  # read with 7.5 s left of 10 s
    s.receive("thing", "b", other, None)  # pub/sub: just written
    s.receive("thing", "c", json.dumps({"by": "me", "px": 1, "r": {}}), None)
    s.receive("thing", "d", "{not json", None)
    s.receive("unknown-kind", "e", other, None)
    assert got == [("a", {"v": 1}, 2.5), ("b", {"v": 1}, 0.0)]
    s.republish()
    assert [w.name for w in s.take()] == ["x"]


def test_claims_decide_locally_and_are_asked_for_in_the_background() -> None:
    clock = Clock()
    s = SharedState("me", clock=clock)
    assert s.may("probe:m", 2.0)  # not connected: decide alone, as without a cluster
    s.connected = True
    assert not s.may("probe:m", 2.0)  # unknown: ask, skip for now
    assert s.take_claims() == ({"probe:m": 2.0}, set())
    s.claimed("probe:m", False, 1.0)
    assert not s.may("probe:m", 2.0)
    clock.now += 1.5  # the other's slot lapsed: ask again
    assert not s.may("probe:m", 2.0) and s.take_claims()[0] == {"probe:m": 2.0}
    s.claimed("probe:m", True, 2.0)
    assert s.may("probe:m", 2.0)
    s.release("probe:m")
    assert s.take_claims() == ({}, {"probe:m"})


# --- breakers with a shared state ---------------------------------------------------------


def test_an_open_circuit_is_published_and_adopted_elsewhere() -> None:
    clock = Clock()
    one, two = SharedState("one", clock=clock), SharedState("two", clock=clock)
    b1 = Breakers(CooldownConfig(failures=1, duration=10), clock)
    b2 = Breakers(CooldownConfig(failures=1, duration=10), clock)
    b1.shared, b2.shared = one, two
    two.register(Kind("breaker", b2.adopt, b2.snapshot))
    b1.failure("a")
    (write,) = one.take()
    assert (write.kind, write.name) == ("breaker", "a")
    assert json.loads(write.envelope or "")["r"] == {
        "state": "open",
        "open_ms": 10_000,
        "duration": 10,
    }
    # Read 4 s after it was written: 6 s left open on the second instance too.
    two.receive("breaker", "a", write.envelope, write.px - 4000)
    assert b2.state("a") == ("open", 6.0)
    changes: list[str] = []
    b2._on_change = lambda m, s, d: changes.append(s)
    two.receive("breaker", "a", write.envelope, write.px - 4000)  # a resync reads it again
    assert changes == []  # nothing new: no second "cooldown" log line
    assert [m.id for m in b2.plan(models("a", "b"))] == ["b"]
    b1.success("a")  # closes (a success anywhere else is news too)
    assert json.loads(one.take()[0].envelope or "")["r"] == {"state": "closed"}


def test_a_run_of_failures_is_counted_across_instances() -> None:
    clock = Clock()
    config = CooldownConfig(failures=3, duration=10)
    nodes = [SharedState(f"n{i}", clock=clock) for i in range(3)]
    breakers = [Breakers(config, clock) for _ in nodes]
    for node, b in zip(nodes, breakers, strict=True):
        b.shared = node
        node.register(Kind("breaker", b.adopt, b.snapshot))

    def deliver(source: int) -> None:
        for w in nodes[source].take():
            for i, node in enumerate(nodes):
                if i != source:
                    node.receive(w.kind, w.name, w.envelope, None)

    breakers[0].failure("a")
    deliver(0)
    breakers[1].failure("a")
    deliver(1)
    assert [b.state("a")[0] for b in breakers] == ["closed"] * 3
    breakers[2].failure("a")  # the third in a row, counted anywhere: opens
    deliver(2)
    assert [b.state("a")[0] for b in breakers] == ["open"] * 3
    # A success in between breaks the run everywhere.
    clock.now += 100
    for b in breakers:
        b.success("a")
    for i in range(3):
        deliver(i)
    breakers[0].failure("a")
    deliver(0)
    breakers[1].success("a")
    deliver(1)
    breakers[2].failure("a")
    breakers[2].failure("a")
    assert breakers[2].state("a")[0] == "closed"


def test_only_the_holder_of_the_probe_slot_probes() -> None:
    clock = Clock()
    s = SharedState("me", clock=clock)
    s.connected = True
    b = Breakers(CooldownConfig(failures=1, duration=10, max_duration=60), clock)
    b.shared = s
    b.failure("a")
    s.take()
    clock.now += 10
    chain = models("a", "b")
    assert [m.id for m in b.plan(chain)] == ["b"]  # slot asked for, not yet ours
    s.claimed("probe:a", False, 10.0)
    assert [m.id for m in b.plan(chain)] == ["b"]  # someone else probes
    s.forget_claim("probe:a")
    s.claimed("probe:a", True, 10.0)
    assert [m.id for m in b.plan(chain)] == ["a", "b"]  # ours: this is the probe
    b.failure("a")  # the probe failed: open again, doubled, and the slot given back
    assert b.state("a") == ("open", 20.0)
    assert s.take_claims()[1] == {"probe:a"}
    assert json.loads(s.take()[-1].envelope or "")["r"]["open_ms"] == 20_000
    s.connected = False  # the store is away: decide alone again
    clock.now += 20
    assert [m.id for m in b.plan(chain)] == ["a", "b"]


# --- config -------------------------------------------------------------------------------


MIN = """
[providers.p]
url = "http://127.0.0.1:9"
[models.m]
provider = "p"
type = "openai"
model = "m"
"""


def test_cluster_config_and_its_secret() -> None:
    assert parse(MIN).cluster.redis is None
    config = parse(
        MIN + '[cluster]\nredis = "$R"\nprefix = "team-a"\n',
        env={"R": "rediss://user:s3cretpass@cache:6380/2"},
    )
    assert config.cluster.redis == "rediss://user:s3cretpass@cache:6380/2"
    assert config.cluster.prefix == "team-a"
    assert "s3cretpass" in config.secrets
    assert masked_url(config.cluster.redis) == "rediss://…@cache:6380/2"
    config = parse(MIN + '[cluster]\nredis = "redis://h"\npassword = "$P"\n', env={"P": "pw12345"})
    assert config.cluster.password == "pw12345" and "pw12345" in config.secrets


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('redis = "http://h:6379"', "must start with redis:// or rediss://"),
        ('redis = "redis://h:99999"', "is not a valid URL"),
        ('redis = "redis://h"\nprefix = "a b"', "cluster.prefix"),
        ('redis = "redis://:x@h"\npassword = "y"', "already has a password"),
        ('reddis = "redis://h"', "did you mean"),
    ],
)
def test_cluster_config_errors(section: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(MIN + "[cluster]\n" + section + "\n")
    assert message in str(info.value)
    assert "redis://:x@" not in str(info.value)


# --- hydrallm check / status ---------------------------------------------------------------


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_check_tries_the_connection_and_never_shows_the_password(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(b"CONFIG SET requirepass pw-9f8e7d\r\n")
            assert conn.recv(16).startswith(b"+OK")
        url = f"redis://:pw-9f8e7d@127.0.0.1:{server.port}/0"
        good = tmp_path / "good.toml"
        good.write_text(config_text("http://127.0.0.1:9", "http://127.0.0.1:9", 1, redis=url))
        result = subprocess.run(
            [HYDRALLM, "check", "-c", str(good)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert f"cluster: redis://…@127.0.0.1:{server.port}/0" in result.stdout
        assert "reachable (" in result.stdout and "NOT" not in result.stdout
        wrong = tmp_path / "wrong.toml"
        wrong.write_text(good.read_text().replace("pw-9f8e7d", "not-it-123"))
        result = subprocess.run(
            [HYDRALLM, "check", "-c", str(wrong)], capture_output=True, text=True
        )
        assert "NOT reachable" in result.stdout
        assert "not-it-123" not in result.stdout + result.stderr
    finally:
        server.kill()
    down = tmp_path / "down.toml"
    port = free_port()
    down.write_text(config_text("http://x:9", "http://x:9", 1, redis=f"redis://127.0.0.1:{port}/0"))
    result = subprocess.run([HYDRALLM, "check", "-c", str(down)], capture_output=True, text=True)
    assert result.returncode == 0  # the proxy would run (degraded): a warning, not an error
    assert "NOT reachable" in result.stdout and "degraded" in result.stdout


def test_status_shows_instances_and_shared_state() -> None:
    doc = {
        "status": "ok",
        "models": [],
        "cluster": {
            "mode": "redis",
            "state": "degraded",
            "store": "redis://…@cache:6379/0",
            "instance": "box-1-ab12",
            "problem": "ConnectionError: refused",
            "instances": [
                {
                    "instance": "box-1-ab12",
                    "host": "box",
                    "pid": 1,
                    "worker": 0,
                    "listeners": [{"name": "main", "port": 8080}],
                    "seen": 0,
                }
            ],
            "shared": {"breaker": {"primary": {"state": "open", "open_ms": 1200}}},
        },
    }
    console = Console(width=200, record=True)
    console.print(render_status(doc, "http://x"))
    text = console.export_text()
    assert "Cluster: redis degraded via redis://…@cache:6379/0" in text
    assert "box-1-ab12" in text and "main :8080" in text
    assert '"state":"open"' in text and "primary" in text


async def test_a_reload_keeps_sharing_and_the_kinds_follow_the_new_runtime() -> None:
    import io

    from hydrallm.app.cluster import _kind
    from hydrallm.app.runtime import ProxyState, build_runtime, sharers
    from hydrallm.observe.events import Logger, Telemetry
    from hydrallm.proxy.upstream import AiohttpTransport

    config = parse(MIN)
    telemetry = Telemetry(Logger("info", stream=io.StringIO()))
    transport = AiohttpTransport()
    try:
        first = build_runtime(config, transport, telemetry)
        state = ProxyState(current=first, transport=transport, telemetry=telemetry)
        shared = SharedState("me")
        sharers(first)["breaker"].shared = shared
        kind = _kind(state, "breaker")
        state.current = build_runtime(config, transport, telemetry, previous=first)
        assert sharers(state.current)["breaker"].shared is shared
        kind.apply("m", {"state": "open", "open_ms": 5000, "duration": 5}, 0.0)
        st, left = state.current.engine.breakers.state("m")
        assert st == "open" and 4.0 < left <= 5.0
        assert first.engine.breakers.state("m") == ("closed", 0.0)
        assert [name for name, _, _ in kind.snapshot()] == ["m"]
    finally:
        await transport.close()


def test_without_the_cluster_extra_the_message_says_what_to_install(tmp_path: Path) -> None:
    # A `redis` package that cannot be imported stands in for one that is not installed.
    fake = tmp_path / "noredis" / "redis"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named redis')\n")
    env = {
        **os.environ,
        "PYTHONPATH": f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    path = tmp_path / "c.toml"
    port = free_port()
    path.write_text(config_text("http://x:9", "http://x:9", port, redis="redis://127.0.0.1:6379/0"))
    check = subprocess.run(
        [HYDRALLM, "check", "-c", str(path)], capture_output=True, text=True, env=env
    )
    assert check.returncode == 0
    assert "pip install 'hydrallm[cluster]'" in check.stdout
    serve = subprocess.run(
        [HYDRALLM, "serve", "-c", str(path)], capture_output=True, text=True, env=env, timeout=30
    )
    assert serve.returncode == 1
    assert "pip install 'hydrallm[cluster]'" in serve.stderr
    assert "Traceback" not in serve.stderr
