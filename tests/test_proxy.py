"""End-to-end behaviour of the core proxy (issue: core), through real sockets and SDKs."""

from __future__ import annotations

import asyncio
import gzip as gzip_mod
import json
import time
import zlib
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from hydrallm.testing import CANONICAL_TEXT, FakeUpstream, faults
from hydrallm.testing.harness import ProxyHarness


def anthropic_config(
    *upstreams: tuple[str, str, int], extra: str = "", key: str | None = "sk-ant-test-0001"
) -> str:
    """A schema-1 config: one endpoint and model per (url, model, attempts)."""
    parts = ['[retry]\ndefault_interval = "10ms"\nmax_cycles = 1\n' + extra]
    for i, (url, _model, _attempts) in enumerate(upstreams):
        key_line = f'api_key = "{key}"' if key else ""
        parts.append(f'[endpoints.e{i}]\nurl = "{url}"\n{key_line}\n')
    for i, (_url, model, attempts) in enumerate(upstreams):
        parts.append(
            f'[[models]]\nendpoint = "e{i}"\ntype = "anthropic"\nmodel = "{model}"\nattempts = {attempts}\n'
        )
    return "\n".join(parts)


def openai_config(
    *upstreams: tuple[str, str, int], extra: str = "", endpoint_extra: str = ""
) -> str:
    parts = ['[retry]\ndefault_interval = "10ms"\nmax_cycles = 1\n' + extra]
    for i, (url, _model, _a) in enumerate(upstreams):
        parts.append(
            f'[endpoints.e{i}]\nurl = "{url}"\napi_key = "sk-openai-test-0002"\n{endpoint_extra}\n'
        )
    for i, (_url, model, attempts) in enumerate(upstreams):
        parts.append(
            f'[[models]]\nendpoint = "e{i}"\ntype = "openai"\nmodel = "{model}"\nattempts = {attempts}\n'
        )
    return "\n".join(parts)


