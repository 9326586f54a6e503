"""`hydrallm demo`: watch hydrallm absorb a flaky provider, with no config, key or network.

On loopback it starts a flaky primary and a healthy fallback (the `hydrallm.testing` fakes
that the test suite uses) and a hydrallm proxy in this process with the chain
[primary x2 attempts, fallback].  The same workload then runs twice, straight at the
primary and through hydrallm, and a side-by-side summary is printed.  Both primaries
(the one hit directly and the one behind the proxy) draw their faults from the same
seeded sequence, so the two runs face the same weather.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hydrallm.app.lifecycle import Proxy, start
from hydrallm.cli.demo_keys import pool_table, run_pool_demo
from hydrallm.cli.demo_workload import Outcome, WorkloadResult, run_workload
from hydrallm.config import Config
from hydrallm.config.load import parse_config
from hydrallm.dataclass import dataclass
from hydrallm.observe.events import AttemptEvent, Logger, Sink
from hydrallm.observe.metrics import MetricsSink
from hydrallm.observe.status import StatusSink
from hydrallm.testing import FailureMix, FakeUpstream

__all__ = ["DemoOptions", "DemoReport", "DemoSink", "demo_config", "run_demo"]

# How the flaky primary misbehaves; short enough that the demo takes seconds.
RETRY_AFTER_S = 0.5
SLOW_FIRST_TOKEN_S = 1.5
FIRST_TOKEN_TIMEOUT_S = 0.5

# A fault's `kind` on the fake, as a reader would name it.
_FAULT_LABELS = {
    "status_429": "429 rate limited",
    "overloaded": "529 overloaded",
    "reset_before_headers": "connection reset",
    "error_event_first": "error event in stream",
    "slow_first_token": "slow first token",
}


@dataclass(frozen=True, slots=True)
class DemoOptions:
    requests: int = 200
    concurrency: int = 16
    failure_rate: float = 0.3
    seed: int = 7
    port: int = 0  # 0: any free port
    keep_running: bool = False


class DemoSink(Sink):
    """Counts what the proxy did to hide failures: retries, fallbacks, cooldowns."""

    def __init__(self) -> None:
        self.retries = 0
        self.fallbacks = 0
        self.cooldowns_opened = 0
        self.attempt_outcomes: Counter[str] = Counter()

    def attempt(self, event: AttemptEvent) -> None:
        self.retries += int(event.retry)
        self.fallbacks += int(event.fallback)
        self.attempt_outcomes[event.outcome] += 1

    def circuit(self, model_id: str, state: str, open_for: float) -> None:
        if state == "open":
            self.cooldowns_opened += 1


@dataclass(slots=True)
class DemoReport:
    options: DemoOptions
    direct: WorkloadResult
    proxied: WorkloadResult
    faults_direct: Counter[str] = field(default_factory=Counter)  # injected, by label
    faults_proxied: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    fallbacks: int = 0
    cooldowns_opened: int = 0
    proxy_url: str = ""

    @property
    def all_succeeded_through_proxy(self) -> bool:
        return self.proxied.succeeded == self.proxied.total


def demo_config(primary_url: str, fallback_url: str, port: int) -> Config:
    """The proxy's config: Anthropic type, chain [primary x2, fallback], short timers."""
    text = f"""
[log]
level = "warn"

[server]
shutdown_timeout = "1s"

[retry]
max_cycles = 2
default_interval = "50ms"
max_retry_after = "2s"
first_token_timeout = "{FIRST_TOKEN_TIMEOUT_S}s"
stream_idle_timeout = "5s"

[cooldown]
failures = 4
duration = "1s"
max_duration = "10s"

[providers.primary]
url = "{primary_url}"
api_key = "demo-key-primary"

[providers.fallback]
url = "{fallback_url}"
api_key = "demo-key-fallback"

[models.primary]
provider = "primary"
type = "anthropic"
model = "demo-large"
attempts = 2
timeout = "1s"

[models.fallback]
provider = "fallback"
type = "anthropic"
model = "demo-backup"
timeout = "5s"

[[listeners]]
name = "demo"
host = "127.0.0.1"
port = {port}
models = ["primary", "fallback"]
"""
    return parse_config(text, path="<demo>", env={})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _mix(rate: float) -> FailureMix:
    return FailureMix(rate=rate, retry_after=RETRY_AFTER_S, slow_first_token=SLOW_FIRST_TOKEN_S)


def _injected(fake: FakeUpstream) -> Counter[str]:
    """The faults the fake played, by label (as the client met them)."""
    counts: Counter[str] = Counter()
    for r in fake.requests:
        kind = r.fault.kind
        if kind == "ok":
            continue
        if kind == "error_event_first" and not r.stream:
            kind = "overloaded"  # what the fake answers a non-streaming request instead
        counts[_FAULT_LABELS.get(kind, kind)] += 1
    return counts


async def _phase(console: Console, title: str, url: str, options: DemoOptions) -> WorkloadResult:
    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(title, total=options.requests, ok=0, failed=0)
        counts = Counter[str]()

        def done(outcome: Outcome) -> None:
            counts["ok" if outcome.ok else "failed"] += 1
            progress.update(task, advance=1, ok=counts["ok"], failed=counts["failed"])

        return await run_workload(
            url, requests=options.requests, concurrency=options.concurrency, on_done=done
        )


