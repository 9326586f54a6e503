"""`hydrallm serve` whose journal is switched on and off in turns, in one process, for
`python -m bench.probe toggle` (see its docstring).

    python -m bench.toggled PHASE_S OUT_FILE PART -c CONFIG   (the config's journal on)

Every PHASE_S seconds, on the event loop: the journal's queue is spooled (a partial batch
is the phase's cost, not the next one's), then the process's CPU time (the scheduler's
count, all threads, nanoseconds) and its request count (the metrics sink's) are appended
to OUT_FILE with the phase that ends, then the journal is switched: off is what the proxy
does with `[journal] enabled = false` on the hot path — no sink called, no usage read, no
session hashed, no steps kept (`Telemetry.wants_usage` off, its journal handler removed).
What a disabled journal would not have at all (its modules imported, its one-second tick,
an idle writer process) stays in both phases: those are measured by `probe onoff`.
PART says what is switched: `all` (the above), `sink` (only the journal's handler called
or not; the usage read and the steps kept in both phases), `usage` (only
`wants_usage`: the usage read, the session hashed, the steps kept; the handler called in
both), or `none` (nothing: the phases differ only by their names; a calibration, which
should read 1.000).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from hydrallm.launch import run
from hydrallm.observe import events, journal
from hydrallm.observe.metrics import MetricsSink

_telemetry: list[events.Telemetry] = []


def _patch(phase_s: float, out: str, part: str) -> None:
    made = events.Telemetry.__init__
    started = journal.JournalSink.start

    def init(self: events.Telemetry, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        _telemetry.append(self)

    def start(sink: journal.JournalSink) -> None:
        started(sink)  # (before the telemetry is made: it is found at the first switch)
        loop = asyncio.get_running_loop()
        state: dict[str, Any] = {"on": True, "n": 0}
        log = open(out, "a", buffering=1)  # noqa: SIM115 - open for the process's life

        def switch() -> None:
            if "telemetry" not in state:
                telemetry = next(t for t in reversed(_telemetry) if sink in t.sinks)
                state["telemetry"] = telemetry
                state["metrics"] = next(s for s in telemetry.sinks if isinstance(s, MetricsSink))
                state["handlers"] = list(telemetry._plain)
            telemetry, on = state["telemetry"], state["on"]
            sink.flush()  # (nothing queued after a phase whose handler was off)
            cpu = time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID)
            served = sum(state["metrics"].requests.values())
            log.write(f"{state['n']} {int(on)} {cpu} {served}\n")
            state["on"] = on = not on
            state["n"] += 1
            if part in ("all", "usage"):
                telemetry.wants_usage = on
            if part in ("all", "sink"):
                telemetry._plain = state["handlers"] if on else []
            loop.call_later(phase_s, switch)

        loop.call_later(phase_s, switch)

    events.Telemetry.__init__ = init  # type: ignore[method-assign]
    journal.JournalSink.start = start  # type: ignore[method-assign,assignment]


def main() -> None:
    phase_s, out, part = float(sys.argv[1]), sys.argv[2], sys.argv[3]
    if part not in ("all", "sink", "usage", "none"):
        raise SystemExit(f"PART is all, sink, usage or none, not {part!r}")
    _patch(phase_s, out, part)
    run(["serve", *sys.argv[4:]])


if __name__ == "__main__":
    main()
