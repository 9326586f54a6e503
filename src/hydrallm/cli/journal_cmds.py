"""`hydrallm log` and `hydrallm usage`: reading the request journal from the terminal.

The journal file is the one the config names (`[journal] path`), else the default under
the state directory; a config that does not load falls back to the default, so that the
history can be read even while the config is being fixed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from hydrallm.errors import HydraError

if TYPE_CHECKING:
    from pathlib import Path

# The journal readers (sqlite3, statistics) and the config types are imported inside the
# commands: `main.py` registers these commands on every start, `hydrallm serve` and
# `hydrallm --help` included, and neither should pay for reading a journal.

_OUTCOME_STYLE = {
    "first_try": "green",
    "retried": "cyan",
    "fell_back": "yellow",
    "recovered": "magenta",
    "failed": "red",
}
_BAR = "█"


class _Since(click.ParamType):  # type: ignore[type-arg]
    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        from hydrallm.config.units import parse_long_duration

        try:
            return parse_long_duration(value)
        except ValueError as exc:
            self.fail(f'{exc} (examples: "30m", "6h", "2d")', param, ctx)


def _path(obj: dict[str, Any], load: Callable[[dict[str, Any]], Any]) -> Path:
    from hydrallm.config import JournalConfig
    from hydrallm.observe.journal_db import journal_path

    try:
        config = load(obj)
    except HydraError:
        return journal_path(JournalConfig())
    return journal_path(config.journal)


def _open(path: Path) -> Any:
    from hydrallm.observe.journal_query import JournalMissing, open_readonly
    from hydrallm.observe.journal_spool import ingest_pending

    ingest_pending(path)  # what the proxies have spooled and not loaded yet
    try:
        return open_readonly(path)
    except JournalMissing as exc:
        click.echo(f"hydrallm: {exc}", err=True)
        sys.exit(1)


def _when(ts: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f}s" if value >= 1000 else f"{value:.0f}ms"


def _cost(value: float | None) -> str:
    return "?" if value is None else f"${value:.4f}"


def _tokens(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def _model(row: dict[str, Any]) -> str:
    asked, served = row.get("requested_model"), row.get("served_model")
    if asked and served and asked != served:
        return f"{asked} → {served}"
    return str(served or asked or "-")


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "rowid"}


def _log_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("time", "id", "model", "status", "outcome", "tries", "latency", "ttft"):
        table.add_column(name, no_wrap=True)
    for name in ("in", "out", "cache r/w", "cost"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("error", overflow="fold")
    for r in rows:
        outcome = r["outcome"] + (f" ({r['recovered']})" if r.get("recovered") else "")
        table.add_row(
            _when(r["time"]),
            r["id"],
            _model(r),
            str(r["status"]),
            Text(outcome, style=_OUTCOME_STYLE.get(r["outcome"], "")),
            str(r["attempts"]),
            _ms(r["latency_ms"]),
            _ms(r["ttft_ms"]),
            _tokens(r["input_tokens"]),
            _tokens(r["output_tokens"]),
            f"{_tokens(r['cache_read_tokens'])}/{_tokens(r['cache_write_tokens'])}",
            _cost(r["cost_usd"]),
            r["error"] or "",
        )
    return table


def _trail(row: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble(
        (f"request {row['id']}", "bold"),
        f"  {_when(row['time'])}  {row['listener']}  {row['method']} {row['path']}\n",
        f"asked for {row['requested_model'] or '-'}, served by {row['served_model'] or '-'}",
        f" ({row['endpoint'] or '-'}); status {row['status']}, ",
        (row["outcome"], _OUTCOME_STYLE.get(row["outcome"], "")),
        f"; {_ms(row['latency_ms'])}, first token {_ms(row['ttft_ms'])}\n",
        f"tokens in {_tokens(row['input_tokens'])} out {_tokens(row['output_tokens'])}",
        f" cache read {_tokens(row['cache_read_tokens'])} write"
        f" {_tokens(row['cache_write_tokens'])}; cost {_cost(row['cost_usd'])}",
    )
    if row.get("recovered"):
        head.append(f"\nstream recovery: {row['recovered']}")
    if row.get("error"):
        head.append(f"\nerror: {row['error']}", style="red")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("#", "model", "endpoint", "key", "outcome", "status", "waited", "latency"):
        table.add_column(name, no_wrap=True)
    table.add_column("error", overflow="fold")
    for i, a in enumerate(row["attempt_trail"], 1):
        ok = a["outcome"] == "success"
        table.add_row(
            str(i),
            a["model"] or "-",
            a["endpoint"] or "-",
            a["key"] or "-",
            Text(a["outcome"], style="green" if ok else "red"),
            "-" if a["status"] is None else str(a["status"]),
            _ms(a["waited_ms"]),
            _ms(a["latency_ms"]),
            a["error"] or "",
        )
    return Group(head, Text(""), table)


def _usage_table(groups: list[dict[str, Any]], by: str) -> Any:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column(by)
    for name in ("requests", "failed", "rescued", "in", "out", "cache read", "cache write"):
        table.add_column(name, justify="right")
    table.add_column("cost", justify="right")
    for g in groups:
        table.add_row(
            str(g["key"]),
            str(g["requests"]),
            str(g["failed"]),
            str(g["rescued"]),
            _tokens(g["input_tokens"]),
            _tokens(g["output_tokens"]),
            _tokens(g["cache_read_tokens"]),
            _tokens(g["cache_write_tokens"]),
            _cost(g["cost_usd"]),
        )
    return table


def usage_chart(groups: list[dict[str, Any]], width: int = 40) -> Any:
    """Bars: requests (served / rescued / failed) and cost, one line per group."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("")
    table.add_column("requests  (green served, yellow rescued, red failed)")
    table.add_column("cost")
    most = max((g["requests"] for g in groups), default=0) or 1
    dearest = max((g["cost_usd"] or 0 for g in groups), default=0) or 1
    for g in groups:
        served = g["requests"] - g["failed"] - g["rescued"]
        bar = Text()
        for n, style in ((served, "green"), (g["rescued"], "yellow"), (g["failed"], "red")):
            cells = round(n * width / most)
            if n and not cells:
                cells = 1
            bar.append(_BAR * cells, style=style)
        bar.append(f" {g['requests']}")
        cost = Text()
        if g["cost_usd"] is not None:
            cost.append(_BAR * max(1, round(g["cost_usd"] * 20 / dearest)), style="blue")
        cost.append(f" {_cost(g['cost_usd'])}")
        table.add_row(str(g["key"]), bar, cost)
    return table


