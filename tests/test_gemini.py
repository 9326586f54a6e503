"""The gemini provider (URL, key, errors) and the Gemini fake's conduct."""

from __future__ import annotations

import json

import aiohttp
import pytest

from hydrallm.config import EndpointConfig, ModelConfig
from hydrallm.errors import RequestNotPossible
from hydrallm.formats.body import parse_body
from hydrallm.providers import provider_for
from hydrallm.providers.base import ClientRequest
from hydrallm.providers.gemini import GeminiProvider, path_model, retry_after
from hydrallm.testing import gemini as g
from hydrallm.testing.gemini import FakeGemini

BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def client_request(
    path: str = "/v1/messages", streaming: bool = False, query: str = ""
) -> ClientRequest:
    raw = json.dumps({"model": "claude-x", **BODY}).encode()
    headers = (
        ("Authorization", "Bearer client"),
        ("x-api-key", "client"),
        ("Content-Type", "application/json"),
    )
    return ClientRequest("POST", path, query, headers, raw, parse_body(raw), streaming)


def endpoint(key: str | None = "gkey", url: str = "") -> EndpointConfig:
    return EndpointConfig(name="google", url=url, api_key=key)


async def test_prepare_puts_the_model_in_the_path_and_the_key_in_its_header() -> None:
    provider = provider_for("gemini")
    assert isinstance(provider, GeminiProvider)
    model = ModelConfig(id="g", endpoint="google", type="gemini", model="gemini-2.5-flash")
    out = await provider.prepare(
        model, endpoint(), client_request(streaming=True, query="beta=true")
    )
    assert out.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    names = {k.lower(): v for k, v in out.headers}
    assert names["x-goog-api-key"] == "gkey"
    assert "authorization" not in names and "x-api-key" not in names  # the proxy's, not Google's
    out = await provider.prepare(model, endpoint(url="http://127.0.0.1:9"), client_request())
    assert out.url == "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:generateContent"
    assert out.model_label == "gemini-2.5-flash"
    keyed = endpoint(key=None, url="https://generativelanguage.googleapis.com?key=AIzaSecret")
    out = await provider.prepare(model, keyed, client_request(streaming=True))
    assert out.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
        ":streamGenerateContent?key=AIzaSecret&alt=sse"
    )


async def test_star_forwards_the_requested_model_and_dash_strips_credentials() -> None:
    provider = GeminiProvider()
    star = ModelConfig(id="g", endpoint="google", type="gemini", model="*")
    out = await provider.prepare(star, endpoint(key="-"), client_request())
    assert "/models/claude-x:generateContent" in out.url
    assert not any(
        k.lower() in ("x-goog-api-key", "authorization", "x-api-key") for k, _ in out.headers
    )
    native = client_request(path="/v1beta/models/gemini-pro:generateContent")
    assert provider.requested_model(native) == "gemini-pro"
    raw = b"{}"
    empty = ClientRequest("POST", "/v1/messages", "", (), raw, parse_body(raw), False)
    with pytest.raises(RequestNotPossible):
        await provider.prepare(star, endpoint(), empty)


def test_error_body_and_retry_delay() -> None:
    body = json.loads(GeminiProvider().error_body(429, "slow down", "rate_limit_error").body)
    assert body == {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}
    assert retry_after(json.dumps(g.rate_limited("45.837906927s").body).encode()) == pytest.approx(
        45.837906927
    )
    assert (
        retry_after(json.dumps(g.quota_exhausted().body).encode()) is None
    )  # a daily quota: no delay
    assert retry_after(b"not json") is None
    assert path_model("/v1beta/models/a%2Fb:streamGenerateContent") == "a/b"


async def post(
    url: str, body: object, headers: dict[str, str], query: str = ""
) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + query, json=body, headers=headers) as r,
    ):
        return r.status, r.headers.get("Content-Type", ""), await r.read()


