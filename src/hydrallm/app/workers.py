"""Several worker processes sharing each listener (`--workers N` / `server.workers`).

The parent forks N workers before it creates any event loop.  Where the kernel balances
connections over SO_REUSEPORT sockets (Linux), every worker binds each listener itself
with that option, so reloads can add and move listeners in every worker.  Elsewhere (macOS
and the BSDs, where SO_REUSEPORT does not balance) the parent binds each listener once and
the workers accept on the inherited sockets; address changes then need a restart.

The parent only supervises: SIGTERM, SIGINT and SIGHUP are forwarded to every worker;
it returns once all have exited.  If a worker exits on its own (a bind failure at
startup, a crash), the others are stopped too and the exit status is 1.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

from hydrallm.app.lifecycle import bind_message
from hydrallm.app.workershare import Hub
from hydrallm.config import Config
from hydrallm.errors import StartupError

# A worker's body: (worker index, pre-bound sockets by listener name or None) -> exit code.
WorkerMain = Callable[[int, dict[str, socket.socket] | None], int]

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def balanced_reuse_port() -> bool:
    """True where SO_REUSEPORT spreads connections over the sockets bound with it."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def can_fork() -> bool:
    return hasattr(os, "fork")


def bind_shared(config: Config) -> dict[str, socket.socket]:
    """Bind and listen on each listener once, in the parent, for workers to inherit."""
    out: dict[str, socket.socket] = {}
    try:
        for lc in config.listeners:
            family = socket.AF_INET6 if ":" in lc.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((lc.host, lc.port))
            except OSError as exc:
                sock.close()
                raise StartupError(bind_message(lc, exc)) from exc
            sock.listen(1024)
            sock.set_inheritable(True)
            out[lc.name] = sock
    except (OSError, StartupError):
        for sock in out.values():
            sock.close()
        raise
    return out


class Supervisor:
    """Forks the workers, forwards signals to them and waits for them."""

    def __init__(
        self,
        count: int,
        worker_main: WorkerMain,
        *,
        log: Callable[[str], None],
        hub: Hub | None = None,
    ) -> None:
        self.count = count
        self.worker_main = worker_main
        self.log = log
        # Relays shared state between the workers (no Redis); its thread starts after the
        # forks, so no worker inherits a running thread.
        self.hub = hub
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGHUP:
            self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _spawn(self, index: int, sockets: dict[str, socket.socket] | None) -> int:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in FORWARDED:
                    signal.signal(sig, signal.SIG_DFL)
                # Until the worker's loop installs its reload handler, a SIGHUP must not kill it.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
                code = self.worker_main(index, sockets)
            except KeyboardInterrupt:
                code = 130
            except BaseException as exc:  # never unwind into the parent's code
                try:
                    sys.stderr.write(f"hydrallm: worker {index} failed: {exc}\n")
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
            finally:
                os._exit(code)
        return pid

    def run(self, sockets: dict[str, socket.socket] | None) -> int:
        previous = {sig: signal.signal(sig, self._forward) for sig in FORWARDED}
        failed = False
        # Signals wait while forking, so none arrives before `children` knows every pid.
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            try:
                for index in range(self.count):
                    self.children[self._spawn(index, sockets)] = index
            except OSError as exc:
                failed = True
                self.log(f"cannot start worker {len(self.children)}: {exc.strerror or exc}")
                self._forward(signal.SIGTERM, None)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
            if sockets is not None:
                for sock in sockets.values():
                    sock.close()  # the workers have their copies
            if self.hub is not None:
                self.hub.start()
            while self.children:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                index = self.children.pop(pid, -1)
                code = os.waitstatus_to_exitcode(status)
                if self.stopping and code in (0, -signal.SIGTERM, -signal.SIGINT):
                    continue
                failed = True
                self.log(f"worker {index} (pid {pid}) exited with status {code}; stopping")
                if not self.stopping:
                    self._forward(signal.SIGTERM, None)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.hub is not None:
                self.hub.close()
        return 1 if failed else 0
