"""Upstream error bodies, read in any family and written in the client's."""

from __future__ import annotations

import json
import math
import re

from hydrallm.dataclass import dataclass
from hydrallm.formats.frames import utf8
from hydrallm.formats.translate import anthropic, chat
from hydrallm.formats.translate.ir import dumps

_DURATION = re.compile(r"^(\d+(?:\.\d*)?)s$")


@dataclass(frozen=True, slots=True)
class UpstreamError:
    status: int
    message: str
    retry_after: float | None = None  # seconds, when the body states it (Gemini RetryInfo)


@dataclass(frozen=True, slots=True)
class ClientError:
    """An error answer in the client's API format."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    content_type: str = "application/json"


def retry_delay(details: object) -> float | None:
    """Seconds from a google.rpc.RetryInfo `retryDelay` ("22s", "45.837906927s")."""
    if not isinstance(details, list):
        return None
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def read_error(status: int, body: bytes) -> UpstreamError:
    """The message (and stated delay) of an error body in any of the three families."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return UpstreamError(status, text[:2000] or f"upstream answered {status}")
    if isinstance(data, list) and len(data) == 1:
        data = data[0]  # Gemini's array-wrapped errors
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or f"upstream answered {status}")
        return UpstreamError(status, message, retry_delay(error.get("details")))
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return UpstreamError(status, data["message"])
    return UpstreamError(status, f"upstream answered {status}")


def client_error(client: str, error: UpstreamError) -> ClientError:
    """`error` as the client's API writes it; a stated delay becomes Retry-After."""
    status = error.status
    if client == "anthropic":
        kind = anthropic.error_type(status)
        payload: object = {"type": "error", "error": {"type": kind, "message": error.message}}
    else:
        kind = chat.error_type(status)
        code = kind if status in (429,) or status >= 500 else None
        payload = {"error": {"message": error.message, "type": kind, "param": None, "code": code}}
    headers: tuple[tuple[str, str], ...] = ()
    if error.retry_after is not None:
        headers = (("Retry-After", str(max(math.ceil(error.retry_after), 0))),)
    return ClientError(status, headers, utf8(dumps(payload)))
