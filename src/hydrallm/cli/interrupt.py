"""Ctrl-C for the commands that run until it (`status --watch`, `log --follow`)."""

from __future__ import annotations

import signal

__all__ = ["ctrl_c_stops"]


def ctrl_c_stops() -> None:
    """Make SIGINT raise KeyboardInterrupt here, whatever this process inherited.

    A command started as a background job of a non-interactive shell (`cmd &` in a script,
    a CI runner, a test runner started that way) inherits SIGINT ignored, and Python keeps
    an inherited SIG_IGN; a parent may also hand down SIGINT blocked.  A command whose only
    way to end is Ctrl-C or `kill -INT` would then refresh forever.  `serve` and `demo`
    already take SIGINT on their event loop whatever the disposition; this does the same
    for the synchronous loops.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "pthread_sigmask"):  # not on Windows
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
