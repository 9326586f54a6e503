"""Secrets and boundaries (issue 8): secrets never leak, no header injection, safe defaults,
reserved paths never forwarded, 401 before any upstream work."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from hydrallm.config import ListenerConfig, ServerConfig
from hydrallm.config.load import parse_config
from hydrallm.errors import ConfigError
from hydrallm.testing import FakeUpstream, faults
from hydrallm.testing.bedrock import FakeBedrock
from hydrallm.testing.harness import ProxyHarness

# Every secret the scenarios use; none may appear anywhere the proxy writes.
UP_KEY = "sk-up-SECRET-from-env-31337"
FILE_KEY = "sk-literal-SECRET-in-file-4242"
AWS_SECRET = "aws-SECRET-access-key-wJalrXUtnFEMI"
AWS_TOKEN = "aws-SESSION-token-FQoGZXIvYXdzE"
PROXY_KEY = "proxy-SECRET-key-8675309"
SECRETS = (UP_KEY, FILE_KEY, AWS_SECRET, AWS_TOKEN, PROXY_KEY)
ENV = {"UP_KEY": UP_KEY, "AWS_SECRET": AWS_SECRET, "AWS_TOKEN": AWS_TOKEN, "PROXY_KEY": PROXY_KEY}


@pytest.fixture(autouse=True)
def no_machine_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    (tmp_path / "aws").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scan_config(up: str, bedrock: str) -> str:
    return f"""