def register(
    main: click.Group,
    global_options: Callable[[Any], Any],
    load: Callable[[dict[str, Any]], Any],
    handle_errors: Callable[[Any], Any],
) -> None:
    """Add `log` and `usage` to the `hydrallm` command group."""

    @main.command(name="log")
    @global_options
    @click.argument("request_id", required=False)
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    @click.option("--follow", "-f", is_flag=True, help="Keep printing new requests (Ctrl-C ends).")
    @click.option("--since", type=_Since(), default=None, help='Only the last DURATION ("2h").')
    @click.option("--model", "model_glob", default=None, help="Requested or served model (glob).")
    @click.option("--failed", is_flag=True, help="Only requests that failed.")
    @click.option("--recovered", is_flag=True, help="Only streams that needed recovery.")
    @click.option("-n", "limit", type=click.IntRange(1, 100_000), default=20, show_default=True)
    @click.pass_obj
    @handle_errors
    def log_cmd(
        obj: dict[str, Any] | None,
        request_id: str | None,
        as_json: bool,
        follow: bool,
        since: float | None,
        model_glob: str | None,
        failed: bool,
        recovered: bool,
        limit: int,
    ) -> None:
        """The latest requests, newest first; with REQUEST_ID, that request's attempt trail."""
        import json

        from rich.console import Console

        from hydrallm.observe.journal_query import one, requests

        console = Console(highlight=False, soft_wrap=False)
        path = _path(obj or {}, load)
        db = _open(path)
        if request_id is not None:
            row = one(db, request_id)
            if row is None:
                click.echo(f"hydrallm: no request {request_id!r} in the journal", err=True)
                sys.exit(1)
            if as_json:
                click.echo(json.dumps(_public(row), ensure_ascii=False))
            else:
                console.print(_trail(row))
            return
        filters = {
            "model": model_glob,
            "failed": failed,
            "recovered": recovered,
        }
        cutoff = None if since is None else time.time() - since
        rows = requests(db, since=cutoff, limit=limit, **filters)  # type: ignore[arg-type]
        if follow:
            rows.reverse()  # as `tail -f`: oldest first, new ones below

        def emit(batch: list[dict[str, Any]]) -> None:
            if as_json:
                for r in batch:
                    click.echo(json.dumps(_public(r), ensure_ascii=False))
                sys.stdout.flush()
            elif batch:
                console.print(_log_table(batch))

        if follow:
            from hydrallm.cli.interrupt import ctrl_c_stops

            ctrl_c_stops()  # before the first row: once a row is out, Ctrl-C works
        emit(rows)
        if not follow:
            return
        last = max((r["rowid"] for r in rows), default=0)
        if not rows:
            newest = db.execute("SELECT max(rowid) FROM requests").fetchone()[0]
            last = newest or 0
        from hydrallm.observe.journal_spool import ingest_pending

        while True:
            time.sleep(0.5)
            ingest_pending(path)
            batch = requests(db, since=cutoff, limit=1000, after=last, **filters)  # type: ignore[arg-type]
            if batch:
                last = batch[-1]["rowid"]
                emit(batch)

    @main.command(name="usage")
    @global_options
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per group and line.")
    @click.option("--since", type=_Since(), default=None, help='Only the last DURATION ("7d").')
    @click.option(
        "--by", type=click.Choice(["model", "day", "hour"]), default="model", show_default=True
    )
    @click.option("--chart", is_flag=True, help="Draw bars instead of a table.")
    @click.pass_obj
    @handle_errors
    def usage_cmd(
        obj: dict[str, Any] | None, as_json: bool, since: float | None, by: str, chart: bool
    ) -> None:
        """Tokens, cost, requests, failures and rescues per model, day or hour."""
        import json

        from rich.console import Console

        from hydrallm.observe.journal_query import usage

        db = _open(_path(obj or {}, load))
        groups = usage(db, since=None if since is None else time.time() - since, by=by)
        if as_json:
            for g in groups:
                click.echo(json.dumps(g, ensure_ascii=False))
            return
        console = Console(highlight=False)
        if not groups:
            console.print("no requests in the journal for this period")
            return
        console.print(usage_chart(groups) if chart else _usage_table(groups, by))
