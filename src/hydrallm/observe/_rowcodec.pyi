from collections import deque
from collections.abc import Callable
from typing import Any

CARRY: int

def encode(obj: Any, /) -> bytes: ...
def usage_slice(body: bytes, /) -> bytes | None: ...
def rows_message(rows: list[Any], /) -> bytes: ...

class Appender:
    plain: bool
    @property
    def batch(self) -> int: ...
    def __init__(
        self,
        queue: deque[Any],
        batch: int,
        full: Callable[[], None],
        slow: Callable[[tuple[Any, ...]], None],
    ) -> None: ...
    def __call__(self, row: tuple[Any, ...], /) -> None: ...
