"""Issue 14, what an attack run found: each defect class with the issue's example and
variants of our own, end to end through a real proxy and a fake upstream."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import zlib

import aiohttp
import pytest

from hydrallm.providers.urls import UnsafePath, check_path, join
from hydrallm.testing import FakeUpstream, faults
from hydrallm.testing.harness import ProxyHarness

CHAT = "/v1/chat/completions"
UP_KEY = "sk-hardening-upstream-0001"
PROXY_KEY = "proxy-hardening-key-0042"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one(
    url: str,
    *,
    api_type: str = "openai",
    key: str | None = UP_KEY,
    server: str = "",
    log: str = "",
) -> str:
    key_line = f'api_key = "{key}"\n' if key is not None else ""
    return (
        f"[server]\n{server}\n[log]\n{log}\n"
        '[retry]\nmax_cycles = 1\ndefault_interval = "1ms"\n[cooldown]\nenabled = false\n'
        f'[endpoints.up]\nurl = "{url}"\n{key_line}'
        f'[[models]]\nendpoint = "up"\ntype = "{api_type}"\nmodel = "served"\n'
    )


async def raw_get(url: str, path: str) -> int:
    """GET with the path exactly as written (aiohttp would normalise it)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    async with asyncio.timeout(5):
        status_line = await reader.readline()
        await reader.read()
    writer.close()
    return int(status_line.split()[1])


# --- 1. the base path cannot be climbed with encoded separators ------------------------

CLIMBS = [
    "/v1%2Fx%2Fy%2Fz/../../../../other/secret",  # the example
    "/v1/a%2F..%2F..%2F../secret",  # dots hidden behind encoded separators
    "/v1%2fA%2fB/../../../x",  # lower-case escapes
    "/v1/%252e%252e/%252e%252e/x",  # double-encoded dots
    "/v1/..%252F..%252Fx",  # double-encoded separator
    "/v1/x%5C..%5C..%5Cy",  # encoded backslashes
    "/v1/..;/..;/x",  # dot segments with path parameters (Tomcat)
    "/v1/%c0%ae%c0%ae/%c0%ae%c0%ae/x",  # overlong UTF-8 dots
    "/v1/.%2e/.%2E/x",  # half-encoded dot segments
    "/v1/%25%32%65%25%32%65/%25%32%65%25%32%65/x",  # dots that a second decoding makes
]


@pytest.mark.parametrize("path", CLIMBS)
def test_encoded_separators_cannot_climb_the_base(path: str) -> None:
    with pytest.raises(UnsafePath):
        check_path(path)


@pytest.mark.parametrize(
    "path",
    [
        # Bedrock ARNs travel with an encoded "/" inside one segment: they stay allowed.
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.anthropic.x/converse",
        "/v1/models/a%2Fb/../c",
        "/v1/files/report%20final.txt",
    ],
)
def test_encoded_separators_that_stay_below_are_forwarded(path: str) -> None:
    check_path(path)


async def test_climbing_paths_get_400_and_nothing_goes_upstream() -> None:
    async with FakeUpstream() as up, ProxyHarness(one(up.url + "/base")) as px:
        for path in CLIMBS[:4]:
            assert await raw_get(px.url(), path) == 400, path
        assert await raw_get(px.url(), "/v1/models") == 200
        assert [r.path for r in up.requests] == ["/base/v1/models"]


# --- 2. credentials written in an endpoint URL are secrets ------------------------------

URL_USER, URL_PASS, URL_QKEY = "hydra-user", "url-PASSWORD-77421", "gem-QUERYKEY-90210"


async def test_url_credentials_never_reach_a_client_a_log_or_the_status_page() -> None:
    dead = f"http://{URL_USER}:{URL_PASS}@127.0.0.1:{closed_port()}/v1beta?key={URL_QKEY}"
    async with ProxyHarness(one(dead, key=None)) as px, aiohttp.ClientSession() as s:
        async with s.post(px.url() + CHAT, json={"model": "m", "messages": []}) as r:
            body = await r.text()
            assert r.status == 502
        async with s.get(px.url() + "/_hydrallm/status.json") as r:
            status = await r.text()
        logs = px.logs()
    for text in (body, status, logs):
        assert URL_PASS not in text and URL_QKEY not in text and URL_USER not in text, text
    # The client learns which endpoint failed by its name, not the internal address.
    assert 'endpoint \\"up\\"' in body and "127.0.0.1" not in body, body


async def test_endpoint_query_is_kept_and_the_clients_appended() -> None:
    async with FakeUpstream() as up:
        async with ProxyHarness(one(f"{up.url}/?key={URL_QKEY}")) as px:
            async with aiohttp.ClientSession() as s:
                async with s.post(px.url() + CHAT + "?alt=sse", json={"model": "m"}) as r:
                    assert r.status == 200
                async with s.post(px.url() + CHAT, json={"model": "m"}) as r:
                    assert r.status == 200
            logs = px.logs()
    assert [(r.path, r.query_string) for r in up.requests] == [
        (CHAT, f"key={URL_QKEY}&alt=sse"),
        (CHAT, f"key={URL_QKEY}"),
    ]
    assert URL_QKEY not in logs


