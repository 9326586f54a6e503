"""The key-pool part of `hydrallm demo`: a subscription key runs out of its 5-hour window
halfway through a workload, and the pool moves on to the next key without the client
noticing.  The same workload straight at the provider with that one key fails from then on.
"""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from hydrallm.app.lifecycle import start
from hydrallm.cli.demo_workload import WorkloadResult, run_workload
from hydrallm.config.load import parse_config
from hydrallm.dataclass import dataclass
from hydrallm.observe.events import Logger
from hydrallm.routing.keys import KeyPool
from hydrallm.testing.harness import with_free_ports
from hydrallm.testing.limits import LimitedUpstream

SUBSCRIPTION = "demo-subscription-key-5h01"
PAID = "demo-paid-api-key-0002"
WINDOW_S = 5 * 3600


@dataclass(slots=True)
class PoolReport:
    direct: WorkloadResult
    proxied: WorkloadResult
    quota_answers: int  # the provider's "window spent" answers behind the proxy
    served: dict[str, int]  # by key label
    keys: list[dict[str, object]]


def pool_config(url: str, port: int) -> str:
    return f"""
[log]
level = "warn"

[server]
shutdown_timeout = "1s"

[retry]
default_interval = "50ms"

[providers.claude]
url = "{url}"
api_keys = ["{SUBSCRIPTION}", "{PAID}"]

[models.sonnet]
provider = "claude"
type = "anthropic"
model = "demo-sonnet"

[[listeners]]
name = "pool"
host = "127.0.0.1"
port = {port}
models = ["sonnet"]
"""


async def run_pool_demo(
    console: Console, *, requests: int = 40, concurrency: int = 4
) -> PoolReport:
    allowance = requests // 3
    direct_up = LimitedUpstream(name="direct", provider="anthropic")
    pooled_up = LimitedUpstream(name="claude", provider="anthropic")
    async with direct_up, pooled_up:
        direct_up.allow("", allowance, WINDOW_S)  # the workload presents no key of its own
        pooled_up.allow(SUBSCRIPTION, allowance, WINDOW_S)
        config = parse_config(pool_config(pooled_up.url, 9), path="<demo>", env={})
        config = with_free_ports(config)  # any free port, as the tests do
        logger = Logger("warn", stream=io.StringIO(), secrets=config.secrets, color=False)
        proxy = await start(config, logger=logger)
        try:
            host, port = next(iter(proxy.addresses().values()))
            console.print(
                f"\n[bold]Key pool[/]: a subscription key whose 5-hour window runs out after "
                f"{allowance} requests, then a paid key; {requests} requests."
            )
            direct = await run_workload(
                direct_up.url + "/v1/messages", requests=requests, concurrency=concurrency
            )
            proxied = await run_workload(
                f"http://{host}:{port}/v1/messages", requests=requests, concurrency=concurrency
            )
            keys = proxy.state.current.engine.keys
            pool: KeyPool | None = keys.get("claude") if keys is not None else None
            labels = {k.secret: k.label for k in pool.keys} if pool is not None else {}
            quota = sum(1 for r in pooled_up.requests if r.fault.kind == "anthropic_unified")
            return PoolReport(
                direct=direct,
                proxied=proxied,
                quota_answers=quota,
                served={labels.get(k, "?"): n for k, n in pooled_up.served.items()},
                keys=pool.snapshot() if pool is not None else [],
            )
        finally:
            await proxy.close()


def pool_table(report: PoolReport) -> Table:
    table = Table(title="A quota runs out", title_justify="left")
    table.add_column("")
    table.add_column("straight, one key", justify="right")
    table.add_column("through hydrallm, a pool", justify="right")
    table.add_row(
        "succeeded at the client",
        f"{report.direct.succeeded}/{report.direct.total}",
        f"{report.proxied.succeeded}/{report.proxied.total}",
    )
    absorbed = report.quota_answers - sum(report.proxied.failures().values())
    table.add_row(
        "  429 quota exhausted",
        f"{sum(report.direct.failures().values())} seen",
        f"{report.proxied.total - report.proxied.succeeded} seen, {max(0, absorbed)} absorbed",
    )
    table.add_section()
    for key in report.keys:
        label = str(key["label"])
        state = str(key["state"])
        if key["until"]:
            state += f" until {key['until']}"
        table.add_row(f"key {label}", "-", f"{report.served.get(label, 0)} served; {state}")
    return table