[server]
auth_keys = ["$PROXY_KEY"]
[log]
level = "debug"
include_error_body = true
[retry]
max_cycles = 1
default_interval = "1ms"
[cooldown]
enabled = false
[providers.dead]
url = "http://127.0.0.1:{closed_port()}"
api_key = "{FILE_KEY}"
[providers.up]
url = "{up}"
api_key = "$UP_KEY"
[providers.aws]
url = "{bedrock}"
aws_region = "us-east-1"
aws_access_key_id = "AKIDSECSCAN"
aws_secret_access_key = "$AWS_SECRET"
aws_session_token = "$AWS_TOKEN"
[models.dead]
provider = "dead"
type = "openai"
model = "x"
[models.o]
provider = "up"
type = "openai"
model = "glm"
attempts = 2
[models.b]
provider = "aws"
type = "bedrock"
model = "anthropic.claude-x"
[[listeners]]
name = "openai"
port = {closed_port()}
models = ["dead", "o"]
[[listeners]]
name = "bedrock"
port = {closed_port()}
models = ["b"]
"""


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def flatten(status: int, headers: object, body: bytes) -> str:
    return f"{status} {headers} {body.decode('utf-8', 'replace')}"


async def test_no_secret_in_any_log_line_response_admin_page_or_check(tmp_path: Path) -> None:
    async with (
        FakeUpstream() as up,
        FakeBedrock({"AKIDSECSCAN": AWS_SECRET}, tokens={"AKIDSECSCAN": AWS_TOKEN}) as br,
    ):
        cfg = scan_config(up.url, br.url)
        seen: list[str] = []
        async with ProxyHarness(cfg, env=ENV) as px, aiohttp.ClientSession() as s:
            oa, bd = px.url("openai"), px.url("bedrock")
            auth = {"Authorization": f"Bearer {PROXY_KEY}"}
            chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            # An upstream that quotes the key it was given (some do) in a retryable error.
            up.script(faults.status(503, {"error": {"message": f"bad key {UP_KEY}"}}))
            up.script(faults.ok(), faults.reset_mid_stream(2), faults.status(429, retry_after=0))
            scenarios: list[tuple[str, str, dict[str, str], bytes | None]] = [
                (
                    "POST",
                    oa + "/v1/chat/completions",
                    auth,
                    json.dumps(chat).encode(),
                ),  # 503, retry
                (
                    "POST",
                    oa + "/v1/chat/completions",
                    auth,
                    json.dumps({**chat, "stream": True}).encode(),
                ),  # mid-stream break
                (
                    "POST",
                    oa + "/v1/chat/completions",
                    auth,
                    json.dumps(chat).encode(),
                ),  # 429 then ok
                ("POST", oa + "/v1/chat/completions", {}, json.dumps(chat).encode()),  # 401
                ("POST", oa + "/v1/chat/completions", {"Authorization": "Bearer wrong"}, b"{}"),
                ("GET", oa + "/v1/..%2F..%2Fx", auth, None),  # 400
                (
                    "POST",
                    bd + "/model/anthropic.claude-client/invoke",
                    auth,
                    b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":5,"messages":[]}',
                ),
                ("GET", oa + "/_hydrallm/health", {}, None),
                ("GET", oa + "/_hydrallm/metrics", {}, None),
                ("GET", oa + "/_hydrallm/status.json", {}, None),
                ("GET", oa + "/_hydrallm/", {}, None),
            ]
            for method, url, headers, body in scenarios:
                async with s.request(method, url, headers=headers, data=body) as r:
                    seen.append(flatten(r.status, r.headers, await r.read()))
            statuses = [int(x.split()[0]) for x in seen]
            assert statuses[:7] == [200, 200, 200, 401, 401, 400, 200], seen
            logs = px.logs()
        if "bad key" in logs:  # error bodies logged (log.include_error_body): redacted
            assert "bad key [redacted]" in logs
        assert "outcome=connect_error" in logs and "outcome=status" in logs
        for text in [logs, *seen]:
            assert not leaks(text), (leaks(text), text[:400])
        # The upstreams never see the proxy key; the AWS secret never crosses the wire.
        for rec in up.requests:
            assert not leaks(f"{rec.headers} {rec.body!r}".replace(UP_KEY, "")), rec.headers
        for req in br.requests:
            assert AWS_SECRET not in repr(req) and PROXY_KEY not in repr(req)
        # `hydrallm check` describes the same config without a secret.
        path = tmp_path / "hydrallm.toml"
        path.write_text(cfg)
        out = subprocess.run(
            [sys.executable, "-m", "hydrallm", "check", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **ENV},
        )
        assert out.returncode == 0, out.stderr
        assert "openai" in out.stdout
        assert not leaks(out.stdout + out.stderr)


def one_model(url: str, key: str = "sk-inj-key-0001", model: str = "m", extra: str = "") -> str:
    return (
        f'[retry]\nmax_cycles = 1\n{extra}[endpoints.e]\nurl = "{url}"\napi_key = "{key}"\n'
        f'[[models]]\nendpoint = "e"\ntype = "openai"\nmodel = "{model}"\n'
    )


@pytest.mark.parametrize("key", ["sk-a\\r\\nX-Evil: 1", "sk-a\\nX-Evil: 1", "sk-a\\u0000b"])
def test_cr_lf_in_a_configured_header_value_is_a_config_error(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(one_model("http://127.0.0.1:9", key=key), env={})
    assert "X-Evil" not in str(info.value)  # the problem names the place, not the value


def test_cr_lf_in_an_env_header_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_config(one_model("http://127.0.0.1:9", key="$K"), env={"K": "sk\r\nX-Evil: 1"})


@pytest.mark.parametrize(
    "line",
    [
        "X-Smuggle: a\rX-Evil: 1",
        "X-Smuggle: a\nX-Evil: 1",
        "X-Smuggle: a\x00b",
        "X-Smuggle: a\r\n folded",
    ],
    ids=["bare-cr", "bare-lf", "nul", "obs-fold"],
)
async def test_cr_lf_in_a_client_header_is_refused_or_never_forwarded_as_a_header(
    line: str,
) -> None:
    async with FakeUpstream() as up, ProxyHarness(one_model(up.url)) as px:
        host, port = px.url().removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = b'{"model":"x"}'
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
            + line.encode("latin-1")
            + b"\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        async with asyncio.timeout(3):
            answer = await reader.read()
        writer.close()
        status = int(answer.split(b" ", 2)[1])
        assert status in (200, 400), answer[:200]
        for rec in up.requests:
            assert "X-Evil" not in rec.headers
            assert all(
                "\r" not in v and "\n" not in v and "\x00" not in v for v in rec.headers.values()
            )


async def test_client_model_name_with_cr_lf_is_not_a_response_header_injection() -> None:
    async with (
        FakeUpstream() as up,
        ProxyHarness(one_model(up.url, model="*")) as px,
        aiohttp.ClientSession() as s,
    ):
        raw = b'{"model": "gpt\\r\\nSet-Cookie: evil=1", "messages": []}'
        async with s.post(px.url() + "/v1/chat/completions", data=raw) as r:
            assert r.status == 200
            assert "Set-Cookie" not in r.headers
            assert r.headers["x-hydrallm-model"] == "gptSet-Cookie: evil=1"  # one header, inert
        assert "Traceback" not in px.logs()


def test_listeners_bind_loopback_by_default() -> None:
    assert ListenerConfig(name="x").host == "127.0.0.1"
    assert ServerConfig().host == "127.0.0.1"
    for text in (
        one_model("http://127.0.0.1:9"),
        '[providers.p]\nurl = "http://127.0.0.1:9"\n[models.m]\nprovider = "p"\ntype = "openai"\nmodel = "m"\n'
        '[[listeners]]\nname = "a"\nport = 1234\nmodels = ["m"]\n',
    ):
        config = parse_config(text, env={})
        assert [lc.host for lc in config.listeners] == ["127.0.0.1"]


async def test_default_listener_is_reachable_only_on_loopback() -> None:
    async with FakeUpstream() as up, ProxyHarness(one_model(up.url)) as px:
        ((host, _port),) = px.proxy.addresses().values()
        assert host == "127.0.0.1"


RESERVED = [
    ("GET", "/_hydrallm"),
    ("GET", "/_hydrallm/"),
    ("GET", "/_hydrallm/health?x=1"),
    ("GET", "/_hydrallm/unknown/deeper"),
    ("POST", "/_hydrallm/health"),
    ("PUT", "/_hydrallm/v1/chat/completions"),
    ("DELETE", "/_hydrallm/metrics"),
    ("GET", "/_hydrallm/../v1/models"),
]


async def test_reserved_paths_are_never_forwarded() -> None:
    async with FakeUpstream() as up, ProxyHarness(one_model(up.url)) as px:
        host, port = px.url().removeprefix("http://").split(":")
        for method, path in RESERVED:
            # Raw socket: no client library normalises the path first.
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}".encode()
            )
            async with asyncio.timeout(3):
                answer = await reader.read()
            writer.close()
            assert int(answer.split(b" ", 2)[1]) in (200, 404, 405), (path, answer[:120])
        assert up.requests == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {PROXY_KEY}"},
        {"Authorization": "Bearer "},
        {"x-api-key": PROXY_KEY[:-1]},
        {"api-key": PROXY_KEY},
    ],
    ids=["none", "wrong", "basic", "empty", "prefix", "unchecked-header"],
)
async def test_unauthenticated_requests_get_401_before_any_upstream_work(
    headers: dict[str, str],
) -> None:
    async with FakeUpstream() as up:
        cfg = '[server]\nauth_keys = ["$PROXY_KEY"]\n' + one_model(up.url)
        async with ProxyHarness(cfg, env=ENV) as px:
            host, port = px.url().removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            # A 50 MB body is announced and never sent: the 401 must not wait for it.
            lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\n{lines}Content-Length: 50000000\r\n\r\n".encode()
            )
            async with asyncio.timeout(2):
                status_line = await reader.readuntil(b"\r\n")
            writer.transport.abort()
            assert status_line.startswith(b"HTTP/1.1 401"), status_line
            assert PROXY_KEY not in px.logs()
        assert up.requests == []
