"""The lifecycle every test server here shares: `start()`, `close()`, `async with`."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncService:
    """Base for servers used as `async with Server() as s:` (start on enter, close on exit)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
