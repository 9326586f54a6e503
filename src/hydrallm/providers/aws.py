"""AWS credentials, region and SigV4 signing for Bedrock endpoints, all through botocore.

Imported only by `providers/bedrock.py`, which is itself imported only when a bedrock
endpoint is configured: botocore costs startup time that other users should not pay.
botocore is the reference implementation of both the credential chain (environment,
shared files, SSO, container and instance roles, with refresh) and the signature, so
neither is hand-rolled here.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError

from hydrallm.config import EndpointConfig
from hydrallm.dataclass import dataclass
from hydrallm.errors import RequestNotPossible

SERVICE = "bedrock"
DEFAULT_REGION = "us-east-1"
_HOST_REGION = re.compile(r"bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")


def region_from_host(url: str) -> str | None:
    """`us-west-2` for `https://bedrock-runtime.us-west-2.amazonaws.com`, else None."""
    host = urlsplit(url).hostname or ""
    match = _HOST_REGION.fullmatch(host)
    return match.group(1) if match else None


def is_signing_header(name: str) -> bool:
    """Headers that belong to a client's own signature (made for the proxy's host)."""
    lower = name.lower()
    return lower == "authorization" or lower.startswith("x-amz-")


@dataclass(frozen=True, slots=True)
class AwsAuth:
    """How one endpoint signs: its region and credentials, or why it cannot."""

    endpoint: str
    region: str
    credentials: Credentials | None
    source: str  # "static keys", 'profile "dev"', "the AWS credential chain"
    problem: str | None = None  # set when credentials is None

    async def sign(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> list[tuple[str, str]]:
        """The headers to send: `headers` plus the SigV4 date, token and Authorization."""
        if self.credentials is None:
            raise RequestNotPossible(
                f'bedrock endpoint "{self.endpoint}": {self.problem or "no AWS credentials"}'
            )
        frozen = await _frozen(self.credentials, self.endpoint, self.source)
        request = AWSRequest(method=method, url=url, data=body)
        for name, value in headers:
            request.headers[name] = value  # HTTPHeaders keeps repeated names
        SigV4Auth(frozen, SERVICE, self.region).add_auth(request)
        return [(str(k), str(v)) for k, v in request.headers.items()]


async def _frozen(credentials: Credentials, endpoint: str, source: str) -> Any:
    """A consistent (key, secret, token) snapshot; a refresh runs off the event loop."""
    try:
        if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
            return await asyncio.to_thread(credentials.get_frozen_credentials)
        return credentials.get_frozen_credentials()
    except (BotoCoreError, ClientError) as exc:
        raise RequestNotPossible(
            f'bedrock endpoint "{endpoint}": AWS credentials from {source} could not be'
            f" refreshed: {exc}"
        ) from exc


def resolve_all(
    endpoints: Iterable[tuple[EndpointConfig, bool]], env: Mapping[str, str]
) -> dict[str, AwsAuth]:
    """`resolve` for each (endpoint, signs), sharing one botocore session per profile."""
    sessions: dict[str | None, botocore.session.Session] = {}
    return {e.name: resolve(e, env, sessions, signs=signs) for e, signs in endpoints}


def resolve(
    endpoint: EndpointConfig,
    env: Mapping[str, str],
    sessions: dict[str | None, botocore.session.Session],
    *,
    signs: bool = True,
) -> AwsAuth:
    """Credentials and region of one endpoint.

    Credentials: the endpoint's static keys, else its `aws_profile`, else botocore's
    default chain.  Region: `aws_region`, else the endpoint host's, else AWS_REGION /
    AWS_DEFAULT_REGION, else the profile's, else us-east-1.  `sessions` caches one
    botocore session per profile for the duration of one configure pass.  With
    `signs=False` (a Bedrock API key endpoint) only the region is resolved.
    """
    name = endpoint.name
    static = endpoint.aws_access_key_id and endpoint.aws_secret_access_key
    profile = None if static else endpoint.aws_profile
    session: botocore.session.Session | None = None
    problem: str | None = None
    needs_chain = signs and not static
    if needs_chain or not (endpoint.aws_region or region_from_host(endpoint.url)):
        session = sessions.get(profile)
        if session is None:
            session = botocore.session.Session(profile=profile)
            sessions[profile] = session
    region = (
        endpoint.aws_region
        or region_from_host(endpoint.url)
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or _profile_region(session)
        or DEFAULT_REGION
    )
    credentials: Credentials | None = None
    if not signs:
        source = "a Bedrock API key"
    elif static:
        source = "static keys"
        credentials = Credentials(
            endpoint.aws_access_key_id, endpoint.aws_secret_access_key, endpoint.aws_session_token
        )
    else:
        assert session is not None
        source = f'profile "{profile}"' if profile else "the AWS credential chain"
        try:
            credentials = session.get_credentials()
        except (BotoCoreError, ClientError) as exc:
            credentials = None
            problem = f"no AWS credentials from {source}: {exc}"
        else:
            if credentials is None:
                problem = (
                    f"no AWS credentials found in {source} (set aws_access_key_id and"
                    " aws_secret_access_key, aws_profile, or AWS_* environment variables)"
                )
    return AwsAuth(name, region, credentials, source, problem)


def _profile_region(session: botocore.session.Session | None) -> str | None:
    if session is None:
        return None
    try:
        region = session.get_config_variable("region")
    except BotoCoreError:
        return None
    return region if isinstance(region, str) and region else None
