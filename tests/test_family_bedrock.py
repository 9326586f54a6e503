"""Issue 16: an Anthropic Messages client falls back from Anthropic direct to Claude on
Bedrock (InvokeModel / InvokeModelWithResponseStream, SigV4-signed as any Bedrock call)."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anthropic
import pytest

from hydrallm.app.lifecycle import start
from hydrallm.config.load import parse_config
from hydrallm.observe.events import Logger
from hydrallm.testing import FakeUpstream, faults
from hydrallm.testing import bedrock as b
from hydrallm.testing.bedrock import FakeBedrock

KEY, SECRET = "AKIDFAMILYTEST01", "family-test-secret"
BEDROCK_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS setting of the machine leaks in; the chain never probes the network."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    (tmp_path / "aws-config").write_text("")
    (tmp_path / "aws-credentials").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@asynccontextmanager
async def running(direct: str, aws: str) -> AsyncIterator[tuple[str, io.StringIO]]:
    text = f"""
[retry]
max_cycles = 1
default_interval = "1ms"
[cooldown]
enabled = false
[endpoints.direct]
url = "{direct}"
api_key = "sk-ant-direct-0001"
[endpoints.aws]
url = "{aws}"
aws_access_key_id = "{KEY}"
aws_secret_access_key = "{SECRET}"
aws_region = "us-east-1"
[models.claude]
endpoint = "direct"
type = "anthropic"
model = "claude-sonnet-4-5"
attempts = 1
[models.claude-bedrock]
endpoint = "aws"
type = "bedrock"
model = "{BEDROCK_MODEL}"
attempts = 1
[[listeners]]
name = "main"
port = 8080
models = ["claude", "claude-bedrock"]
"""
    config = parse_config(text, env=dict(os.environ))
    config = replace(config, listeners=tuple(replace(lc, port=0) for lc in config.listeners))
    log = io.StringIO()
    proxy = await start(config, logger=Logger("info", stream=log))
    host, port = proxy.addresses()["main"]
    try:
        yield f"http://{host}:{port}", log
    finally:
        await proxy.close()


ASK = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 100,
    "system": "Be brief.",
    "metadata": {"user_id": "u-1"},  # Anthropic-only: dropped for Bedrock, not refused
    "messages": [{"role": "user", "content": "Hello, hydra"}],
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_anthropic_down_claude_on_bedrock_answers(stream: bool) -> None:
    async with (
        FakeUpstream(name="direct", default=faults.overloaded()) as direct,
        FakeBedrock({KEY: SECRET}) as aws,
        running(direct.url, aws.url) as (url, _),
    ):
        async with anthropic.AsyncAnthropic(
            base_url=url, api_key="sk-client", max_retries=0
        ) as client:
            if stream:
                async with client.messages.stream(**ASK) as s:
                    texts = [t async for t in s.text_stream]
                    message = await s.get_final_message()
                assert len(texts) > 1  # streamed in pieces, not one block
            else:
                message = await client.messages.create(**ASK)
        (req,) = aws.requests
    assert len(direct.requests) == 1
    assert message.content[0].type == "text" and message.content[0].text == aws.text
    assert message.stop_reason == "end_turn"
    assert req.signed and req.model_id == BEDROCK_MODEL
    assert req.action == ("invoke-with-response-stream" if stream else "invoke")
    body = json.loads(req.body)
    assert body["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in body and "stream" not in body and "metadata" not in body
    assert body["system"] == "Be brief." and body["max_tokens"] == 100
    assert "x-api-key" not in req.headers and "anthropic-version" not in req.headers


async def test_bedrock_exception_in_stream_before_commit_is_a_failure() -> None:
    """A throttling exception as Bedrock's first frame: the client gets a clean error in
    Anthropic's format, not a half stream (the peek judged it before commit)."""
    async with (
        FakeUpstream(name="direct", default=faults.overloaded()) as direct,
        FakeBedrock({KEY: SECRET}) as aws,
        running(direct.url, aws.url) as (url, _),
    ):
        aws.script(b.exception_first("throttlingException"))
        async with anthropic.AsyncAnthropic(
            base_url=url, api_key="sk-client", max_retries=0
        ) as client:
            with pytest.raises(anthropic.APIStatusError) as caught:
                async with client.messages.stream(**ASK) as s:
                    await s.get_final_message()
    assert caught.value.status_code == 529  # the last upstream answer: direct's overload
    assert len(aws.requests) == 1


def test_frames_unwrap_into_anthropic_sse() -> None:
    from hydrallm.formats.eventstream import encode_message
    from hydrallm.formats.translate.bedrock import BedrockStream

    def frame(event: dict[str, object]) -> bytes:
        payload = json.dumps({"bytes": base64.b64encode(json.dumps(event).encode()).decode()})
        headers = {":event-type": "chunk", ":message-type": "event"}
        return encode_message(headers, payload.encode())

    wire = frame({"type": "message_start", "message": {}}) + frame({"type": "message_stop"})
    stream = BedrockStream()
    out = b"".join(stream.feed(wire[i : i + 7]) for i in range(0, len(wire), 7))
    assert out.count(b"event: ") == 2 and out.endswith(b'{"type":"message_stop"}\n\n')
    assert stream.finished and stream.error is None
