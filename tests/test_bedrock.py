"""Bedrock through the real proxy: boto3 and the Anthropic Bedrock SDK as clients, a fake
Bedrock upstream that recomputes every SigV4 signature and refuses a mismatch."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from hydrallm.app.lifecycle import Proxy, start
from hydrallm.config import Config, EndpointConfig, ModelConfig
from hydrallm.config.load import parse_config
from hydrallm.observe.events import Logger, Telemetry
from hydrallm.providers.aws import region_from_host, resolve
from hydrallm.providers.base import ClientRequest
from hydrallm.providers.bedrock import BedrockProvider, path_model, with_model
from hydrallm.testing import CANONICAL_TEXT
from hydrallm.testing import bedrock as fakes
from hydrallm.testing.bedrock import FakeBedrock

KEY, SECRET = "AKIDPROXYSTATIC", "proxy-static-secret"
ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-x"
ARN_ENCODED = (
    "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-x"
)
CLIENT_MODEL = "anthropic.claude-client-choice"
ANTHROPIC_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hello, hydra"}],
}


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS setting of the machine leaks in; the chain never probes the network."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    config, credentials = tmp_path / "aws-config", tmp_path / "aws-credentials"
    config.write_text("")
    credentials.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return tmp_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    proxy: Proxy
    url: str
    log: io.StringIO


def _config(url: str, models: list[str], endpoint_extra: str, attempts: int = 1) -> str:
    entries = "".join(
        f'[[models]]\nendpoint = "aws"\ntype = "bedrock"\nmodel = "{m}"\nattempts = {attempts}\n\n'
        for m in models
    )
    return (
        f'[server]\nport = {_free_port()}\n\n[retry]\nmax_cycles = 1\ndefault_interval = "1ms"\n\n'
        f'[endpoints.aws]\nurl = "{url}"\n{endpoint_extra}\n\n{entries}'
    )


STATIC = f'aws_access_key_id = "{KEY}"\naws_secret_access_key = "{SECRET}"'


@asynccontextmanager
async def running(
    fake: FakeBedrock, models: list[str] | None = None, endpoint_extra: str = STATIC
) -> AsyncIterator[Running]:
    text = _config(fake.url, models or ["model-a", "model-b"], endpoint_extra)
    config = parse_config(text, env=dict(os.environ))
    log = io.StringIO()
    proxy = await start(config, logger=Logger("debug", stream=log))
    try:
        ((host, port),) = proxy.addresses().values()
        yield Running(proxy, f"http://{host}:{port}", log)
    finally:
        await proxy.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeBedrock]:
    async with FakeBedrock({KEY: SECRET}) as server:
        yield server


def boto_client(url: str) -> Any:
    """A boto3 bedrock-runtime client on `url` with dummy credentials (the proxy signs) and
    no retries of its own."""
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="AKIDCLIENTDUMMY",
        aws_secret_access_key="client-dummy-secret",
        config=BotoConfig(retries={"max_attempts": 1, "mode": "standard"}),
    )


def _body() -> bytes:
    return json.dumps(ANTHROPIC_BODY).encode()


async def _in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(fn)


def _invoke(url: str, model: str = CLIENT_MODEL) -> dict[str, Any]:
    response = boto_client(url).invoke_model(modelId=model, body=_body())
    return {
        "json": json.loads(response["body"].read()),
        "headers": response["ResponseMetadata"]["HTTPHeaders"],
    }


def _invoke_stream_text(url: str) -> str:
    response = boto_client(url).invoke_model_with_response_stream(
        modelId=CLIENT_MODEL, body=_body()
    )
    pieces = []
    for event in response["body"]:
        data = json.loads(event["chunk"]["bytes"])
        if data["type"] == "content_block_delta":
            pieces.append(data["delta"]["text"])
    return "".join(pieces)


def _converse_messages() -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": "Hello, hydra"}]}]


# --- requests, as boto3 makes them ---------------------------------------------------


async def test_invoke_model_rewrites_the_path_and_keeps_the_body(fake: FakeBedrock) -> None:
    async with running(fake) as proxy:
        result = await _in_thread(lambda: _invoke(proxy.url))
    assert result["json"]["content"][0]["text"] == CANONICAL_TEXT
    assert result["headers"]["x-hydrallm-model"] == "model-a"
    (seen,) = fake.requests
    assert seen.auth == "sigv4"
    assert seen.access_key == KEY
    assert seen.raw_path == "/model/model-a/invoke"
    assert seen.body == _body()
    assert "model" not in seen.json()


async def test_converse(fake: FakeBedrock) -> None:
    async with running(fake) as proxy:
        result = await _in_thread(
            lambda: boto_client(proxy.url).converse(
                modelId=CLIENT_MODEL, messages=_converse_messages()
            )
        )
    assert result["output"]["message"]["content"][0]["text"] == CANONICAL_TEXT
    assert result["stopReason"] == "end_turn"
    assert fake.requests[0].raw_path == "/model/model-a/converse"
    assert fake.requests[0].signed


async def test_invoke_model_with_response_stream(fake: FakeBedrock) -> None:
    async with running(fake) as proxy:
        text = await _in_thread(lambda: _invoke_stream_text(proxy.url))
    assert text == CANONICAL_TEXT
    assert fake.requests[0].raw_path == "/model/model-a/invoke-with-response-stream"
    assert fake.requests[0].signed


async def test_converse_stream_every_event_parses(fake: FakeBedrock) -> None:
    def run(url: str) -> list[dict[str, Any]]:
        response = boto_client(url).converse_stream(
            modelId=CLIENT_MODEL, messages=_converse_messages()
        )
        return list(response["stream"])

    async with running(fake) as proxy:
        events = await _in_thread(lambda: run(proxy.url))
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart"
    assert kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    text = "".join(
        e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e
    )
    assert text == CANONICAL_TEXT
    assert events[-1]["metadata"]["usage"]["inputTokens"] == 1
    assert fake.requests[0].raw_path == "/model/model-a/converse-stream"


async def test_count_tokens(fake: FakeBedrock) -> None:
    def run(url: str) -> dict[str, Any]:
        client = boto_client(url)
        if not hasattr(client, "count_tokens"):
            pytest.skip("this botocore has no count_tokens")
        result: dict[str, Any] = client.count_tokens(
            modelId=CLIENT_MODEL, input={"invokeModel": {"body": _body()}}
        )
        return result

    async with running(fake) as proxy:
        result = await _in_thread(lambda: run(proxy.url))
    assert result["inputTokens"] > 0
    assert fake.requests[0].raw_path == "/model/model-a/count-tokens"


async def test_arn_model_is_percent_encoded_like_boto3(fake: FakeBedrock) -> None:
    async with running(fake, models=[ARN]) as proxy:
        await _in_thread(lambda: _invoke(proxy.url))
    (seen,) = fake.requests
    assert seen.raw_path == f"/model/{ARN_ENCODED}/invoke"
    assert seen.model_id == ARN
    assert seen.auth == "sigv4"


async def test_client_arn_is_replaced_by_the_configured_model(fake: FakeBedrock) -> None:
    async with running(fake) as proxy:
        await _in_thread(lambda: _invoke(proxy.url, model=ARN))
    assert fake.requests[0].raw_path == "/model/model-a/invoke"


async def test_path_without_a_model_passes_through(fake: FakeBedrock) -> None:
    import aiohttp
    from yarl import URL

    async with running(fake) as proxy, aiohttp.ClientSession() as session:
        url = URL(f"{proxy.url}/guardrail/g%3Ax/version/1/apply", encoded=True)
        async with session.post(url, data=b'{"source":"INPUT"}') as response:
            assert response.status == 404
    assert fake.requests[0].raw_path == "/guardrail/g%3Ax/version/1/apply"
    assert fake.requests[0].signed


# --- fallback --------------------------------------------------------------------------


async def test_throttled_model_falls_back_to_the_next(fake: FakeBedrock) -> None:
    fake.script(fakes.throttled())
    async with running(fake) as proxy:
        result = await _in_thread(lambda: _invoke(proxy.url))
    assert fake.models == ["model-a", "model-b"]
    assert [r.raw_path for r in fake.requests] == ["/model/model-a/invoke", "/model/model-b/invoke"]
    assert all(r.body == _body() for r in fake.requests)
    assert result["headers"]["x-hydrallm-model"] == "model-b"
    assert result["json"]["content"][0]["text"] == CANONICAL_TEXT


async def test_validation_error_is_returned_not_retried(fake: FakeBedrock) -> None:
    fake.script(fakes.error(424, "ModelErrorException", "the model failed"))
    async with running(fake) as proxy:
        with pytest.raises(ClientError) as caught:
            await _in_thread(lambda: _invoke(proxy.url))
    assert caught.value.response["Error"]["Code"] == "ModelErrorException"
    assert fake.models == ["model-a"]


async def test_exception_frame_first_falls_back(fake: FakeBedrock) -> None:
    fake.script(fakes.exception_first("throttlingException"))
    async with running(fake) as proxy:
        text = await _in_thread(lambda: _invoke_stream_text(proxy.url))
    assert text == CANONICAL_TEXT
    assert fake.models == ["model-a", "model-b"]


async def test_corrupt_frame_crc_is_detected_and_falls_back(fake: FakeBedrock) -> None:
    fake.script(fakes.corrupt_frame())
    async with running(fake) as proxy:
        text = await _in_thread(lambda: _invoke_stream_text(proxy.url))
    assert text == CANONICAL_TEXT
    assert fake.models == ["model-a", "model-b"]


# --- credentials ----------------------------------------------------------------------


async def test_session_token_is_sent_and_signed() -> None:
    async with FakeBedrock({KEY: SECRET}, tokens={KEY: "session-token-1"}) as fake:
        extra = STATIC + '\naws_session_token = "session-token-1"'
        async with running(fake, endpoint_extra=extra) as proxy:
            await _in_thread(lambda: _invoke(proxy.url))
    (seen,) = fake.requests
    assert seen.auth == "sigv4"
    assert seen.headers["X-Amz-Security-Token"] == "session-token-1"


async def test_profile_from_shared_files(aws_env: Path) -> None:
    (aws_env / "aws-credentials").write_text(
        "[dev]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n"
    )
    fake = FakeBedrock({"AKIDPROFILE": "profile-secret"})
    async with fake, running(fake, endpoint_extra='aws_profile = "dev"') as proxy:
        await _in_thread(lambda: _invoke(proxy.url))
    (seen,) = fake.requests
    assert (seen.auth, seen.access_key) == ("sigv4", "AKIDPROFILE")


def _endpoint(url: str, **fields: Any) -> EndpointConfig:
    return EndpointConfig(name="aws", url=url, **fields)


def test_region_precedence(aws_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (aws_env / "aws-config").write_text("[profile dev]\nregion = eu-west-3\n")
    host = "https://bedrock-runtime.ap-south-1.amazonaws.com"
    local = "http://127.0.0.1:9"

    def region(url: str, env: dict[str, str], **fields: Any) -> str:
        return resolve(_endpoint(url, **fields), env, {}).region

    env = {"AWS_REGION": "us-west-2"}
    assert region(host, env, aws_region="ca-central-1", aws_profile="dev") == "ca-central-1"
    assert region(host, env, aws_profile="dev") == "ap-south-1"
    assert region(local, env, aws_profile="dev") == "us-west-2"
    assert region(local, {"AWS_DEFAULT_REGION": "sa-east-1"}, aws_profile="dev") == "sa-east-1"
    assert region(local, {}, aws_profile="dev") == "eu-west-3"
    assert region(local, {}) == "us-east-1"


def test_missing_profile_is_reported_not_raised() -> None:
    auth = resolve(_endpoint("http://127.0.0.1:9", aws_profile="nope"), {}, {})
    assert auth.credentials is None
    assert auth.problem is not None and "nope" in auth.problem


async def test_environment_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    fake = FakeBedrock({"AKIDFROMENV": "env-secret"}, tokens={"AKIDFROMENV": "env-token"})
    async with fake, running(fake, endpoint_extra="") as proxy:
        await _in_thread(lambda: _invoke(proxy.url))
    (seen,) = fake.requests
    assert (seen.auth, seen.access_key) == ("sigv4", "AKIDFROMENV")


async def test_bedrock_api_key_is_sent_as_bearer() -> None:
    fake = FakeBedrock(bearer_tokens=("bedrock-api-key-1",))
    async with fake, running(fake, endpoint_extra='api_key = "bedrock-api-key-1"') as proxy:
        await _in_thread(lambda: _invoke(proxy.url))
    (seen,) = fake.requests
    assert seen.auth == "bearer"
    assert "X-Amz-Date" not in seen.headers


async def test_no_credentials_is_a_clear_bedrock_shaped_502(fake: FakeBedrock) -> None:
    async with running(fake, endpoint_extra="") as proxy:
        with pytest.raises(ClientError) as caught:
            await _in_thread(lambda: _invoke(proxy.url))
        proxy.proxy.state.telemetry.log.flush()
        log = proxy.log.getvalue()
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 502
    assert error["Error"]["Code"] == "ServiceUnavailableException"
    assert "no AWS credentials" in error["Error"]["Message"]
    assert fake.requests == []  # nothing unsigned went out
    assert "bedrock_credentials" in log and "endpoint=aws" in log


async def test_a_wrong_signature_is_refused_by_the_fake(fake: FakeBedrock) -> None:
    """The fake really checks: a secret it does not know fails."""
    extra = f'aws_access_key_id = "{KEY}"\naws_secret_access_key = "not-the-secret"'
    async with running(fake, models=["model-a"], endpoint_extra=extra) as proxy:
        with pytest.raises(ClientError) as caught:
            await _in_thread(lambda: _invoke(proxy.url))
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert fake.requests[0].auth == "the request signature does not match"


# --- the Anthropic SDK's Bedrock client -----------------------------------------------


def _anthropic(url: str) -> anthropic.AsyncAnthropicBedrock:
    return anthropic.AsyncAnthropicBedrock(
        base_url=url,
        aws_access_key="AKIDCLIENTDUMMY",
        aws_secret_key="client-dummy-secret",
        aws_region="us-east-1",
        max_retries=0,
    )


async def test_anthropic_bedrock_sdk_message(fake: FakeBedrock) -> None:
    async with running(fake, models=[ARN]) as proxy:
        client = _anthropic(proxy.url)
        message = await client.messages.create(
            model="anthropic.claude-3-5-sonnet-20241022-v2:0",
            max_tokens=64,
            messages=[{"role": "user", "content": "Hello, hydra"}],
        )
        await client.close()
    assert message.content[0].type == "text"
    assert message.content[0].text == CANONICAL_TEXT
    assert fake.requests[0].raw_path == f"/model/{ARN_ENCODED}/invoke"
    assert fake.requests[0].signed


async def test_anthropic_bedrock_sdk_stream(fake: FakeBedrock) -> None:
    fake.script(fakes.exception_first("serviceUnavailableException"))
    async with running(fake) as proxy:
        client = _anthropic(proxy.url)
        async with client.messages.stream(
            model="anthropic.claude-3-5-sonnet-20241022-v2:0",
            max_tokens=64,
            messages=[{"role": "user", "content": "Hello, hydra"}],
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
        await client.close()
    assert text == CANONICAL_TEXT
    assert fake.models == ["model-a", "model-b"]


# --- pure pieces ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "model", "expected"),
    [
        ("/model/x/invoke", "m:1", "/model/m%3A1/invoke"),
        ("/model/a%3Ab/converse-stream", ARN, f"/model/{ARN_ENCODED}/converse-stream"),
        (f"/model/{ARN}/invoke", "m", "/model/m/invoke"),  # an unencoded ARN from a client
        ("/base/model/x/count-tokens", "m", "/base/model/m/count-tokens"),
        ("/model/x/other", "m", "/model/x/other"),
        ("/async-invoke", "m", "/async-invoke"),
    ],
)
def test_with_model(path: str, model: str, expected: str) -> None:
    assert with_model(path, model) == expected


def test_path_model_decodes() -> None:
    assert path_model(f"/model/{ARN_ENCODED}/invoke") == ARN
    assert path_model("/guardrail/x/apply") is None


def test_region_from_host() -> None:
    assert region_from_host("https://bedrock-runtime.eu-central-1.amazonaws.com") == "eu-central-1"
    assert region_from_host("https://bedrock-runtime-fips.us-east-2.amazonaws.com") == "us-east-2"
    assert region_from_host("http://127.0.0.1:9000") is None


@pytest.mark.parametrize(
    ("status", "kind", "name"),
    [
        (502, "api_error", "ServiceUnavailableException"),
        (504, "timeout_error", "ModelTimeoutException"),
        (400, "invalid_request_error", "ValidationException"),
        (401, "authentication_error", "AccessDeniedException"),
    ],
)
def test_error_body_is_bedrock_shaped(status: int, kind: str, name: str) -> None:
    err = BedrockProvider().error_body(status, "hydrallm: why", kind)
    assert json.loads(err.body) == {"message": "hydrallm: why"}
    assert dict(err.headers) == {"x-amzn-ErrorType": name}


async def test_prepare_signs_for_the_default_regional_endpoint() -> None:
    """No url: the region's public endpoint; the client's signature is replaced."""
    endpoint = _endpoint(
        "", aws_region="eu-west-1", aws_access_key_id=KEY, aws_secret_access_key=SECRET
    )
    model = ModelConfig(id="m", endpoint="aws", type="bedrock", model=ARN)
    config = Config(endpoints={"aws": endpoint}, models={"m": model})
    provider = BedrockProvider(env={})
    provider.configure(config, Telemetry(Logger("debug", stream=io.StringIO())))
    client_headers = (
        ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDCLIENT/20250101/us-east-1/x"),
        ("X-Amz-Date", "20250101T000000Z"),
        ("X-Amz-Security-Token", "client-token"),
        ("Content-Type", "application/json"),
    )
    request = ClientRequest("POST", "/model/x/invoke", "", client_headers, b"{}", None, False)
    out = await provider.prepare(model, endpoint, request)
    assert out.url == f"https://bedrock-runtime.eu-west-1.amazonaws.com/model/{ARN_ENCODED}/invoke"
    assert out.body == b"{}"
    headers = dict(out.headers)
    assert headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY}/")
    assert "/eu-west-1/bedrock/aws4_request" in headers["Authorization"]
    assert "X-Amz-Security-Token" not in headers
    assert headers["X-Amz-Date"] != "20250101T000000Z"
    assert headers["Content-Type"] == "application/json"
