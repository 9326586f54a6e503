"""`FakeBedrock`: a Bedrock runtime on loopback that checks every SigV4 signature.

    async with FakeBedrock({"AKIDEXAMPLE": "secret"}) as fake:
        fake.script(bedrock.throttled(), bedrock.exception_first())
        ...  # point the proxy's bedrock endpoint at fake.url

Each request's signature is recomputed with botocore from the request as received and the
known credentials; a mismatch, an unknown key, a wrong region or service, or a missing
session token is answered 403, as AWS does.  A `Bearer` token from `bearer_tokens` is
accepted instead.  Paths `/model/{modelId}/{action}` are answered for `invoke`
(Anthropic-on-Bedrock JSON), `converse`, `invoke-with-response-stream` (`chunk` events
whose `bytes` are base64 Anthropic stream events), `converse-stream` and `count-tokens`.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from hydrallm.formats.eventstream import encode_message
from hydrallm.testing.answers import CANONICAL_TEXT, AnswerSpec, Api, json_answer, split_text
from hydrallm.testing.answers import stream_answer as _stream_answer
from hydrallm.testing.prefill_rules import assistant_prefill, default_behaviour, refusal
from hydrallm.testing.service import WebFake

__all__ = [
    "BedrockFault",
    "BedrockRequest",
    "FakeBedrock",
    "corrupt_frame",
    "error",
    "exception_first",
    "ok",
    "throttled",
    "unavailable",
]

EVENTSTREAM = "application/vnd.amazon.eventstream"
_PATH = re.compile(
    r"/model/(?P<model>.+)/"
    r"(?P<action>invoke|invoke-with-response-stream|converse|converse-stream|count-tokens)"
)
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?Signature=(?P<sig>[0-9a-f]+)"
)


@dataclass(frozen=True, slots=True)
class BedrockFault:
    """How to answer one request; the default answers normally."""

    kind: str = "ok"
    status: int = 200
    error_type: str | None = None  # x-amzn-ErrorType of an error answer
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    exception_first: str | None = None  # stream: this exception frame is the first event
    corrupt_first: bool = False  # stream: the first frame's message CRC is wrong


def ok() -> BedrockFault:
    return BedrockFault()


def error(
    status: int, error_type: str, message: str = "", headers: Mapping[str, str] | None = None
) -> BedrockFault:
    """An error answer: `{"message": ...}` with `x-amzn-ErrorType`."""
    return BedrockFault(
        kind=f"status_{status}",
        status=status,
        error_type=error_type,
        message=message or f"{error_type} from the fake",
        headers=tuple((headers or {}).items()),
    )


def throttled(retry_after_ms: int | None = None) -> BedrockFault:
    headers = {"x-amz-retry-after": str(retry_after_ms)} if retry_after_ms is not None else None
    return error(429, "ThrottlingException", "Too many requests, please wait.", headers)


def unavailable() -> BedrockFault:
    return error(503, "ServiceUnavailableException", "Bedrock is unable to process your request.")


def exception_first(exception_type: str = "throttlingException") -> BedrockFault:
    """A 200 stream whose first event is an exception frame."""
    return BedrockFault(kind="exception_first", exception_first=exception_type)


def corrupt_frame() -> BedrockFault:
    """A 200 stream whose first frame fails its message CRC."""
    return BedrockFault(kind="corrupt_frame", corrupt_first=True)


@dataclass(frozen=True, slots=True)
class BedrockRequest:
    """One request as the fake received it."""

    method: str
    raw_path: str  # as sent, still percent-encoded
    model_id: str | None  # decoded from the path
    action: str | None
    headers: CIMultiDict[str]
    body: bytes
    auth: str  # "sigv4", "bearer", or why it was refused
    access_key: str | None
    fault: BedrockFault

    @property
    def signed(self) -> bool:
        return self.auth in ("sigv4", "bearer")

    def json(self) -> Any:
        return json.loads(self.body)


class FakeBedrock(WebFake):
    """An aiohttp Bedrock runtime on 127.0.0.1:<random port>."""

    # Its handlers never wait (no hang or stall fault), so one runs to its end as it always did.
    _cancel_on_disconnect = False

    def __init__(
        self,
        credentials: Mapping[str, str] | None = None,
        *,
        tokens: Mapping[str, str] | None = None,
        bearer_tokens: tuple[str, ...] = (),
        region: str = "us-east-1",
        text: str = CANONICAL_TEXT,
    ) -> None:
        """`credentials` maps access key id to secret; `tokens` access key id to the
        session token it must come with."""
        self.credentials = dict(credentials or {})
        self.tokens = dict(tokens or {})
        self.bearer_tokens = bearer_tokens
        self.region = region
        self.text = text
        self.requests: list[BedrockRequest] = []
        self.prefills: list[str] = []  # the assistant prefills received, in order
        self._script: list[BedrockFault] = []

    def script(self, *faults: BedrockFault) -> None:
        """The next requests get these answers, in order; then normal answers."""
        self._script.extend(faults)

    @property
    def models(self) -> list[str | None]:
        """The model id of each request received, in order."""
        return [r.model_id for r in self.requests]

    # --- answering ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        raw_path = request.raw_path.partition("?")[0]
        match = _PATH.fullmatch(raw_path)
        model = unquote(match.group("model")) if match else None
        action = match.group("action") if match else None
        auth, key = self._check_auth(request, raw_path, body)
        fault = self._script.pop(0) if auth in ("sigv4", "bearer") and self._script else ok()
        self.requests.append(
            BedrockRequest(
                request.method,
                request.raw_path,
                model,
                action,
                CIMultiDict(request.headers),
                body,
                auth,
                key,
                fault,
            )
        )
        if auth not in ("sigv4", "bearer"):
            name = (
                "UnrecognizedClientException" if "unknown" in auth else "InvalidSignatureException"
            )
            return _error(403, name, auth)
        if match is None or action is None or model is None:
            return _error(404, "UnknownOperationException", f"no operation at {raw_path}")
        if fault.status >= 400:
            return _error(
                fault.status,
                fault.error_type or "InternalServerException",
                fault.message,
                fault.headers,
            )
        text = self.text
        prefix = assistant_prefill(Api.MESSAGES, body) if action.startswith("invoke") else None
        if prefix is not None:
            # Claude on Bedrock treats a prefill as Claude does: 4.6+ refuse it (400, a
            # ValidationException), earlier ones continue it unless thinking is on.
            self.prefills.append(prefix)
            payload = json.loads(body)
            refused = refusal(default_behaviour(Api.MESSAGES, model, payload), None, payload)
            if refused is not None:
                message = json.loads(refused.body or b"{}")["error"]["message"]
                return _error(400, "ValidationException", message)
            text = text[len(prefix) :]
        spec = AnswerSpec(model=model, answer_id="bedrock0001", text=text)
        if action == "invoke":
            return _json(json_answer(Api.MESSAGES, spec))
        if action == "converse":
            return _json(_converse(spec))
        if action == "count-tokens":
            return _json({"inputTokens": max(1, len(body) // 4)})
        frames = (
            _invoke_frames(spec)
            if action == "invoke-with-response-stream"
            else _converse_frames(spec)
        )
        if fault.exception_first is not None:
            frames = [_exception(fault.exception_first), *frames]
        if fault.corrupt_first:
            first = bytearray(frames[0])
            first[-5] ^= 0xFF  # last payload byte: the message CRC no longer matches
            frames[0] = bytes(first)
        response = web.StreamResponse(headers={"Content-Type": EVENTSTREAM})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
        return response

    def _check_auth(
        self, request: web.Request, raw_path: str, body: bytes
    ) -> tuple[str, str | None]:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            token = header[7:]
            ok = any(hmac.compare_digest(token, t) for t in self.bearer_tokens)
            return ("bearer" if ok else "unknown bearer token"), None
        match = _AUTH.fullmatch(header)
        if match is None:
            return "missing or malformed SigV4 Authorization header", None
        key = match.group("key")
        secret = self.credentials.get(key)
        if secret is None:
            return f"unknown access key {key}", key
        if match.group("region") != self.region or match.group("service") != "bedrock":
            return f"signed for {match.group('region')}/{match.group('service')}", key
        session_token = self.tokens.get(key)
        if (
            session_token is not None
            and request.headers.get("X-Amz-Security-Token") != session_token
        ):
            return "missing or wrong session token", key
        signed = match.group("signed").split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return "host and x-amz-date must be signed", key
        amz_date = request.headers.get("X-Amz-Date", "")
        if amz_date[:8] != match.group("date"):
            return "x-amz-date does not match the credential scope", key
        rebuilt = AWSRequest(
            method=request.method, url=f"http://{request.host}{raw_path}", data=body
        )
        for name in signed:
            for value in request.headers.getall(name, []):
                rebuilt.headers[name] = value
        rebuilt.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(key, secret, session_token), "bedrock", self.region)
        canonical = signer.canonical_request(rebuilt)
        expected = signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt)
        if not hmac.compare_digest(expected, match.group("sig")):
            return "the request signature does not match", key
        return "sigv4", key


def _json(payload: Mapping[str, Any]) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "x-amzn-RequestId": "fake-request-id"},
    )


def _error(
    status: int, error_type: str, message: str, extra: tuple[tuple[str, str], ...] = ()
) -> web.Response:
    headers = {
        "Content-Type": "application/json",
        "x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        **dict(extra),
    }
    return web.Response(
        status=status, body=json.dumps({"message": message}).encode(), headers=headers
    )


def _event(event_type: str, payload: Mapping[str, Any]) -> bytes:
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, json.dumps(payload).encode())


def _exception(exception_type: str) -> bytes:
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(
        headers, json.dumps({"message": f"{exception_type} from the fake"}).encode()
    )


def _invoke_frames(spec: AnswerSpec) -> list[bytes]:
    """Anthropic stream events, each base64-wrapped in a `chunk` event, as Bedrock sends."""
    frames = []
    for sse in _stream_answer(Api.MESSAGES, spec).events():
        data = next(line[6:] for line in sse.decode().split("\n") if line.startswith("data: "))
        frames.append(_event("chunk", {"bytes": base64.b64encode(data.encode()).decode()}))
    return frames


def _usage(spec: AnswerSpec) -> dict[str, int]:
    output = len(split_text(spec.text))
    return {
        "inputTokens": spec.input_tokens,
        "outputTokens": output,
        "totalTokens": spec.input_tokens + output,
    }


def _converse(spec: AnswerSpec) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": spec.text}]}},
        "stopReason": "end_turn",
        "usage": _usage(spec),
        "metrics": {"latencyMs": 1},
    }


def _converse_frames(spec: AnswerSpec) -> list[bytes]:
    frames = [_event("messageStart", {"role": "assistant"})]
    for piece in split_text(spec.text):
        frames.append(
            _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
        )
    frames.append(_event("contentBlockStop", {"contentBlockIndex": 0}))
    frames.append(_event("messageStop", {"stopReason": "end_turn"}))
    frames.append(_event("metadata", {"usage": _usage(spec), "metrics": {"latencyMs": 1}}))
    return frames
