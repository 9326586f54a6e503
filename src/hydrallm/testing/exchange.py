"""One request as the fake upstream saw it, and the state of answering it."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from hydrallm.testing.answers import AnswerSpec, Api
from hydrallm.testing.faults import Fault

__all__ = ["Exchange", "RecordedRequest", "Sink"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it, with the fault it was given."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDict[str]
    body: bytes
    received_at: float  # time.monotonic()
    model: str | None  # the JSON body's `model`, if any
    stream: bool
    api: Api | None
    fault: Fault

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclass(slots=True)
class Exchange:
    """The state of one request while it is being answered."""

    request: web.Request
    api: Api | None
    payload: dict[str, Any]
    fault: Fault
    spec: AnswerSpec
    response: web.StreamResponse | None = None
    aborted_by_us: bool = False
    extra_headers: dict[str, str] = field(default_factory=dict)


class Sink:
    """Writes body bytes, gzip-compressing them per write when asked."""

    def __init__(self, response: web.StreamResponse, compress: bool) -> None:
        self._response = response
        self._zip = zlib.compressobj(wbits=31) if compress else None

    async def send(self, data: bytes) -> None:
        if self._zip is not None:
            # A sync flush per event keeps a compressed stream as live as a plain one.
            data = self._zip.compress(data) + self._zip.flush(zlib.Z_SYNC_FLUSH)
        await self._response.write(data)

    async def finish(self) -> None:
        if self._zip is not None:
            await self._response.write(self._zip.flush())
            self._zip = None