async def run_demo(
    options: DemoOptions,
    console: Console,
    *,
    log_buffer: io.StringIO | None = None,
    on_ready: Callable[[DemoReport], None] | None = None,
) -> DemoReport:
    """Run both phases and return the report; with `keep_running`, serve until a signal."""
    buffer = log_buffer if log_buffer is not None else io.StringIO()
    logger = Logger("warn", stream=buffer, color=False)
    counter = DemoSink()
    direct_primary = FakeUpstream(
        name="primary", failure_mix=_mix(options.failure_rate), rng_seed=options.seed
    )
    primary = FakeUpstream(
        name="primary", failure_mix=_mix(options.failure_rate), rng_seed=options.seed
    )
    fallback = FakeUpstream(name="fallback")
    async with direct_primary, primary, fallback:
        config = demo_config(primary.url, fallback.url, options.port or _free_port())
        proxy: Proxy = await start(
            config,
            logger=logger,
            sinks=[MetricsSink(worker=0, pid=os.getpid()), StatusSink(), counter],
        )
        try:
            host, port = next(iter(proxy.addresses().values()))
            proxy_url = f"http://{host}:{port}"
            console.print(
                f"[bold]hydrallm demo[/]: a flaky primary (failure rate "
                f"{options.failure_rate:.0%}, seed {options.seed}), a healthy fallback, and "
                f"hydrallm at {proxy_url} with the chain \\[primary x2, fallback].\n"
                f"{options.requests} requests, {options.concurrency} at a time, half of them "
                "streaming.\n"
            )
            direct = await _phase(
                console, "straight to primary", direct_primary.url + "/v1/messages", options
            )
            proxied = await _phase(console, "through hydrallm", proxy_url + "/v1/messages", options)
            report = DemoReport(
                options=options,
                direct=direct,
                proxied=proxied,
                faults_direct=_injected(direct_primary),
                faults_proxied=_injected(primary),
                retries=counter.retries,
                fallbacks=counter.fallbacks,
                cooldowns_opened=counter.cooldowns_opened,
                proxy_url=proxy_url,
            )
            console.print()
            console.print(summary_table(report))
            console.print(verdict_line(report))
            # Key pools (issue 15): a quota running out, absorbed by the next key.
            pool_report = await run_pool_demo(console)
            console.print(pool_table(pool_report))
            if on_ready is not None:
                on_ready(report)
            if options.keep_running:
                console.print(keep_running_text(proxy_url), soft_wrap=True)
                await _wait_for_signal()
            return report
        finally:
            await proxy.close()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def keep_running_text(proxy_url: str) -> str:
    body = (
        '{"model": "claude-demo", "max_tokens": 64, '
        '"messages": [{"role": "user", "content": "Hello"}]}'
    )
    stream_body = body[:-1] + ', "stream": true}'
    return (
        f"\n[bold]The demo proxy is still running[/] at {proxy_url} (Ctrl-C stops it).\n"
        f"  status page:  {proxy_url}/_hydrallm/\n"
        f"  status JSON:  {proxy_url}/_hydrallm/status.json\n"
        f"  in a terminal: hydrallm status --url {proxy_url} --watch\n"
        "Try it:\n"
        f"  curl -s {proxy_url}/v1/messages -H 'content-type: application/json' "
        f"-d '{body}'\n"
        f"  curl -sN {proxy_url}/v1/messages -H 'content-type: application/json' "
        f"-d '{stream_body}'\n"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


def _share(result: WorkloadResult) -> str:
    if not result.total:
        return "0/0"
    return f"{result.succeeded}/{result.total} ({result.succeeded / result.total:.1%})"


def summary_table(report: DemoReport) -> Table:
    """The side-by-side comparison of both runs."""
    direct, proxied = report.direct, report.proxied
    table = Table(title="Same workload, same failures", title_justify="left")
    table.add_column("")
    table.add_column("straight to primary", justify="right")
    table.add_column("through hydrallm", justify="right")
    style_direct = "green" if direct.succeeded == direct.total else "red"
    style_proxied = "green" if proxied.succeeded == proxied.total else "red"
    table.add_row(
        "succeeded at the client",
        f"[{style_direct}]{_share(direct)}[/]",
        f"[{style_proxied}]{_share(proxied)}[/]",
    )
    seen_direct, seen_proxied = direct.failures(), proxied.failures()
    table.add_row(
        "failed at the client", str(sum(seen_direct.values())), str(sum(seen_proxied.values()))
    )
    table.add_section()
    kinds = [
        *dict.fromkeys([*report.faults_direct, *report.faults_proxied, *seen_direct, *seen_proxied])
    ]
    for kind in sorted(kinds):
        injected_direct = report.faults_direct.get(kind, 0)
        injected_proxied = report.faults_proxied.get(kind, 0)
        if kind == "slow first token":
            left = f"{injected_direct} answered late"
        else:
            left = f"{seen_direct.get(kind, 0)} seen"
        absorbed = max(0, injected_proxied - seen_proxied.get(kind, 0))
        right = f"{seen_proxied.get(kind, 0)} seen, {absorbed} absorbed"
        table.add_row(f"  {kind}", left, right)
    table.add_section()
    table.add_row("retries (same model)", "-", str(report.retries))
    table.add_row("fallbacks (next model)", "-", str(report.fallbacks))
    table.add_row("cooldowns opened", "-", str(report.cooldowns_opened))
    table.add_section()
    table.add_row("latency p50", _ms(direct.latency(50)), _ms(proxied.latency(50)))
    table.add_row("latency p99", _ms(direct.latency(99)), _ms(proxied.latency(99)))
    table.add_row("wall time", f"{direct.elapsed:.1f} s", f"{proxied.elapsed:.1f} s")
    return table


def verdict_line(report: DemoReport) -> str:
    proxied = report.proxied
    hidden = sum(report.faults_proxied.values())
    if report.all_succeeded_through_proxy:
        return (
            f"[bold green]hydrallm:[/] every request succeeded; {hidden} upstream failures "
            "were hidden from the client."
        )
    failed = proxied.total - proxied.succeeded
    return f"[bold red]hydrallm:[/] {failed} request(s) failed through the proxy."
