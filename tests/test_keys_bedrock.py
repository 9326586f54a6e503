"""A Bedrock key pool (`aws_key_pairs`) end to end with boto3: each member signs its own
requests, and a ServiceQuotaExceededException moves the pool to the next pair."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hydrallm.testing import CANONICAL_TEXT
from hydrallm.testing import bedrock as fakes
from hydrallm.testing.bedrock import FakeBedrock
from hydrallm.testing.harness import ProxyHarness
from test_bedrock import boto_client

K1, S1 = "AKIDPOOLFIRST0001", "first-pool-secret-value"
K2, S2 = "AKIDPOOLSECOND002", "second-pool-secret-value"
BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hi"}],
}


def config(url: str) -> str:
    return f"""
[retry]
max_cycles = 1
default_interval = "1ms"

[endpoints.aws]
url = "{url}"
aws_region = "us-east-1"
aws_key_pairs = [
  {{access_key_id = "$K1", secret_access_key = "$S1"}},
  {{access_key_id = "$K2", secret_access_key = "$S2"}},
]

[[models]]
endpoint = "aws"
type = "bedrock"
model = "anthropic.claude-pool"
"""


def invoke(url: str) -> dict[str, Any]:
    response = boto_client(url).invoke_model(modelId="x", body=json.dumps(BODY).encode())
    answer: dict[str, Any] = json.loads(response["body"].read())
    return answer


async def test_service_quota_moves_to_the_next_key_pair() -> None:
    env = {"K1": K1, "S1": S1, "K2": K2, "S2": S2}
    async with FakeBedrock({K1: S1, K2: S2}) as fake, ProxyHarness(config(fake.url), env=env) as px:
        fake.script(
            fakes.error(
                400,
                "ServiceQuotaExceededException",
                "Your request exceeds the service quota for your account.",
            )
        )
        for _ in range(2):
            answer = await asyncio.to_thread(invoke, px.url())
            assert answer["content"][0]["text"] == CANONICAL_TEXT
        assert [(r.access_key, r.auth) for r in fake.requests] == [
            (K1, "sigv4"),
            (K2, "sigv4"),
            (K2, "sigv4"),
        ]
        health = px.proxy.state.current.engine.keys
        assert health is not None
        keys = health.snapshot()["aws"]["keys"]
        assert [k["label"] for k in keys] == ["…0001", "…D002"]  # type: ignore[index]
        assert keys[0]["state"] == "exhausted"  # type: ignore[index]
        log = px.logs()
        assert S1 not in log and S2 not in log