async def test_openai_sdk_non_streaming_and_streaming_through_the_proxy() -> None:
    async with (
        FakeUpstream() as up,
        ProxyHarness(openai_config((up.url + "/v1", "gpt-up", 1))) as px,
    ):
        client = openai.AsyncOpenAI(base_url=px.url() + "/v1", api_key="client-key")
        done = await client.chat.completions.create(
            model="whatever", messages=[{"role": "user", "content": "hi"}]
        )
        assert done.choices[0].message.content == CANONICAL_TEXT
        assert done.model == "gpt-up"  # the upstream's own answer, never rewritten
        stream = await client.chat.completions.create(
            model="whatever", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == CANONICAL_TEXT
        assert [r.model for r in up.requests] == ["gpt-up", "gpt-up"]
        # The endpoint's key replaced the client's.
        assert all(r.headers["Authorization"] == "Bearer sk-openai-test-0002" for r in up.requests)
        await client.close()


async def test_anthropic_sdk_non_streaming_and_streaming_through_the_proxy() -> None:
    async with FakeUpstream() as up, ProxyHarness(anthropic_config((up.url, "glm-5", 1))) as px:
        client = anthropic.AsyncAnthropic(base_url=px.url(), api_key="client-key")
        msg = await client.messages.create(
            model="claude-x", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
        assert msg.content[0].text == CANONICAL_TEXT  # type: ignore[union-attr]
        async with client.messages.stream(
            model="claude-x", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = await stream.get_final_message()
        assert final.content[0].text == CANONICAL_TEXT  # type: ignore[union-attr]
        req = up.requests[0]
        assert req.headers["x-api-key"] == "sk-ant-test-0001"
        assert "Authorization" not in req.headers
        await client.close()


async def test_retry_counts_follow_attempts_models_and_cycles() -> None:
    async with (
        FakeUpstream(default=faults.status(503)) as a,
        FakeUpstream(default=faults.status(502)) as b,
    ):
        cfg = anthropic_config((a.url, "a", 3), (b.url, "b", 2), extra="max_cycles = 2\n").replace(
            "max_cycles = 1\n", ""
        )
        cfg += "\n[cooldown]\nenabled = false\n"
        async with ProxyHarness(cfg) as px, aiohttp.ClientSession() as s:
            async with s.post(
                px.url() + "/v1/messages", json={"model": "x", "max_tokens": 5, "messages": []}
            ) as r:
                body = await r.read()
                # Exhausted: the most recent upstream response, as received.
                assert r.status == 502
                assert r.headers["x-hydrallm-attempts"] == "10"
                assert r.headers["x-hydrallm-endpoint"] == "e1"
                assert json.loads(body)["type"] == "error"
        assert len(a.requests) == 6 and len(b.requests) == 4
        order = sorted(
            [(r.received_at, "a") for r in a.requests] + [(r.received_at, "b") for r in b.requests]
        )
        assert [n for _, n in order] == list("aaabbaaabb")


async def test_fallback_order_and_model_rewrite() -> None:
    async with FakeUpstream(default=faults.status(429)) as a, FakeUpstream() as b:
        async with ProxyHarness(openai_config((a.url, "first", 2), (b.url, "second", 1))) as px:
            async with aiohttp.ClientSession() as s:
                raw = b'{"messages": [{"role":"user","content":"hi"}],  "model" : "client-model", "n": 1.0}'
                async with s.post(px.url() + "/v1/chat/completions", data=raw) as r:
                    assert r.status == 200
                    assert r.headers["x-hydrallm-model"] == "second"
                    assert r.headers["x-hydrallm-attempts"] == "3"
        assert [r.model for r in a.requests] == ["first", "first"]
        assert b.requests[0].body == raw.replace(b'"client-model"', b'"second"')


async def test_non_retryable_4xx_goes_back_unchanged_at_once() -> None:
    body = {"error": {"message": "bad request here", "type": "invalid_request_error"}}
    async with (
        FakeUpstream(default=faults.status(400, body, {"X-Upstream": "yes"})) as a,
        FakeUpstream() as b,
    ):
        async with ProxyHarness(openai_config((a.url, "a", 3), (b.url, "b", 1))) as px:
            async with (
                aiohttp.ClientSession() as s,
                s.post(px.url() + "/v1/chat/completions", json={"model": "m"}) as r,
            ):
                assert r.status == 400
                assert r.headers["X-Upstream"] == "yes"
                assert await r.json() == body
        assert len(a.requests) == 1 and not b.requests


async def test_connection_refused_and_timeout_fall_back() -> None:
    async with FakeUpstream(default=faults.hang()) as slow, FakeUpstream() as good:
        cfg = openai_config(
            ("http://127.0.0.1:1", "dead", 2), (slow.url, "slow", 1), (good.url, "good", 1)
        )
        cfg = cfg.replace(
            'model = "slow"\nattempts = 1', 'model = "slow"\nattempts = 1\ntimeout = "200ms"'
        )
        async with ProxyHarness(cfg) as px, aiohttp.ClientSession() as s:
            started = time.monotonic()
            async with s.post(px.url() + "/v1/chat/completions", json={"model": "m"}) as r:
                assert r.status == 200
                assert r.headers["x-hydrallm-model"] == "good"
            assert time.monotonic() - started < 5
            assert "outcome=connect_error" in px.logs() and "outcome=timeout" in px.logs()


async def test_exhaustion_without_any_response_is_a_502_in_the_api_format() -> None:
    async with (
        ProxyHarness(anthropic_config(("http://127.0.0.1:1", "a", 2))) as px,
        aiohttp.ClientSession() as s,
    ):
        async with s.post(px.url() + "/v1/messages", json={"model": "m"}) as r:
            assert r.status == 502
            data = await r.json()
            assert data["type"] == "error" and data["error"]["type"] == "api_error"
            assert "2 attempts" in data["error"]["message"]
            assert "cannot connect" in data["error"]["message"]
            assert r.headers["x-hydrallm-attempts"] == "2"
    async with (
        ProxyHarness(openai_config(("http://127.0.0.1:1", "a", 1))) as px,
        aiohttp.ClientSession() as s,
    ):
        async with s.post(px.url() + "/v1/chat/completions", json={"model": "m"}) as r:
            data = await r.json()
            assert r.status == 502 and set(data["error"]) >= {"message", "type", "code"}


@pytest.mark.parametrize(
    ("key", "client_headers", "expect"),
    [
        (
            "sk-config-9999",
            {"Authorization": "Bearer client", "api-key": "c2"},
            {"Authorization": "Bearer sk-config-9999"},
        ),
        ("-", {"Authorization": "Bearer client", "x-api-key": "c"}, {}),
        (None, {"Authorization": "Bearer client"}, {"Authorization": "Bearer client"}),
    ],
)
async def test_openai_auth_rules(
    key: str | None, client_headers: dict[str, str], expect: dict[str, str]
) -> None:
    async with FakeUpstream() as up:
        key_line = f'api_key = "{key}"' if key else ""
        cfg = f'[endpoints.e]\nurl = "{up.url}"\n{key_line}\n[[models]]\nendpoint = "e"\ntype = "openai"\nmodel = "m"\n'
        async with ProxyHarness(cfg) as px, aiohttp.ClientSession() as s:
            headers = {
                **client_headers,
                "OpenAI-Beta": "assistants=v2",
                "User-Agent": "my-agent/1.0",
            }
            async with s.post(
                px.url() + "/v1/chat/completions", json={"model": "x"}, headers=headers
            ) as r:
                assert r.status == 200
        got = up.requests[0].headers
        creds = {k: got[k] for k in ("Authorization", "x-api-key", "api-key") if k in got}
        assert creds == expect
        assert got["OpenAI-Beta"] == "assistants=v2" and got["User-Agent"] == "my-agent/1.0"


async def test_anthropic_headers_and_query_pass_through() -> None:
    async with FakeUpstream() as up, ProxyHarness(anthropic_config((up.url, "m", 1))) as px:
        async with aiohttp.ClientSession() as s:
            headers = {
                "anthropic-beta": "tools-2024",
                "anthropic-version": "2024-01-01",
                "x-api-key": "client",
            }
            async with s.post(
                px.url() + "/v1/messages?beta=true", json={"model": "x"}, headers=headers
            ) as r:
                assert r.status == 200
        req = up.requests[0]
        assert req.query_string == "beta=true"
        assert req.headers["anthropic-beta"] == "tools-2024"
        assert req.headers["anthropic-version"] == "2024-01-01"
        assert req.headers.getall("x-api-key") == ["sk-ant-test-0001"]


async def test_env_key_resolution_and_unset_variable_warning() -> None:
    async with FakeUpstream() as up:
        cfg = anthropic_config((up.url, "m", 1), key="$HYDRA_TEST_KEY")
        async with (
            ProxyHarness(cfg, env={"HYDRA_TEST_KEY": "sk-from-env-123"}) as px,
            aiohttp.ClientSession() as s,
        ):
            async with s.post(px.url() + "/v1/messages", json={"model": "x"}) as r:
                assert r.status == 200
            assert "sk-from-env-123" not in px.logs()
        assert up.requests[0].headers["x-api-key"] == "sk-from-env-123"
        # No anthropic-version from the client: the default one is added.
        assert up.requests[0].headers["anthropic-version"] == "2023-06-01"
        async with ProxyHarness(cfg, env={}) as px, aiohttp.ClientSession() as s:
            assert any("HYDRA_TEST_KEY" in w for w in px.config.warnings)
            async with s.post(
                px.url() + "/v1/messages", json={"model": "x"}, headers={"x-api-key": "mine"}
            ) as r:
                assert r.status == 200
        # Unset: the client's own key passes through, never the literal "$HYDRA_TEST_KEY".
        assert up.requests[1].headers["x-api-key"] == "mine"


async def test_url_joining_and_strip_version_prefix() -> None:
    async with FakeUpstream() as up:
        cfg = openai_config(
            (up.url + "/api/coding/paas/v4/", "m", 1), endpoint_extra="strip_version_prefix = true"
        )
        async with ProxyHarness(cfg) as px, aiohttp.ClientSession() as s:
            async with s.post(px.url() + "/v1/chat/completions?x=1", json={"model": "x"}) as r:
                await r.read()
            async with s.get(px.url() + "/v1/..%2F..%2Fadmin") as r:
                assert r.status == 400
                assert "base path" in (await r.json())["error"]["message"]
        assert [(r.path, r.query_string) for r in up.requests] == [
            ("/api/coding/paas/v4/chat/completions", "x=1")
        ]


async def test_streaming_arrives_incrementally() -> None:
    async with FakeUpstream(default=faults.slow_chunks(0.15), chunk_words=4) as up:
        async with (
            ProxyHarness(openai_config((up.url, "m", 1))) as px,
            aiohttp.ClientSession() as s,
        ):
            started = time.monotonic()
            async with s.post(
                px.url() + "/v1/chat/completions", json={"model": "x", "stream": True}
            ) as r:
                first = await r.content.readany()
                first_at = time.monotonic() - started
                rest = await r.read()
                total = time.monotonic() - started
            assert b"data:" in first
            assert b"[DONE]" in first + rest
            # The upstream needs many intervals to finish; the first bytes came long before.
            assert total > 0.6 and first_at < total - 0.4


async def test_client_disconnect_closes_the_upstream_request() -> None:
    async with (
        FakeUpstream(default=faults.slow_chunks(0.2)) as up,
        ProxyHarness(openai_config((up.url, "m", 1))) as px,
    ):
        async with aiohttp.ClientSession() as s:
            r = await s.post(px.url() + "/v1/chat/completions", json={"model": "x", "stream": True})
            await r.content.readany()
            r.close()  # the client goes away mid-stream
        await up.wait_aborted(timeout=2.0)
        assert up.aborted == 1
        assert len(up.requests) == 1  # and no further attempt started


async def test_gzip_bodies_pass_through_compressed() -> None:
    async with (
        FakeUpstream(default=faults.gzip()) as up,
        ProxyHarness(openai_config((up.url, "m", 1))) as px,
    ):
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            headers = {"Accept-Encoding": "gzip"}
            async with s.post(
                px.url() + "/v1/chat/completions", json={"model": "x"}, headers=headers
            ) as r:
                assert r.headers["Content-Encoding"] == "gzip"
                raw = await r.read()
        assert (
            json.loads(gzip_mod.decompress(raw))["choices"][0]["message"]["content"]
            == CANONICAL_TEXT
        )
        assert up.requests[0].headers["Accept-Encoding"] == "gzip"


async def test_body_limit_413_and_nothing_forwarded() -> None:
    async with FakeUpstream() as up:
        cfg = '[server]\nmax_body_size = "1KiB"\n' + openai_config((up.url, "m", 1))
        async with ProxyHarness(cfg) as px, aiohttp.ClientSession() as s:
            async with s.post(
                px.url() + "/v1/chat/completions", data=b"{" + b" " * 4096 + b"}"
            ) as r:
                assert r.status == 413
                assert "limit" in (await r.json())["error"]["message"]
        assert not up.requests


async def test_secrets_never_appear_in_logs() -> None:
    async with FakeUpstream(default=faults.status(503)) as up:
        async with (
            ProxyHarness(openai_config((up.url, "m", 2))) as px,
            aiohttp.ClientSession() as s,
        ):
            async with s.post(
                px.url() + "/v1/chat/completions",
                json={"model": "x"},
                headers={"Authorization": "Bearer client-secret-777"},
            ) as r:
                await r.read()
            logs = px.logs()
        assert "outcome=status" in logs
        assert "sk-openai-test-0002" not in logs and "client-secret-777" not in logs


async def test_every_method_and_path_is_proxied() -> None:
    async with FakeUpstream() as up, ProxyHarness(openai_config((up.url, "m", 1))) as px:
        async with aiohttp.ClientSession() as s:
            async with s.get(px.url() + "/v1/models") as r:
                assert r.status == 200
                assert "data" in await r.json()
            async with s.delete(px.url() + "/v1/files/abc") as r:
                await r.read()
        assert [(r.method, r.path) for r in up.requests] == [
            ("GET", "/v1/models"),
            ("DELETE", "/v1/files/abc"),
        ]


async def test_concurrent_requests_are_independent() -> None:
    async with FakeUpstream() as up, ProxyHarness(openai_config((up.url, "m", 1))) as px:
        client = openai.AsyncOpenAI(base_url=px.url() + "/v1", api_key="k")
        results = await asyncio.gather(
            *[
                client.chat.completions.create(
                    model="x", messages=[{"role": "user", "content": str(i)}]
                )
                for i in range(20)
            ]
        )
        assert all(r.choices[0].message.content == CANONICAL_TEXT for r in results)
        await client.close()


async def test_include_error_body_logs_the_upstream_error_gunzipped() -> None:
    import gzip as gz

    body = gz.compress(b'{"error":{"message":"quota exceeded for project 42"}}')
    fault = faults.status(429, body, {"Content-Encoding": "gzip"})
    async with FakeUpstream(default=fault) as up:
        cfg = "[log]\ninclude_error_body = true\n" + openai_config((up.url, "m", 1))
        async with ProxyHarness(cfg, level="info") as px, aiohttp.ClientSession() as s:
            async with s.post(px.url() + "/v1/chat/completions", json={"model": "x"}) as r:
                assert r.status == 429
            logs = px.logs()
        assert "quota exceeded for project 42" in logs
        cfg_off = openai_config((up.url, "m", 1))
        async with ProxyHarness(cfg_off, level="info") as px, aiohttp.ClientSession() as s:
            async with s.post(px.url() + "/v1/chat/completions", json={"model": "x"}) as r:
                await r.read()
            assert "quota exceeded" not in px.logs()


async def test_debug_level_logs_the_outgoing_url_and_body_truncated() -> None:
    async with FakeUpstream() as up:
        async with ProxyHarness(openai_config((up.url, "m", 1)), level="debug") as px:
            async with aiohttp.ClientSession() as s:
                big = "x" * 5000
                payload = {"model": "c", "messages": [{"role": "user", "content": big}]}
                async with s.post(px.url() + "/v1/chat/completions?trace=1", json=payload) as r:
                    await r.read()
            logs = px.logs()
        line = next(ln for ln in logs.splitlines() if "upstream_request" in ln)
        assert f'url="{up.url}/v1/chat/completions?trace=1"' in line
        assert '{\\"model\\": \\"m\\"' in line  # the body as sent: model rewritten
        assert "bytes)" in line and big not in line  # truncated to 2 KiB
        assert "sk-openai-test-0002" not in logs
        async with ProxyHarness(openai_config((up.url, "m", 1)), level="info") as px:
            async with aiohttp.ClientSession() as s:
                async with s.post(px.url() + "/v1/chat/completions", json={"model": "c"}) as r:
                    await r.read()
            assert "upstream_request" not in px.logs()


async def test_a_large_non_retryable_error_body_reaches_the_client_whole() -> None:
    big = b'{"error":{"message":"' + b"x" * (1536 * 1024) + b'"}}'
    async with FakeUpstream(default=faults.status(400, big)) as up:
        async with (
            ProxyHarness(openai_config((up.url, "m", 2))) as px,
            aiohttp.ClientSession() as s,
        ):
            async with s.post(px.url() + "/v1/chat/completions", json={"model": "x"}) as r:
                assert r.status == 400
                assert r.headers["x-hydrallm-attempts"] == "1"
                assert await r.read() == big
        assert len(up.requests) == 1


async def test_expect_100_continue_is_answered_and_not_forwarded() -> None:
    async with FakeUpstream() as up, ProxyHarness(openai_config((up.url, "m", 1))) as px:
        host, port = px.url()[len("http://") :].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = b'{"model":"x","messages":[]}'
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(2):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        await writer.drain()
        async with asyncio.timeout(5):
            status_line = await reader.readuntil(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 200")
        writer.close()
    assert "Expect" not in up.requests[0].headers
    assert up.requests[0].body == body.replace(b'"x"', b'"m"')


async def test_a_large_retryable_error_body_is_never_returned_cut_short() -> None:
    big = b'{"error":{"message":"' + b"y" * (1536 * 1024) + b'"}}'
    async with FakeUpstream(default=faults.status(503, big)) as up:
        async with (
            ProxyHarness(openai_config((up.url, "m", 2))) as px,
            aiohttp.ClientSession() as s,
        ):
            async with s.post(px.url() + "/v1/chat/completions", json={"model": "x"}) as r:
                data = await r.json()
                assert r.status == 502
                assert "HTTP 503 with a body over" in data["error"]["message"]
        assert len(up.requests) == 2


async def test_the_standard_proxy_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    # A corporate HTTP proxy in front of the provider: the fake plays the proxy, and the
    # endpoint's host does not even resolve, so only a proxied request can succeed.
    cfg = openai_config(("http://llm.example.invalid/v1", "m", 1))
    async with FakeUpstream(name="corporate-proxy") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with ProxyHarness(cfg) as px, aiohttp.ClientSession() as s:
            async with s.post(px.url() + "/v1/chat/completions", json={"model": "x"}) as r:
                assert r.status == 200
        assert len(proxy.requests) == 1
        assert proxy.requests[0].headers["Host"] == "llm.example.invalid"
        monkeypatch.setenv("NO_PROXY", "localhost,.example.invalid")
        async with ProxyHarness(cfg) as px, aiohttp.ClientSession() as s:
            async with s.post(px.url() + "/v1/chat/completions", json={"model": "x"}) as r:
                assert r.status == 502  # bypassed the proxy: the host does not resolve
        assert len(proxy.requests) == 1


def gzip_stream(s: aiohttp.ClientSession, px: ProxyHarness) -> Any:
    """A streamed chat request from a client that accepts gzip (and does not inflate)."""
    payload = {"model": "x", "stream": True}
    headers = {"Accept-Encoding": "gzip"}
    return s.post(px.url() + "/v1/chat/completions", json=payload, headers=headers)


async def test_a_gzip_compressed_stream_is_peeked_through_and_relayed_as_sent() -> None:
    # Providers behind CDNs may compress event streams when the client accepts gzip.
    async with (
        FakeUpstream(default=faults.gzip()) as up,
        ProxyHarness(openai_config((up.url, "m", 2))) as px,
    ):
        async with (
            aiohttp.ClientSession(auto_decompress=False) as s,
            gzip_stream(s, px) as r,
        ):
            assert r.status == 200
            assert r.headers["Content-Encoding"] == "gzip"
            assert r.headers["x-hydrallm-attempts"] == "1"
            raw = await r.read()
        text = zlib.decompressobj(wbits=47).decompress(raw).decode()
        chunks = [
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in text.splitlines()
            if line.startswith("data: {") and '"choices":[{' in line
        ]
        assert "".join(chunks) == CANONICAL_TEXT
        assert text.rstrip().endswith("data: [DONE]")
        assert len(up.requests) == 1


async def test_a_compressed_stream_that_breaks_is_cut_not_padded_with_plain_text() -> None:
    import dataclasses

    broken = dataclasses.replace(faults.reset_mid_stream(after_chunks=3), gzip=True)
    async with (
        FakeUpstream(default=broken) as up,
        ProxyHarness(openai_config((up.url, "m", 1))) as px,
    ):
        async with (
            aiohttp.ClientSession(auto_decompress=False) as s,
            gzip_stream(s, px) as r,
        ):
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()  # a transport-level error, never a clean end


async def test_a_stream_in_another_format_is_relayed_as_it_comes() -> None:
    # Ollama's native API streams NDJSON: not SSE, but it must not be buffered either.
    from aiohttp import web

    async def ndjson(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await out.prepare(request)
        for i in range(4):
            await out.write(
                json.dumps({"message": {"content": f"w{i} "}, "done": False}).encode() + b"\n"
            )
            await asyncio.sleep(0.2)
        await out.write(b'{"done": true}\n')
        return out

    app = web.Application()
    app.router.add_post("/api/chat", ndjson)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with ProxyHarness(openai_config((f"http://127.0.0.1:{port}", "llama", 1))) as px:
            async with aiohttp.ClientSession() as s:
                started = time.monotonic()
                async with s.post(px.url() + "/api/chat", json={"model": "x", "stream": True}) as r:
                    first = await r.content.readline()
                    first_at = time.monotonic() - started
                    rest = await r.read()
                total = time.monotonic() - started
        assert json.loads(first)["message"]["content"] == "w0 "
        assert rest.endswith(b'{"done": true}\n')
        assert first_at < total - 0.4  # the first line arrived long before the end
    finally:
        await runner.cleanup()
