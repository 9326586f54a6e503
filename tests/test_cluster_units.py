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
from hydrallm.config import CooldownConfig
from hydrallm.config.cluster import masked_url
from hydrallm.errors import ConfigError
from hydrallm.routing import shared as shared_mod
from hydrallm.routing.affinity import KIND as AFFINITY_KIND
from hydrallm.routing.affinity import Affinity, Session
from hydrallm.routing.breakers import Breakers
from hydrallm.routing.keys import KIND as KEY_KIND
from hydrallm.routing.keys import KeyPool, KeyPools, Step
from hydrallm.routing.limits import Budget, Limit, Policy
from hydrallm.routing.limits import Kind as LimitKind
from hydrallm.routing.shared import Kind, SharedState
from opshelp import HYDRALLM, free_port, parse
from test_cooldown import Clock, models


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


# --- key limit state and session affinity as shared records (injected clock) -------------

KA, KB = "sk-unit-key-aaaa1111", "sk-unit-key-bbbb2222"


def key_pool(clock: Clock, keys: tuple[str, ...] = (KA, KB)) -> tuple[KeyPool, SharedState]:
    p = KeyPool("team", keys, "fill-first", Policy(), clock, lambda: 1.7e9 + clock.now)
    p.shared = SharedState(f"i{id(p)}", clock=clock)
    return p, p.shared


def relay(sender: SharedState, receiver: SharedState, left_ms: int | None = None) -> None:
    """What the store does: every queued write reaches the other instance, read with
    `left_ms` of its TTL left (None: at once)."""
    for w in sender.take():
        receiver.receive(w.kind, w.name, w.envelope, left_ms)


POOL_CONFIG = f"""
[endpoints.team]
url = "http://127.0.0.1:9/v1"
api_keys = ["{KA}", "{KB}"]
[[models]]
name = "main"
endpoint = "team"
type = "openai"
model = "m1"
[[listeners]]
name = "main"
port = 8080
models = ["main"]
"""


def test_an_exhausted_key_sleeps_on_the_other_instance_until_the_same_reset() -> None:
    here, there = Clock(), Clock()
    there.now = 55_000.0  # another machine's monotonic clock: never compared
    p1, s1 = key_pool(here)
    pools = KeyPools(parse(POOL_CONFIG), there, lambda: 1.7e9)
    s2 = SharedState("there", clock=there)
    pools.sharer.shared = s2
    s2.register(Kind(KEY_KIND, pools.sharer.adopt, pools.sharer.snapshot))
    p2 = pools.pools["team"]
    assert p1.outcome(p1.keys[0], Limit(LimitKind.QUOTA, 600.0)).step is Step.NEXT_KEY
    (write,) = list(s1.outbox.values())
    assert write.name == "team/…1111" and KA not in (write.envelope or "")
    assert json.loads(write.envelope or "")["r"] == {"state": "exhausted", "until_ms": 600_000}
    relay(s1, s2, left_ms=500_000)  # read 100 s after it was written
    assert p2.state(p2.keys[0]) == "exhausted"
    assert p2.pick() is p2.keys[1]  # never probed here
    assert pools.sharer.snapshot() == [
        ("team/…1111", {"state": "exhausted", "until_ms": 500_000}, 500.0)
    ]
    assert not s2.outbox  # adopting is not published back
    there.now += 499.5
    assert p2.pick() is p2.keys[1]
    there.now += 1.0
    assert p2.pick() is p2.keys[0]  # the same reset as where it was learned


def test_key_records_are_published_on_changes_only_and_adopted_conservatively() -> None:
    clock = Clock()
    p, s = key_pool(clock)
    key = p.keys[0]
    p.observe(key, Budget(0.55, None))
    p.observe(key, Budget(0.52, None))  # the same tenth: not news
    p.observe(key, Budget(0.51, None))
    (write,) = s.take()
    assert json.loads(write.envelope or "")["r"] == {"state": "ready", "fraction": 0.55}
    p.observe(key, Budget(0.31, None))
    assert len(s.take()) == 1
    p.outcome(key, Limit(LimitKind.QUOTA, 600.0))
    p.outcome(key, Limit(LimitKind.QUOTA, 600.0))  # the same sleep again: nothing new
    assert len(s.take()) == 1
    # A shorter throttle heard from elsewhere does not wake a key exhausted here.
    p.adopt(key, {"state": "throttled", "until_ms": 5_000}, 0.0)
    assert p.state(key) == "exhausted" and key.until == clock.now + 600
    # A quota heard from elsewhere upgrades a longer local throttle, keeping its end.
    other = p.keys[1]
    p.outcome(other, Limit(LimitKind.THROTTLE, 100.0))
    p.adopt(other, {"state": "exhausted", "until_ms": 50_000}, 0.0)
    assert (p.state(other), other.until) == ("exhausted", clock.now + 100)
    clock.now += 101
    assert p.state(other) == "ready"
    s.take()
    # A stale record (its time spent in transit) says nothing.
    p.adopt(p.keys[1], {"state": "exhausted", "until_ms": 1_000}, 2.0)
    assert p.state(p.keys[1]) == "ready"
    p.adopt(p.keys[1], {"state": "invalid"}, 0.0)
    assert p.state(p.keys[1]) == "invalid" and p.pick() is None
    p.adopt(p.keys[1], {"state": "until_ms"}, 0.0)  # garbage: ignored
    assert not s.outbox


def test_two_keys_with_one_label_are_named_by_a_digest_not_by_value() -> None:
    clock = Clock()
    twin_a, twin_b = "sk-first-0000-same", "sk-second-000-same"
    p, _ = key_pool(clock, (twin_a, twin_b))
    assert [k.label for k in p.keys] == ["…same#1", "…same#2"]
    assert len(set(p.names)) == 2
    for name in p.names:
        assert name.startswith("team/#") and "same" not in name


def affinity_pair(clock: Clock) -> tuple[Affinity, SharedState]:
    aff = Affinity("session", 300, clock, endpoints={"primary": "a", "backup": "b"})
    aff.shared = SharedState(f"i{id(aff)}", clock=clock)
    return aff, aff.shared


def test_affinity_is_published_on_change_or_half_ttl_and_adopted_with_its_age() -> None:
    here, there = Clock(), Clock()
    a1, s1 = affinity_pair(here)
    a2, s2 = affinity_pair(there)
    s2.register(Kind(AFFINITY_KIND, a2.adopt, a2.snapshot))
    session = Session("d" * 32, long_cache=False)
    a1.remember(session, "backup", "b", None)
    assert len(s1.outbox) == 1
    here.now += 10
    a1.remember(session, "backup", "b", None)  # same placement, TTL fresh: not published
    assert len(s1.outbox) == 1
    relay(s1, s2, left_ms=240_000)  # 60 s old when read
    assert a2.model_for(session) == "backup"
    (name, record, ttl) = a2.snapshot()[0]
    assert (name, record["model"], ttl) == (session.id, "backup", 240.0)
    there.now += 241
    assert a2.model_for(session) is None  # lapsed where it was adopted too
    # Half the TTL since the last publish: published again; a new model: at once.
    here.now += 150
    a1.remember(session, "backup", "b", None)
    assert len(s1.take()) == 1
    a1.remember(session, "primary", "a", None)
    (write,) = s1.take()
    assert json.loads(write.envelope or "")["r"]["model"] == "primary"
    # A newer local placement wins over an older one from elsewhere.
    a1.adopt(session.id, {"model": "backup", "key": None, "ttl": 300}, 5.0)
    assert a1.model_for(session) == "primary"
    a1.adopt("other", {"model": "gone", "key": None}, 0.0)  # a model this config lacks
    assert a1.get(Session("other", False)) is None
