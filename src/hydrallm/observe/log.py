"""Route aiohttp's standard-library log records to hydrallm's `Logger`, one line each.

The client-facing server is hydrallm's own (proxy/h1server.py logs a malformed request as
one `client_error` line itself); aiohttp remains as the upstream client, whose records
still come here.  aiohttp's server reported a malformed client request (conflicting `Content-Length` and
`Transfer-Encoding`, a broken request line...) with `logger.exception(...)`: a full
traceback in the operator's log for what is the client's mistake, already answered with
400.  The bridge turns every `aiohttp.*` record into one key=value line without a
traceback: client protocol errors as `client_error peer=... problem="..."` (warn), anything
else at the record's own level.

    bridge_aiohttp_logging(logger)   # once per process; a later call retargets the bridge
"""

from __future__ import annotations

import logging
import sys

from hydrallm.observe.events import Logger

__all__ = ["bridge_aiohttp_logging", "unbridge_aiohttp_logging"]

_ROOT = "aiohttp"
_CLIENT_ERROR_MESSAGE = "Error handling request from %s"


def _level_name(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warn"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


class _Bridge(logging.Handler):
    """A stdlib handler that writes to a hydrallm `Logger`."""

    def __init__(self, target: Logger) -> None:
        super().__init__(logging.DEBUG)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit(record)
        except Exception:
            # Logging must never take the proxy down, nor print a traceback of its own.
            pass

    def _emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        peer: str | None = None
        if record.msg == _CLIENT_ERROR_MESSAGE and isinstance(record.args, tuple) and record.args:
            peer = str(record.args[0])
        # Looked up, not imported: `hydrallm serve` need not load aiohttp for this, and a
        # record cannot carry aiohttp's exception unless aiohttp is loaded.
        errors = sys.modules.get("aiohttp.http_exceptions")
        processing = getattr(errors, "HttpProcessingError", None)
        if processing is not None and isinstance(exc, processing):
            # The client sent something that is not acceptable HTTP; it got a 4xx.
            message = getattr(exc, "message", None)
            problem = message if isinstance(message, str) and message else str(exc)
            level = "debug" if record.levelno < logging.WARNING else "warn"
            self.target.log(
                level,
                "client_error",
                peer=peer or "-",
                problem=_one_line(problem),
                status=getattr(exc, "code", 400),
            )
            return
        fields: dict[str, object] = {
            "source": record.name,
            "message": _one_line(record.getMessage()),
        }
        if exc is not None:
            fields["problem"] = _one_line(f"{type(exc).__name__}: {exc}")
        self.target.log(_level_name(record.levelno), "aiohttp", **fields)


def bridge_aiohttp_logging(logger: Logger) -> None:
    """Send every `aiohttp.*` log record to `logger` as one line, never a traceback.

    Idempotent per process: the bridge is installed once on the `aiohttp` logger (which
    then stops propagating to the root logger); a later call only changes its target.
    """
    root = logging.getLogger(_ROOT)
    # Records are filtered by our Logger's own threshold; this only saves building them.
    root.setLevel(logging.DEBUG if logger.enabled("debug") else logging.INFO)
    root.propagate = False
    for handler in root.handlers:
        if isinstance(handler, _Bridge):
            handler.target = logger
            return
    root.addHandler(_Bridge(logger))


def unbridge_aiohttp_logging() -> None:
    """Remove the bridge (tests; an embedding application that wants its own handlers)."""
    root = logging.getLogger(_ROOT)
    for handler in list(root.handlers):
        if isinstance(handler, _Bridge):
            root.removeHandler(handler)
    root.propagate = True
    root.setLevel(logging.NOTSET)
