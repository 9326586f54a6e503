"""AWS Bedrock runtime: the model lives in the URL path, and requests are SigV4-signed.

Per attempt, the `{modelId}` segment of `/model/{modelId}/{action}` is replaced by the
attempt's model, percent-encoded as boto3 encodes it; the body is never touched (Bedrock
rejects a `model` key).  The client's own signature was made for the proxy's host, so it
is dropped and the request is signed again for the real host (see `aws.py`), or sent
with the endpoint's Bedrock API key as a bearer token.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from urllib.parse import quote, unquote

from hydrallm.config import AwsCredential, Config, EndpointConfig, ModelConfig
from hydrallm.errors import RequestNotPossible
from hydrallm.observe.events import Telemetry
from hydrallm.providers.aws import AwsAuth, is_signing_header, resolve_all
from hydrallm.providers.base import ClientRequest, ErrorBody, Outgoing, Provider
from hydrallm.providers.bedrock_limits import BEDROCK_LIMITS as BEDROCK_LIMITS
from hydrallm.providers.urls import join

ACTIONS = ("invoke", "invoke-with-response-stream", "converse", "converse-stream", "count-tokens")
_MODEL_PATH = re.compile(
    r"(?P<prefix>.*?/model/)(?P<model>.+)/(?P<action>" + "|".join(map(re.escape, ACTIONS)) + r")"
)

# x-amzn-ErrorType for proxy-made errors, by the engine's / server's error type, then status.
_ERROR_TYPES = {
    "authentication_error": "AccessDeniedException",
    "invalid_request_error": "ValidationException",
    "request_too_large": "ValidationException",
    "timeout_error": "ModelTimeoutException",
}
_STATUS_TYPES = {
    429: "ThrottlingException",
    500: "InternalServerException",
    502: "ServiceUnavailableException",
    503: "ServiceUnavailableException",
    504: "ModelTimeoutException",
}


def path_model(path: str) -> str | None:
    """The (decoded) model id a Bedrock runtime path names, or None."""
    match = _MODEL_PATH.fullmatch(path)
    return unquote(match.group("model")) if match else None


def with_model(path: str, model_id: str) -> str:
    """`path` naming `model_id` instead (boto3's encoding: all but `-._~`); other paths as is."""
    match = _MODEL_PATH.fullmatch(path)
    if match is None:
        return path
    encoded = quote(model_id, safe="")
    return f"{match.group('prefix')}{encoded}/{match.group('action')}"


class BedrockProvider(Provider):
    api_type = "bedrock"
    # Its streams are event-stream frames, which the splice does not speak.
    supports_recovery = False

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env
        self._auth: dict[str, AwsAuth] = {}
        # Key pools (`aws_profiles`, `aws_key_pairs`): one signer per member.
        self._pool_auth: dict[tuple[str, AwsCredential], AwsAuth] = {}

    def configure(self, config: Config, telemetry: Telemetry) -> None:
        """Resolve each bedrock endpoint's region and credentials; warn about the missing."""
        env = os.environ if self._env is None else self._env
        names = {m.endpoint for m in config.models.values() if m.type == "bedrock"}
        endpoints = [
            (config.endpoints[n], _bearer(config.endpoints[n]) is None) for n in sorted(names)
        ]
        self._auth = resolve_all(endpoints, env)
        members = [
            (ep.name, member, _as_member(ep, member))
            for ep, _ in endpoints
            for member in ep.aws_pool
        ]
        resolved = resolve_all(
            [(replace(one, name=f"{name}#{i}"), True) for i, (name, _, one) in enumerate(members)],
            env,
        )
        self._pool_auth = {
            (name, member): replace(resolved[f"{name}#{i}"], endpoint=name)
            for i, (name, member, _) in enumerate(members)
        }
        for name, auth in self._auth.items():
            if auth.problem is not None:
                telemetry.log.warn(
                    "bedrock_credentials",
                    endpoint=name,
                    problem=auth.problem,
                    effect="requests to this endpoint fail and its models are skipped",
                )

    def requested_model(self, request: ClientRequest) -> str | None:
        """The model the client asked for: Bedrock names it in the path."""
        return path_model(request.path)

    def effective_model(self, model: ModelConfig, request: ClientRequest) -> str | None:
        if model.model == "*":
            return path_model(request.path)
        return model.model

    async def prepare(
        self, model: ModelConfig, endpoint: EndpointConfig, request: ClientRequest
    ) -> Outgoing:
        name = self.effective_model(model, request)
        if name is None:
            raise RequestNotPossible('the request path names no model to forward for model "*"')
        auth = self._auth.get(endpoint.name)
        if len(endpoint.aws_pool) == 1:
            # The engine hands over the endpoint with the one pool member to sign with.
            auth = self._pool_auth.get((endpoint.name, endpoint.aws_pool[0]), auth)
        if auth is None:
            raise RequestNotPossible(f'bedrock endpoint "{endpoint.name}" was not configured')
        # An endpoint without a url is the region's public runtime endpoint.
        base = endpoint.url or f"https://bedrock-runtime.{auth.region}.amazonaws.com"
        path = with_model(request.path, name)
        url = join(base, path, request.query, strip_version_prefix=endpoint.strip_version_prefix)
        headers = [(k, v) for k, v in request.headers if not is_signing_header(k)]
        bearer = _bearer(endpoint)
        if bearer is not None:
            headers.append(("Authorization", f"Bearer {bearer}"))
        else:
            headers = await auth.sign(request.method, url, headers, request.body)
        return Outgoing(url, headers, request.body, name)

    def error_body(self, status: int, message: str, error_type: str) -> ErrorBody:
        name = _ERROR_TYPES.get(error_type) or _STATUS_TYPES.get(status)
        if name is None:
            name = "ValidationException" if 400 <= status < 500 else "InternalServerException"
        body = json.dumps({"message": message}).encode()
        return ErrorBody("application/json", body, (("x-amzn-ErrorType", name),))


def _as_member(endpoint: EndpointConfig, member: AwsCredential) -> EndpointConfig:
    """The endpoint as if `member` were its only credentials."""
    return replace(
        endpoint,
        aws_profile=member.profile,
        aws_access_key_id=member.access_key_id,
        aws_secret_access_key=member.secret_access_key,
        aws_session_token=member.session_token,
    )


def _bearer(endpoint: EndpointConfig) -> str | None:
    """The endpoint's Bedrock API key, when it has one (`-` means: sign, as without)."""
    key = endpoint.api_key
    return key if key is not None and key not in ("", "-") else None
