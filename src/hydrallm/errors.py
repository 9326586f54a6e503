"""The exception tree of hydrallm.

    HydraError                      base of everything this package raises on purpose
    ├── ConfigError                 the config file is missing, unreadable or invalid (exit 1)
    ├── StartupError                the server could not start: port in use, bind refused (exit 1)
    └── UpstreamError               one attempt at an upstream failed without a usable response
        ├── ConnectError            refused, DNS failure, TLS failure: nothing was sent
        ├── UpstreamTimeout         no response, no first token, or a stall, within the limit
        ├── ProtocolError           reset or malformed bytes after the connection was made
        ├── StreamFailure           a 2xx stream whose first event is an error (overload, ...)
        └── RequestNotPossible      the attempt cannot be made at all (no AWS credentials, ...)

aiohttp's and the OS's exceptions are translated into these once, in `upstream.py`;
nothing above that module sees a foreign exception type.
"""

from __future__ import annotations


class HydraError(Exception):
    """Base class of every error hydrallm raises on purpose."""

    exit_code = 1


class ConfigError(HydraError):
    """The configuration cannot be used.  `problems` lists every issue found."""

    def __init__(
        self,
        problems: list[str],
        path: str | None = None,
        *,
        heading: str = "config validation failed",
    ) -> None:
        self.problems = list(problems)
        self.path = path
        self.heading = heading
        super().__init__(self.render())

    def render(self) -> str:
        # The first line keeps the original tool's wording ("config validation failed: ...");
        # the file it came from follows on its own line.
        where = f"\n  in {self.path}" if self.path and self.path not in self.problems[0] else ""
        if len(self.problems) == 1:
            return f"{self.heading}: {self.problems[0]}{where}"
        lines = [f"{self.heading}: {len(self.problems)} problems{where}"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class StartupError(HydraError):
    """The server could not start (for example: the port is already in use)."""


class UpstreamError(HydraError):
    """One attempt failed without a response that could be returned to the client.

    `kind` is a short, bounded label used in logs and metrics.
    """

    kind = "error"
    retryable = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectError(UpstreamError):
    kind = "connect_error"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"

    def __init__(self, message: str, *, phase: str = "response") -> None:
        super().__init__(message)
        # "response" (no headers in time), "first_token", "body", "idle"
        self.phase = phase


class ProtocolError(UpstreamError):
    kind = "protocol_error"


class StreamFailure(UpstreamError):
    """A 2xx stream that reported an error (or ended) before its first meaningful event."""

    kind = "stream_error"


class RequestNotPossible(UpstreamError):
    """This model cannot be asked at all (e.g. no AWS credentials); skip it for the request."""

    kind = "not_possible"
    retryable = False