def test_join_keeps_the_base_query_first() -> None:
    base = "https://g.example/v1beta?key=k1&x=2"
    assert join(base, "/models", "", strip_version_prefix=False) == (
        "https://g.example/v1beta/models?key=k1&x=2"
    )
    assert join(base, "/m", "alt=sse", strip_version_prefix=False) == (
        "https://g.example/v1beta/m?key=k1&x=2&alt=sse"
    )


# --- 3a. an upstream error body is inflated at most as far as it is logged ---------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_error_body_bomb_is_inflated_only_as_far_as_logged(
    encoding: str,
) -> None:
    import tracemalloc

    plain = b'{"error":"' + b"0" * (64 * 1024 * 1024) + b'"}'  # 64 MiB once inflated
    packed = gzip.compress(plain, 1) if encoding == "gzip" else zlib.compress(plain, 1)
    del plain
    async with (
        FakeUpstream() as up,
        ProxyHarness(one(up.url, log="include_error_body = true")) as px,
        aiohttp.ClientSession(auto_decompress=False) as s,
    ):
        up.script(faults.status(500, packed, headers={"Content-Encoding": encoding}))
        tracemalloc.start()
        try:
            async with s.post(px.url() + CHAT, json={"model": "m"}) as r:
                await r.read()
                assert r.status == 500
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        logs = px.logs()
    assert peak < 24 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB while logging the error body"
    assert '"error' in logs and "0" * 1000 in logs and "inflated further" in logs


# --- 4. bodies that are not strictly one JSON object are refused, not forwarded ----------

NOT_STRICT = [
    (b'{"model":"gpt-4o","messages":[{"role":"user","content":"\xff"}]}', "UTF-8"),
    (b'{"model":"gpt-4o","messages":[]} {"model":"other"}', "after the object"),
    (b'{"model":"gpt-4o","temperature":NaN}', "NaN"),
    (b'\xef\xbb\xbf{"model":"gpt-4o"}', "byte-order mark"),
    (b'{"model":"cheap","messages":[],"model":"gpt-4o"}', "more than one"),
    (b'{"model":"gpt-4o","max_tokens":-Infinity}', "Infinity"),
    (b'{"model":"gpt-4o",}', "not valid JSON"),
]


@pytest.mark.parametrize(("body", "why"), NOT_STRICT)
@pytest.mark.parametrize("api_type", ["openai", "anthropic"])
async def test_a_body_that_is_not_strict_json_gets_400_and_nothing_is_sent(
    body: bytes, why: str, api_type: str
) -> None:
    path = CHAT if api_type == "openai" else "/v1/messages"
    async with FakeUpstream() as up, ProxyHarness(one(up.url, api_type=api_type)) as px:
        async with (
            aiohttp.ClientSession() as s,
            s.post(px.url() + path, data=body, headers={"Content-Type": "application/json"}) as r,
        ):
            answer = await r.json()
            assert r.status == 400
        assert up.requests == []
    error = answer["error"]
    assert why in error["message"], error
    if api_type == "anthropic":
        assert answer["type"] == "error" and error["type"] == "invalid_request_error"
    else:
        assert error["type"] == "invalid_request_error"


async def test_a_body_starting_with_a_brace_is_checked_without_a_json_content_type() -> None:
    async with FakeUpstream() as up, ProxyHarness(one(up.url)) as px:
        async with aiohttp.ClientSession() as s:
            async with s.post(
                px.url() + CHAT, data=b'  {"model":"x"} trailing', headers={"Content-Type": ""}
            ) as r:
                assert r.status == 400
            # Strict bodies still pass, rewritten.
            async with s.post(px.url() + CHAT, data=b'{"model":"x","n":1}') as r:
                assert r.status == 200
        assert [r.json()["model"] for r in up.requests] == ["served"]


# --- 5. compressed request bodies are inflated, rewritten and sent plain ----------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_request_body_is_forwarded_inflated_and_rewritten(encoding: str) -> None:
    plain = json.dumps({"model": "client-choice", "messages": [{"role": "user", "content": "hi"}]})
    packed = gzip.compress(plain.encode()) if encoding == "gzip" else zlib.compress(plain.encode())
    async with FakeUpstream() as up, ProxyHarness(one(up.url)) as px:
        headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
        async with (
            aiohttp.ClientSession() as s,
            s.post(px.url() + CHAT, data=packed, headers=headers) as r,
        ):
            assert r.status == 200, await r.text()
        (rec,) = up.requests
    assert "Content-Encoding" not in rec.headers
    assert rec.json() == {**json.loads(plain), "model": "served"}


