"""Operations in one process: listeners, routes, proxy auth, health, metrics, status."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from hydrallm.config.load import load_config
from hydrallm.testing import FakeUpstream, ok, slow_chunks, status
from opshelp import HYDRALLM, chat, free_port, parse, post_chat, running, url

FIXTURES = Path(__file__).parent / "fixtures"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_both_schemas_serve_the_same_chain() -> None:
    async with FakeUpstream() as fake:
        v1 = parse(
            f"""
            [server]
            port = {free_port()}
            [retry]
            default_interval = "1ms"
            [endpoints.up]
            url = "{fake.url}"
            [[models]]
            endpoint = "up"
            type = "openai"
            model = "first"
            attempts = 2
            [[models]]
            endpoint = "up"
            type = "openai"
            model = "second"
            """
        )
        v2 = parse(
            f"""
            [retry]
            default_interval = "1ms"
            [providers.up]
            url = "{fake.url}"
            [models.a]
            provider = "up"
            type = "openai"
            model = "first"
            attempts = 2
            [models.b]
            provider = "up"
            type = "openai"
            model = "second"
            [[listeners]]
            name = "default"
            port = {free_port()}
            models = ["a", "b"]
            """
        )

        def shape(config: object) -> list[tuple[str, str, str, int]]:
            from hydrallm.config import Config

            assert isinstance(config, Config)
            return [
                (m.endpoint, m.type, m.model, m.attempts)
                for m in config.chain(config.listeners[0].models)
            ]

        assert (
            shape(v1) == shape(v2) == [("up", "openai", "first", 2), ("up", "openai", "second", 1)]
        )
        for config in (v1, v2):
            fake.requests.clear()
            fake.script(status(503), status(503), ok())
            async with running(config) as (proxy, _), aiohttp.ClientSession() as session:
                code, headers, _ = await post_chat(session, url(proxy), chat())
            assert code == 200
            assert headers["x-hydrallm-model"] == "second"
            assert headers["x-hydrallm-attempts"] == "3"
            assert [r.model for r in fake.requests] == ["first", "first", "second"]


def test_v2_showcase_loads_and_check_describes_each_listener() -> None:
    path = FIXTURES / "v2-glm-coding-plan.toml"
    config = load_config(path, {"ZAI_API_KEY": "sk-zai-secret"})
    assert [(lc.name, lc.host, lc.port) for lc in config.listeners] == [
        ("openai-compatible", "0.0.0.0", 8101),
        ("anthropic-compatible", "0.0.0.0", 8102),
    ]
    assert [m.type for m in config.chain(config.listeners[1].models)] == ["anthropic"] * 4

    result = subprocess.run(
        [HYDRALLM, "check", "-c", str(path)],
        capture_output=True,
        text=True,
        env={"ZAI_API_KEY": "sk-zai-secret", "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "listener openai-compatible: http://0.0.0.0:8101" in out
    assert "listener anthropic-compatible: http://0.0.0.0:8102" in out
    assert "1. zai-coding-plan-global-anthropic / glm-5 [anthropic] attempts=5" in out
    # Open to the network, no proxy auth, and the proxy adds the z.ai key: say so.
    assert "anyone who can reach the port can spend those keys" in out
    assert "sk-zai-secret" not in out + result.stderr


async def test_two_listeners_in_one_process_serve_different_chains() -> None:
    async with FakeUpstream(name="a") as a, FakeUpstream(name="b") as b:
        config = parse(
            f"""
            [providers.pa]
            url = "{a.url}"
            [providers.pb]
            url = "{b.url}"
            [models.ma]
            provider = "pa"
            type = "openai"
            model = "model-a"
            [models.mb]
            provider = "pb"
            type = "openai"
            model = "model-b"
            [[listeners]]
            name = "one"
            port = {free_port()}
            models = ["ma"]
            [[listeners]]
            name = "two"
            port = {free_port()}
            models = ["mb"]
            """
        )
        async with running(config) as (proxy, _), aiohttp.ClientSession() as session:
            one = await post_chat(session, url(proxy, "one"), chat("whatever"))
            two = await post_chat(session, url(proxy, "two"), chat("whatever"))
    assert (one[0], one[1]["x-hydrallm-model"]) == (200, "model-a")
    assert (two[0], two[1]["x-hydrallm-model"]) == (200, "model-b")
    assert [r.model for r in a.requests] == ["model-a"]
    assert [r.model for r in b.requests] == ["model-b"]


async def test_routes_match_globs_case_insensitively_first_match_wins() -> None:
    async with FakeUpstream() as fake:
        config = parse(
            f"""
            [providers.up]
            url = "{fake.url}"
            [models.small]
            provider = "up"
            type = "openai"
            model = "glm-air"
            [models.big]
            provider = "up"
            type = "openai"
            model = "glm-5"
            [models.asked]
            provider = "up"
            type = "openai"
            model = "*"
            [models.fallback]
            provider = "up"
            type = "openai"
            model = "glm-flash"
            [[listeners]]
            name = "agent"
            port = {free_port()}
            models = ["asked", "fallback"]
            [listeners.routes]
            "*haiku*" = ["small"]
            "claude-*" = ["big"]
            """
        )
        async with running(config) as (proxy, _), aiohttp.ClientSession() as session:
            base = url(proxy, "agent")
            served = []
            for model in ("Claude-3-5-HAIKU-latest", "claude-opus-4", "gpt-4o", None):
                code, headers, _ = await post_chat(session, base, chat(model))
                assert code == 200
                served.append(headers["x-hydrallm-model"])
            async with session.get(base + "/_hydrallm/metrics") as resp:
                scrape = samples(await resp.text())
    # Both globs match the first request; the first one in the file wins.  With no route,
    # "*" forwards the client's model; with no model in the body, "*" is skipped.
    assert served == ["glm-air", "glm-5", "gpt-4o", "glm-flash"]
    assert [r.model for r in fake.requests] == ["glm-air", "glm-5", "gpt-4o", "glm-flash"]
    routes = {
        dict(labels)["route"]: value
        for (name, labels), value in scrape.items()
        if name == "hydrallm_requests_total"
    }
    # Route labels are the configured globs, never the client's model strings.
    assert routes == {"*haiku*": 1, "claude-*": 1, "default": 2}


async def test_health_metrics_and_status_after_successes_retries_and_fallbacks() -> None:
    async with FakeUpstream(chunk_words=1) as fake:
        config = parse(
            f"""
            [retry]
            default_interval = "1ms"
            [cooldown]
            failures = 2
            duration = "60s"
            [providers.up]
            url = "{fake.url}"
            [models.primary]
            provider = "up"
            type = "openai"
            model = "glm-5"
            attempts = 2
            [models.backup]
            provider = "up"
            type = "openai"
            model = "glm-4.7"
            [[listeners]]
            name = "main"
            port = {free_port()}
            models = ["primary", "backup"]
            """
        )
        fake.script(
            ok(),  # request 1: primary answers
            status(503),  # request 2: primary fails twice (a retry), backup answers (a fallback)
            status(503),
            ok(),
            slow_chunks(0.001),  # request 3, streamed: primary's circuit is open, backup answers
        )
        async with running(config) as (proxy, _), aiohttp.ClientSession() as session:
            base = url(proxy, "main")
            first = await post_chat(session, base, chat("m"))
            second = await post_chat(session, base, chat("m"))
            third = await post_chat(session, base, chat("m", stream=True))
            async with session.get(base + "/_hydrallm/health") as resp:
                assert resp.status == 200
                health = await resp.json()
            async with session.get(base + "/_hydrallm/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                scrape = samples(await resp.text())
            async with session.get(base + "/_hydrallm/status.json") as resp:
                snapshot = await resp.json()
            async with session.get(base + "/_hydrallm/nope") as resp:
                assert resp.status == 404
            async with session.get(base + "/_hydrallm/") as resp:
                assert resp.status == 200
    assert [r[0] for r in (first, second, third)] == [200, 200, 200]
    assert b"data: [DONE]" in third[2]
    # Nothing under /_hydrallm/ reached the upstream.
    assert [r.path for r in fake.requests] == ["/v1/chat/completions"] * 5

    assert health["status"] == "ok"
    assert health["worker"] == 0 and isinstance(health["pid"], int)
    assert health["listeners"][0]["name"] == "main"
    assert health["models"]["primary"]["state"] == "open"
    assert health["models"]["backup"]["state"] == "closed"

    def value(name: str, **labels: str) -> float:
        return scrape.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("hydrallm_requests_total", listener="main", route="default", status="200") == 3
    assert value("hydrallm_attempts_total", model="primary", outcome="success") == 1
    assert value("hydrallm_attempts_total", model="primary", outcome="503") == 2
    assert value("hydrallm_attempts_total", model="backup", outcome="success") == 2
    assert value("hydrallm_retries_total", model="primary") == 1
    assert value("hydrallm_fallbacks_total", listener="main") == 1
    assert value("hydrallm_upstream_seconds_count", model="primary") == 3
    assert value("hydrallm_upstream_seconds_count", model="backup") == 2
    assert value("hydrallm_first_token_seconds_count", model="backup") == 1
    assert value("hydrallm_streams_in_flight", listener="main") == 0
    assert value("hydrallm_circuit_state", model="primary") == 1
    assert value("hydrallm_circuit_state", model="backup") == 0
    assert value("hydrallm_config_reloads_total", result="failure") == 0
    assert value("hydrallm_worker_info", worker="0", pid=str(health["pid"])) == 1
    # Admin requests are not counted.
    assert sum(v for (n, _), v in scrape.items() if n == "hydrallm_requests_total") == 3

    assert [r["served_by"] for r in snapshot["requests"]] == ["backup", "backup", "primary"]
    assert [r["attempts"] for r in snapshot["requests"]] == [1, 3, 1]
    assert snapshot["requests"][0]["streamed"] is True
    models = {m["id"]: m for m in snapshot["models"]}
    assert models["primary"]["state"] == "open" and models["primary"]["open_for_s"] > 50
    assert (models["primary"]["requests_5m"], models["primary"]["successes_5m"]) == (3, 1)
    assert models["primary"]["last_error"]["outcome"] == "503"
    assert models["backup"]["p50_ttft_ms"] is not None
    assert snapshot["listeners"][0]["chain"] == ["primary", "backup"]


async def test_proxy_auth_accepts_rejects_and_never_forwards_the_key() -> None:
    async with FakeUpstream() as fake:
        config = parse(
            f"""
            [server]
            auth_keys = ["$HYDRALLM_KEY"]
            [providers.up]
            url = "{fake.url}"
            api_key = "sk-upstream-key"
            [models.o]
            provider = "up"
            type = "openai"
            model = "glm-5"
            [models.a]
            provider = "up"
            type = "anthropic"
            model = "glm-5"
            [[listeners]]
            name = "openai"
            port = {free_port()}
            models = ["o"]
            [[listeners]]
            name = "anthropic"
            port = {free_port()}
            models = ["a"]
            """,
            env={"HYDRALLM_KEY": "proxy-key-123"},
        )
        async with running(config) as (proxy, log), aiohttp.ClientSession() as session:
            base = url(proxy, "openai")
            missing = await post_chat(session, base, chat())
            wrong = await post_chat(session, base, chat(), {"Authorization": "Bearer nope"})
            assert fake.requests == []  # refused before any upstream request
            good = await post_chat(session, base, chat(), {"Authorization": "Bearer proxy-key-123"})
            async with session.post(
                url(proxy, "anthropic") + "/v1/messages",
                json={
                    "model": "x",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                headers={"x-api-key": "proxy-key-123", "anthropic-version": "2023-06-01"},
            ) as resp:
                anthropic_status = resp.status
            async with session.post(
                url(proxy, "anthropic") + "/v1/messages", json={"model": "x"}
            ) as resp:
                anthropic_refused = (resp.status, await resp.json())
    for code, _, body in (missing, wrong):
        assert code == 401
        error = json.loads(body)["error"]
        assert error["type"] == "authentication_error" and "proxy key" in error["message"]
    assert anthropic_refused[0] == 401
    assert anthropic_refused[1]["type"] == "error"  # Anthropic's error format
    assert anthropic_refused[1]["error"]["type"] == "authentication_error"
    assert good[0] == 200 and anthropic_status == 200
    assert len(fake.requests) == 2
    for recorded in fake.requests:
        sent = " ".join(f"{k}: {v}" for k, v in recorded.headers.items())
        assert "proxy-key-123" not in sent
    assert fake.requests[0].headers["Authorization"] == "Bearer sk-upstream-key"
    assert fake.requests[1].headers["x-api-key"] == "sk-upstream-key"
    assert "proxy-key-123" not in log.getvalue()


async def test_warns_when_an_open_listener_spends_keys_without_auth() -> None:
    async with FakeUpstream() as fake:
        config = parse(
            f"""
            [providers.up]
            url = "{fake.url}"
            api_key = "sk-upstream-key"
            [providers.mine]
            url = "{fake.url}"
            [models.keyed]
            provider = "up"
            type = "openai"
            model = "m"
            [models.clients]
            provider = "mine"
            type = "openai"
            model = "m"
            [[listeners]]
            name = "exposed"
            host = "0.0.0.0"
            port = {free_port()}
            models = ["keyed"]
            [[listeners]]
            name = "passthrough"
            host = "0.0.0.0"
            port = {free_port()}
            models = ["clients"]
            [[listeners]]
            name = "local"
            port = {free_port()}
            models = ["keyed"]
            """
        )
        async with running(config) as (_, log):
            pass
        text = log.getvalue()
    warnings = [line for line in text.splitlines() if "anyone who can reach" in line]
    assert len(warnings) == 1
    assert "'exposed'" in warnings[0] and " up" in warnings[0]
    assert "sk-upstream-key" not in text
