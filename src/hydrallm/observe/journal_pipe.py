"""The proxy's side of the journal's writer process: starting it, telling it what to do
through a non-blocking pipe, reading its replies, stopping it (see `journal.py` for why a
process, `journal_writer.py` for the messages).  Requests do not go through the pipe: they
are spooled to files (`journal_spool.py`); the pipe carries a few small messages a second.

On the event loop nothing here blocks: a message the pipe cannot take whole stays as the
one partly written message, and the loop writes the rest when the pipe is writable again.
Closing (off the loop) blocks, bounded by `CLOSE_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydrallm
from hydrallm.observe.journal_spool import frame, unframe

if TYPE_CHECKING:
    import subprocess

__all__ = ["WriterProcess"]

CLOSE_TIMEOUT_S = 2.0  # then the writer is killed: it only ever leaves a transaction undone
PIPE_SIZE = 1 << 20
# Imports the writer from the same place as the proxy's own hydrallm, whatever sys.path the
# proxy was given (a test runner's, PYTHONPATH), without putting that place before the
# standard library for anything else.
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); import hydrallm; del sys.path[0]; "
    "from hydrallm.observe.journal_writer import main; main()"
)


class WriterProcess:
    """The writer process and the proxy's ends of its two pipes."""

    def __init__(
        self, replied: Callable[[tuple[Any, ...]], None], failed: Callable[[str], None]
    ) -> None:
        self._replied = replied  # "written", "idle"
        self._failed = failed
        self._control: deque[tuple[Any, ...]] = deque()
        self._partial: memoryview | None = None  # the rest of a message the pipe took part of
        self._process: subprocess.Popen[bytes] | None = None
        self._wfd = self._rfd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting = False  # for the loop to say the pipe is writable
        self._replies = bytearray()
        self._finished = False
        self.spawned = False

    def send(self, message: tuple[Any, ...]) -> None:
        self._control.append(message)
        if self.spawned:
            self.pump()

    def spawn(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Start the writer; with a loop, replies are read and writes resumed on it."""
        import subprocess

        self.spawned = True
        src = str(Path(hydrallm.__file__).resolve().parent.parent)
        to_child, self._wfd = os.pipe()
        self._rfd, from_child = os.pipe()
        try:
            # Only the two pipes go to the child (the proxy's own fds are close-on-exec and
            # close_fds closes anything else); stderr is dropped: it reports in messages.
            self._process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, src],
                stdin=to_child,
                stdout=from_child,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            self._fail(f"cannot start the journal writer: {exc}")
            return
        finally:
            os.close(to_child)
            os.close(from_child)
        os.set_blocking(self._wfd, False)
        os.set_blocking(self._rfd, False)
        try:
            import fcntl

            # A second of requests in the pipe before the deque has to hold them (Linux).
            fcntl.fcntl(self._wfd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
        except (ImportError, OSError):
            pass
        self._loop = loop
        if loop is not None:
            loop.add_reader(self._rfd, self._on_replies)
        self.pump()

    # --- on the event loop (or a test's thread without one) ---------------------------

    def pump(self) -> None:
        """Write what is waiting, as far as the pipe takes it without blocking."""
        if self._wfd < 0 or self._waiting:
            return
        while True:
            partial = self._partial
            if partial is None:
                if not self._control:
                    return
                partial = memoryview(frame(self._control.popleft()))
            try:
                n = os.write(self._wfd, partial)
            except BlockingIOError:
                n = 0
            except OSError:
                self._partial = None
                self._ended()
                return
            if n == len(partial):
                self._partial = None
                continue
            self._partial = partial[n:]
            if self._loop is not None:
                self._waiting = True
                self._loop.add_writer(self._wfd, self._on_writable)
            return

    def _on_writable(self) -> None:
        if self._loop is not None and self._wfd >= 0:
            self._loop.remove_writer(self._wfd)
        self._waiting = False
        self.pump()

    def _on_replies(self) -> None:
        try:
            data = os.read(self._rfd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._ended()
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        self._replies += data
        for message in unframe(self._replies):
            if message[0] == "failed":
                self._fail(message[1])
                return
            if message[0] == "finished":
                self._finished = True
            else:
                self._replied(message)

    def _ended(self) -> None:
        """The writer closed its end: read what it said last; unless it said it failed
        or finished, it died."""
        while self._rfd >= 0:
            try:
                data = os.read(self._rfd, 65536)
            except OSError:
                break
            if not data:
                break
            self._take(data)
        if self._rfd >= 0 and not self._finished:
            code = None if self._process is None else self._process.poll()
            self._fail(f"the journal writer process ended (exit code {code})")

    def _fail(self, error: str) -> None:
        self._release()
        if self._process is not None and self._process.poll() is None:
            self._process.kill()  # reaped by stop()
        self._failed(error)

    def detach(self) -> None:
        """Stop using the event loop (before `finish` runs in a thread)."""
        loop, self._loop = self._loop, None
        if loop is not None:
            if self._rfd >= 0:
                loop.remove_reader(self._rfd)
            if self._wfd >= 0:
                loop.remove_writer(self._wfd)
        self._waiting = False

    def _release(self) -> None:
        self.detach()
        for fd in (self._wfd, self._rfd):
            if fd >= 0:
                os.close(fd)
        self._wfd = self._rfd = -1
        self._control.clear()
        self._partial = None

    # --- closing (blocking, bounded; off the event loop) --------------------------------

    def finish(self) -> bool:
        """Send what is waiting, tell the writer to finish, wait for it (bounded); False
        if no writer was started."""
        self.detach()
        if not self.spawned or self._wfd < 0:
            return False
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        self.send(("finish",))
        self.pump()
        while self._wfd >= 0 and (self._partial or self._control):
            if not self._wait(deadline):
                break
            self.pump()
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1
        while self._rfd >= 0 and not self._finished and self._wait(deadline, read=True):
            self._on_replies()
        self.stop(max(0.0, deadline - time.monotonic()))
        return True

    def _wait(self, deadline: float, *, read: bool = False) -> bool:
        """Until the pipe can be written (or, `read`, a reply read); False at the deadline.
        Replies are read meanwhile: the writer must never block on a full reply pipe."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        # A selector, not select(): a busy proxy's descriptors go past select's 1024.
        with selectors.DefaultSelector() as sel:
            if self._rfd >= 0:
                sel.register(self._rfd, selectors.EVENT_READ)
            if not read and self._wfd >= 0:
                sel.register(self._wfd, selectors.EVENT_WRITE)
            ready = [key.fd for key, _ in sel.select(left)]
        if self._rfd in ready and not read:
            self._on_replies()
        return bool(ready)

    def stop(self, timeout: float = 0.0) -> None:
        """End the process (killed when it is not done within `timeout`) and the pipes."""
        import subprocess

        self._release()
        process, self._process = self._process, None
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