async def test_compressed_request_body_limits_apply_after_inflation() -> None:
    big = json.dumps({"model": "m", "pad": "a" * 300_000}).encode()
    async with (
        FakeUpstream() as up,
        ProxyHarness(one(up.url, server="max_body_size = 100000")) as px,
        # A refused body is not read: the proxy closes that connection afterwards.
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
    ):
        gz = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        async with s.post(px.url() + CHAT, data=gzip.compress(big), headers=gz) as r:
            assert r.status == 413  # 300 kB inflated, ~1 kB on the wire
        async with s.post(px.url() + CHAT, data=b"\x1f\x8bnot gzip at all", headers=gz) as r:
            assert r.status == 400
            assert "decompressed" in (await r.json())["error"]["message"]
        odd = {"Content-Encoding": "compress", "Content-Type": "application/json"}
        async with s.post(px.url() + CHAT, data=b"\x1f\x9d...", headers=odd) as r:
            assert r.status == 415
        assert up.requests == []


# --- 6. hop-by-hop headers and proxy keys ------------------------------------------------


async def test_headers_named_in_connection_are_not_forwarded() -> None:
    async with FakeUpstream() as up, ProxyHarness(one(up.url)) as px:
        headers = {
            "Connection": "keep-alive, X-Hop-Secret, x-trace-hop",
            "X-Hop-Secret": "between-client-and-proxy",
            "X-Trace-Hop": "1",
            "X-Kept": "yes",
        }
        async with (
            aiohttp.ClientSession() as s,
            s.post(px.url() + CHAT, json={"model": "m"}, headers=headers) as r,
        ):
            assert r.status == 200
        (rec,) = up.requests
    assert "X-Hop-Secret" not in rec.headers and "X-Trace-Hop" not in rec.headers
    assert rec.headers["X-Kept"] == "yes"


async def test_a_proxy_key_is_removed_from_every_header_it_was_presented_in() -> None:
    cfg = one("UP", key=None, server=f'auth_keys = ["{PROXY_KEY}"]')
    async with FakeUpstream() as up, ProxyHarness(cfg.replace("UP", up.url)) as px:
        async with aiohttp.ClientSession() as s:
            both = {"Authorization": f"Bearer {PROXY_KEY}", "x-api-key": PROXY_KEY}
            async with s.post(px.url() + CHAT, json={"model": "m"}, headers=both) as r:
                assert r.status == 200
            # The client's own upstream key, next to the proxy key, still passes through.
            mixed = {"Authorization": "Bearer sk-client-own-key", "x-api-key": PROXY_KEY}
            async with s.post(px.url() + CHAT, json={"model": "m"}, headers=mixed) as r:
                assert r.status == 200
            flipped = {"Authorization": f"Bearer {PROXY_KEY}", "x-api-key": "sk-client-own"}
            async with s.post(px.url() + CHAT, json={"model": "m"}, headers=flipped) as r:
                assert r.status == 200
        first, second, third = up.requests
    assert PROXY_KEY not in str(first.headers)
    assert PROXY_KEY not in str(second.headers)
    assert second.headers["Authorization"] == "Bearer sk-client-own-key"
    assert PROXY_KEY not in str(third.headers) and third.headers["x-api-key"] == "sk-client-own"


# --- 7. connections that never speak ------------------------------------------------------


async def test_a_connection_that_never_speaks_is_closed_within_read_timeout() -> None:
    cfg = one("http://127.0.0.1:1", server='read_timeout = "300ms"\nkeepalive_timeout = "75s"')
    async with ProxyHarness(cfg) as px:
        host, port = px.url().removeprefix("http://").split(":")
        silent = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
        async with asyncio.timeout(3):
            for reader, _ in silent:
                assert await reader.read() == b""  # closed by the proxy, nothing said
        for _, writer in silent:
            writer.close()


async def test_idle_keep_alive_is_bounded_by_keepalive_timeout() -> None:
    cfg = one("UP", server='read_timeout = "5s"\nkeepalive_timeout = "300ms"')
    async with FakeUpstream() as up, ProxyHarness(cfg.replace("UP", up.url)) as px:
        host, port = px.url().removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(3):
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            # Then idle: closed after keepalive_timeout, well before read_timeout.
            while await reader.read(65536):
                pass
        writer.close()


async def test_the_408_for_a_slow_head_wins_over_a_reset() -> None:
    """A client still writing when its head deadline passes reads the 408, every time (the
    socket is half-closed after it and late input drained, so no reset overtakes it)."""
    cfg = one("http://127.0.0.1:1", server='read_timeout = "200ms"')
    async with ProxyHarness(cfg) as px:
        host, port = px.url().removeprefix("http://").split(":")

        async def one_loris() -> bytes:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")

            async def keep_writing() -> None:
                i = 0
                while True:
                    await asyncio.sleep(0.005)
                    writer.write(f"X-Slow-{i}: {'a' * 200}\r\n".encode())
                    i += 1

            feeder = asyncio.create_task(keep_writing())
            try:
                async with asyncio.timeout(5):
                    return await reader.read(64)
            finally:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
                writer.transport.abort()

        answers = await asyncio.gather(*(one_loris() for _ in range(20)))
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers
