"""Hot reload: on SIGHUP or when the config file changes, load, validate and swap.

One owned task serialises everything: it wakes on `trigger()` (the SIGHUP handler) or every
`poll` seconds to compare the file's (mtime, size, inode); a change is acted on once the
file has looked the same for `debounce` seconds, so an editor's several writes give one
reload.  An invalid file changes nothing: every problem is logged and the old config keeps
serving.  A valid one becomes `state.current` for new requests; requests in flight keep
the runtime they started with.  Listeners that were removed, or whose host/port changed,
stop accepting at once and drain in the background; added ones (and the new addresses of
changed ones) are bound before the swap, and if that fails the reload is undone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from hydrallm.app.runtime import build_runtime
from hydrallm.config import Config, ListenerConfig
from hydrallm.config.exposure import exposure_warnings
from hydrallm.errors import ConfigError, StartupError
from hydrallm.observe.events import LEVELS, Redactor

if TYPE_CHECKING:
    from hydrallm.app.lifecycle import Proxy

Signature = tuple[int, int, int] | None


def file_signature(path: str) -> Signature:
    """What changes when a file is rewritten or replaced; None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Reloader:
    """Owns the reload task of one running proxy."""

    def __init__(
        self,
        proxy: Proxy,
        load: Callable[[], Config],
        *,
        path: str | None,
        poll: float = 0.5,
        debounce: float = 0.3,
    ) -> None:
        self.proxy = proxy
        self._load = load
        self._path = path
        self._poll = poll
        self._debounce = debounce
        self._wake = asyncio.Event()
        self._reason = "signal"
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hydrallm-reload")

    def trigger(self, reason: str = "SIGHUP") -> None:
        """Ask for a reload (safe to call from a signal handler registered on the loop)."""
        self._reason = reason
        self._wake.set()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel("proxy is shutting down")
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        last = file_signature(self._path) if self._path else None
        while True:
            try:
                async with asyncio.timeout(self._poll if self._path else None):
                    await self._wake.wait()
            except TimeoutError:
                pass
            if self._wake.is_set():
                self._wake.clear()
                await self.reload(self._reason)
                last = file_signature(self._path) if self._path else None
                continue
            if self._path is None:
                continue
            seen = file_signature(self._path)
            if seen == last or seen is None:
                continue  # unchanged, or replaced and not there yet
            await asyncio.sleep(self._debounce)
            if file_signature(self._path) != seen:
                continue  # still being written; look again at the next poll
            last = seen
            # A SIGHUP that came meanwhile is served by this reload: it reads the same file.
            self._wake.clear()
            await self.reload("file changed")

    async def reload(self, reason: str) -> bool:
        """Load the config again and apply it; True when the new config is serving."""
        async with self._lock:
            try:
                return await self._reload(reason)
            except Exception as exc:  # a reload must never end the watcher, nor the proxy
                self.proxy.state.telemetry.log.error("reload_failed", error=repr(exc))
                self.proxy.state.telemetry.reload("failure", repr(exc))
                return False

    async def _reload(self, reason: str) -> bool:
        proxy = self.proxy
        state = proxy.state
        telemetry = state.telemetry
        log = telemetry.log
        log.info("reload", reason=reason, path=self._path)
        try:
            new = await asyncio.to_thread(self._load)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload_rejected", problem=problem)
            log.warn("reload_failed", reason="invalid config; still serving the previous one")
            telemetry.reload("failure", f"{len(exc.problems)} problem(s): {exc.problems[0]}")
            return False
        old = state.current
        # Secrets of both generations: requests on the old one may still log.
        log.redact = Redactor(old.config.secrets | new.secrets)
        try:
            runtime = build_runtime(new, state.transport, telemetry, previous=old)
        except Exception as exc:  # a provider refusing its configuration
            log.error("reload_failed", error=str(exc))
            telemetry.reload("failure", str(exc))
            return False

        old_by_name = {lc.name: lc for lc in old.config.listeners}
        new_by_name = {lc.name: lc for lc in new.listeners}
        moved = [
            name
            for name, lc in new_by_name.items()
            if name in old_by_name and _address(lc) != _address(old_by_name[name])
        ]
        gone = [name for name in old_by_name if name not in new_by_name]
        added = [name for name in new_by_name if name not in old_by_name]

        if proxy.fixed_sockets and (moved or gone or added):
            message = (
                "listeners cannot be added, removed or moved while workers share inherited"
                " sockets; restart hydrallm to apply"
            )
            log.error("reload_failed", error=message)
            telemetry.reload("failure", message)
            return False
        # Stop accepting on the addresses being given up, so they can be bound again.
        detached = {name: await proxy.detach_listener(name) for name in (*gone, *moved)}
        opened: list[str] = []
        try:
            for name in (*moved, *added):
                await proxy.start_listener(new_by_name[name])
                opened.append(name)
        except StartupError as exc:
            for name in opened:
                await proxy.stop_listener(name)
            for name, lst in detached.items():
                if lst is not None:
                    proxy.drain(lst)
                    try:
                        await proxy.start_listener(old_by_name[name])
                    except StartupError as again:
                        log.error("listener_lost", listener=name, error=str(again))
            log.error("reload_failed", error=str(exc))
            telemetry.reload("failure", str(exc))
            return False

        state.current = runtime
        log.threshold = LEVELS.get(new.log.level, 20)
        for lst in detached.values():
            if lst is not None:
                proxy.drain(lst)
        if new.server.workers != old.config.server.workers:
            log.warn("reload_note", problem="server.workers changes take effect on restart")
        for warning in new.warnings:
            log.warn("config", problem=warning)
        for warning in exposure_warnings(new):
            log.warn("exposed", problem=warning)
        changes = [f"+{n}" for n in added] + [f"-{n}" for n in gone] + [f"~{n}" for n in moved]
        detail = f"generation {runtime.generation}" + (
            f"; listeners {' '.join(changes)}" if changes else ""
        )
        log.info(
            "reloaded",
            generation=runtime.generation,
            listeners=len(new.listeners),
            models=len(new.models),
            changes=" ".join(changes) or None,
        )
        telemetry.reload("success", detail)
        return True


def _address(lc: ListenerConfig) -> tuple[str, int]:
    return (lc.host, lc.port)
