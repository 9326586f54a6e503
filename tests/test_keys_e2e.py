"""Key pools end to end: official SDKs -> hydrallm -> fakes that limit each key on its own
with the provider's real signals (`hydrallm.testing.limits.LimitedUpstream`)."""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import anthropic
import openai
import pytest

from hydrallm.testing import CANONICAL_TEXT, faults
from hydrallm.testing.faults import Fault
from hydrallm.testing.harness import ProxyHarness
from hydrallm.testing.limits import LimitedUpstream

A, B, C = "sk-pool-key-aaaa1111", "sk-pool-key-bbbb2222", "sk-pool-key-cccc3333"
ENV = {"KEY_A": A, "KEY_B": B, "KEY_C": C}
HI = [{"role": "user", "content": "hi"}]


def config(
    url: str,
    *,
    kind: str = "openai",
    keys: str = '["$KEY_A", "$KEY_B"]',
    strategy: str | None = "fill-first",
    attempts: int | None = 2,
    second: str | None = None,
    extra: str = "",
) -> str:
    """Model "main" on the key pool of endpoint "team"; `second`: a model "spare" after it
    (None for `strategy` or `attempts`: the default)."""
    strategy_line = f'key_strategy = "{strategy}"\n' if strategy is not None else ""
    attempts_line = f"attempts = {attempts}\n" if attempts is not None else ""
    text = f"""
[retry]
default_interval = "10ms"
max_cycles = 1
{extra}

[endpoints.team]
url = "{url}"
api_keys = {keys}
{strategy_line}
[[models]]
name = "main"
endpoint = "team"
type = "{kind}"
model = "m1"
{attempts_line}"""
    if second is not None:
        text += f"""
[endpoints.spare]
url = "{second}"
api_key = "$KEY_C"

[[models]]
name = "spare"
endpoint = "spare"
type = "{kind}"
model = "m2"
"""
    return text


def ask(px: ProxyHarness, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=px.url() + "/v1", api_key="client", max_retries=0, default_headers=headers
    )


async def chat(client: openai.AsyncOpenAI) -> str | None:
    done = await client.chat.completions.create(model="x", messages=HI)  # type: ignore[arg-type]
    await client.close()
    return done.choices[0].message.content


async def test_fill_first_moves_on_after_a_quota_and_never_probes_the_sleeping_key() -> None:
    async with LimitedUpstream() as up, ProxyHarness(config(up.url + "/v1"), env=ENV) as px:
        up.exhaust(A, reset_in=3600)
        for _ in range(3):
            assert await chat(ask(px)) == CANONICAL_TEXT
        assert up.asked[A] == 1 and up.served[B] == 3
        async with aiohttp.ClientSession() as http:
            health = await (await http.get(px.url() + "/_hydrallm/health")).json()
            metrics = await (await http.get(px.url() + "/_hydrallm/metrics")).text()
        keys = health["endpoints"]["team"]["keys"]
        assert [k["label"] for k in keys] == ["…1111", "…2222"]
        assert keys[0]["state"] == "exhausted" and keys[0]["until"].endswith("Z")
        assert keys[1]["state"] == "ready" and keys[1]["until"] is None
        assert 'hydrallm_key_state{endpoint="team",key="…1111"} 2.0' in metrics
        for secret in (A, B):
            assert secret not in str(health) and secret not in metrics


async def test_short_throttle_retries_the_same_key() -> None:
    async with LimitedUpstream() as up, ProxyHarness(config(up.url + "/v1"), env=ENV) as px:
        up.throttle(A, wait=0.05)
        assert await chat(ask(px)) == CANONICAL_TEXT
        assert up.asked[A] == 2 and up.asked[B] == 0


async def test_look_ahead_skips_a_key_at_zero_remaining() -> None:
    async with LimitedUpstream() as up, ProxyHarness(config(up.url + "/v1"), env=ENV) as px:
        up.budget(A, remaining=1, limit=100, reset_in=60)
        assert await chat(ask(px)) == CANONICAL_TEXT  # key A's last request: 0 left after it
        assert await chat(ask(px)) == CANONICAL_TEXT
        assert up.asked[A] == 1 and up.asked[B] == 1


async def test_invalid_key_taken_out_and_reported_once() -> None:
    async with LimitedUpstream() as up, ProxyHarness(config(up.url + "/v1"), env=ENV) as px:
        up.revoke(A)
        for _ in range(3):
            assert await chat(ask(px)) == CANONICAL_TEXT
        assert up.asked[A] == 1
        logs = px.logs()
        assert logs.count("key_invalid") == 1
        assert "…1111" in logs and A not in logs


async def test_all_keys_limited_moves_to_the_next_model() -> None:
    async with (
        LimitedUpstream(provider="zai") as up,
        LimitedUpstream(name="spare") as spare,
        ProxyHarness(config(up.url + "/v1", second=spare.url + "/v1"), env=ENV) as px,
    ):
        up.exhaust(A, reset_in=3 * 3600)
        up.exhaust(B, reset_in=3 * 3600)
        assert await chat(ask(px)) == CANONICAL_TEXT
        assert await chat(ask(px)) == CANONICAL_TEXT
        assert spare.served[C] == 2
        assert up.asked[A] == 1 and up.asked[B] == 1  # each learnt once, then skipped