async def test_the_fake_refuses_like_gemini() -> None:
    async with FakeGemini(key="k") as fake:
        url = fake.url + "/v1beta/models/m:generateContent"
        status, _, raw = await post(url, BODY, {})
        assert status == 403 and json.loads(raw)["error"]["status"] == "PERMISSION_DENIED"
        status, _, raw = await post(url, BODY, {"x-goog-api-key": "wrong"})
        error = json.loads(raw)["error"]
        assert (status, error["details"][0]["reason"]) == (400, "API_KEY_INVALID")
        status, _, raw = await post(
            url, {"model": "m", "messages": [], **BODY}, {"x-goog-api-key": "k"}
        )
        assert status == 400
        assert 'Unknown name "model"' in json.loads(raw)["error"]["message"]
        unanswered = {
            "contents": [
                {"role": "user", "parts": [{"text": "hi"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                {"role": "user", "parts": [{"text": "and?"}]},
            ]
        }
        status, _, raw = await post(url, unanswered, {"x-goog-api-key": "k"})
        assert status == 400 and "function response parts" in json.loads(raw)["error"]["message"]
        assert len(fake.problems) == 4


PREFILLED = {
    "contents": [
        {"role": "user", "parts": [{"text": "Say hello."}]},
        {"role": "model", "parts": [{"text": "Hello from"}]},
    ]
}
UNLESS = (
    "Requests ending with a model turn are not supported unless the last part is a "
    "function response."
)
SHORT = "Requests ending with a model turn are not supported."


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("gemini-3.6-flash", UNLESS),
        ("gemini-3.5-flash-lite", UNLESS),
        ("gemini-3.7-flash", SHORT),
        ("gemini-3.8-flash", SHORT),
        ("gemini-2.5-flash", None),
        ("gemini-3.5-flash", None),
        ("gemini-3.1-flash-lite", None),
    ],
)
async def test_the_fake_continues_or_refuses_a_trailing_model_turn_as_each_version(
    model: str, message: str | None
) -> None:
    """Gemini's own 400 for a prefill on the versions that refuse one (3.6 Flash and
    3.5 Flash-Lite with the "unless" clause, 3.7 and 3.8 Flash without); the others go on
    from the model's turn, which their answer leaves out."""
    async with FakeGemini(key="k") as fake:
        url = fake.url + f"/v1beta/models/{model}:generateContent"
        status, _, raw = await post(url, PREFILLED, {"x-goog-api-key": "k"})
        assert fake.prefills == ["Hello from"]
        if message is None:
            assert status == 200
            [part] = json.loads(raw)["candidates"][0]["content"]["parts"]
            assert part == {"text": " the fake Gemini."}
        else:
            assert (status, json.loads(raw)) == (
                400,
                {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}},
            )


async def test_the_fake_answers_json_sse_and_array_streams() -> None:
    async with FakeGemini(key="k") as fake:
        base = fake.url + "/v1beta/models/m:"
        key = {"x-goog-api-key": "k"}
        status, _, raw = await post(base + "generateContent", BODY, key)
        whole = json.loads(raw)
        assert status == 200
        assert whole["candidates"][0]["content"]["parts"] == [
            {"text": "Hello from the fake Gemini."}
        ]
        assert whole["candidates"][0]["finishReason"] == "STOP"
        status, ctype, raw = await post(base + "streamGenerateContent", BODY, key, "?alt=sse")
        assert ctype.startswith("text/event-stream")
        events = [
            json.loads(line[6:]) for line in raw.decode().split("\r\n") if line.startswith("data: ")
        ]
        assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == (
            "Hello from the fake Gemini."
        )
        assert "finishReason" in events[-1]["candidates"][0] and b"[DONE]" not in raw
        status, ctype, raw = await post(base + "streamGenerateContent", BODY, key)
        assert ctype.startswith("application/json")
        assert len(json.loads(raw)) == len(events)  # without alt=sse: one JSON array


async def test_the_fakes_bad_days() -> None:
    async with FakeGemini(key="k") as fake:
        url = fake.url + "/v1beta/models/m:generateContent"
        key = {"x-goog-api-key": "k"}
        fake.script(g.rate_limited("22s"), g.unavailable(), g.internal())
        status, _, raw = await post(url, BODY, key)
        error = json.loads(raw)["error"]
        assert (status, error["status"]) == (429, "RESOURCE_EXHAUSTED")
        assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "22s"} in error[
            "details"
        ]
        status, _, raw = await post(url, BODY, key)
        assert (status, json.loads(raw)["error"]["status"]) == (503, "UNAVAILABLE")
        status, _, raw = await post(url, BODY, key)
        assert (status, json.loads(raw)["error"]["status"]) == (500, "INTERNAL")
        assert [r.model for r in fake.requests] == ["m", "m", "m"]