async def test_everything_limited_gives_the_earliest_reset() -> None:
    async with (
        LimitedUpstream(provider="anthropic") as up,
        ProxyHarness(config(up.url, kind="anthropic"), env=ENV) as px,
    ):
        up.exhaust(A, reset_in=300)
        up.exhaust(B, reset_in=120)
        client = anthropic.AsyncAnthropic(base_url=px.url(), api_key="client", max_retries=0)
        for _ in range(2):
            with pytest.raises(anthropic.RateLimitError) as caught:
                await client.messages.create(model="x", max_tokens=8, messages=HI)  # type: ignore[arg-type]
            after = int(caught.value.response.headers["retry-after"])
            assert 110 <= after <= 121
            assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        # The second request sent nothing upstream: the proxy knew every key sleeps.
        assert up.asked[A] == 1 and up.asked[B] == 1
        assert caught.value.response.headers["x-hydrallm-attempts"] == "0"
        await client.close()


async def test_held_request_completes_after_the_reset() -> None:
    extra = 'hold = "10s"'
    async with (
        LimitedUpstream(provider="anthropic") as up,
        ProxyHarness(
            config(up.url, kind="anthropic", keys='["$KEY_A"]', extra=extra), env=ENV
        ) as px,
    ):
        up.exhaust(A, reset_in=1.5)
        client = anthropic.AsyncAnthropic(base_url=px.url(), api_key="client", max_retries=0)
        msg = await client.messages.create(model="x", max_tokens=8, messages=HI)  # type: ignore[arg-type]
        assert msg.content[0].text == CANONICAL_TEXT  # type: ignore[union-attr]
        assert up.served[A] == 1
        assert "held" in px.logs()
        await client.close()


async def test_a_session_stays_on_its_key() -> None:
    async with (
        LimitedUpstream() as up,
        ProxyHarness(config(up.url + "/v1", strategy="round-robin"), env=ENV) as px,
    ):
        for _ in range(3):
            assert await chat(ask(px, **{"session-id": "s-1"})) == CANONICAL_TEXT
        assert up.served[A] == 3 and up.served[B] == 0
        # Another session (no header: named by its prompt) is spread by round-robin.
        assert await chat(ask(px)) == CANONICAL_TEXT
        assert up.served[B] == 1


async def test_cache_hit_ratio_per_model_and_key() -> None:
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m1",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": 1000,
            "completion_tokens": 1,
            "total_tokens": 1001,
            "prompt_tokens_details": {"cached_tokens": 750},
        },
    }
    async with LimitedUpstream() as up, ProxyHarness(config(up.url + "/v1"), env=ENV) as px:
        up.script(Fault(body=json.dumps(answer).encode()))
        assert await chat(ask(px)) == "ok"
        async with aiohttp.ClientSession() as http:
            health = await (await http.get(px.url() + "/_hydrallm/health")).json()
            metrics = await (await http.get(px.url() + "/_hydrallm/metrics")).text()
            status = await (await http.get(px.url() + "/_hydrallm/status.json")).text()
        assert health["endpoints"]["team"]["keys"][0]["cache_hit_ratio"] == {"main": 0.75}
        assert json.loads(status)["endpoints"] == health["endpoints"]
        assert 'hydrallm_cache_hit_ratio{key="…1111",model="main"} 0.75' in metrics
        for secret in (A, B):
            assert secret not in status and secret not in metrics and secret not in str(health)


async def test_session_mode_stays_on_the_fallback_model_until_idle() -> None:
    text = """
[retry]
default_interval = "10ms"
max_cycles = 1

[routing]
affinity = "session"
affinity_ttl = "1s"

[endpoints.p]
url = "PRIMARY"
api_key = "$KEY_A"

[endpoints.f]
url = "FALLBACK"
api_key = "$KEY_C"

[[models]]
name = "primary"
endpoint = "p"
type = "openai"
model = "m1"

[[models]]
name = "fallback"
endpoint = "f"
type = "openai"
model = "m2"
"""
    async with LimitedUpstream() as primary, LimitedUpstream(name="f") as fallback:
        text = text.replace("PRIMARY", primary.url + "/v1").replace(
            "FALLBACK", fallback.url + "/v1"
        )
        async with ProxyHarness(text, env=ENV) as px:
            primary.script(faults.status(500))
            assert await chat(ask(px, **{"session-id": "s-1"})) == CANONICAL_TEXT
            assert fallback.served[C] == 1
            # The primary is healthy again, but this session stays where its cache is.
            assert await chat(ask(px, **{"session-id": "s-1"})) == CANONICAL_TEXT
            assert fallback.served[C] == 2 and primary.served[A] == 0
            assert await chat(ask(px, **{"session-id": "s-2"})) == CANONICAL_TEXT
            assert primary.served[A] == 1
            await asyncio.sleep(1.2)  # idle longer than affinity_ttl
            assert await chat(ask(px, **{"session-id": "s-1"})) == CANONICAL_TEXT
            assert primary.served[A] == 2 and fallback.served[C] == 2


async def test_demo_pool_absorbs_a_quota_that_fails_the_single_key() -> None:
    from rich.console import Console

    from hydrallm.cli.demo_keys import pool_table, run_pool_demo

    out = io.StringIO()
    report = await run_pool_demo(Console(file=out, width=120), requests=12, concurrency=1)
    assert report.direct.succeeded == 4 and report.proxied.succeeded == 12
    assert report.quota_answers == 1  # learnt once, then the key sleeps
    assert [k["state"] for k in report.keys] == ["exhausted", "ready"]
    console = Console(file=out, width=120)
    console.print(pool_table(report))
    assert "8 served; ready" in out.getvalue()
