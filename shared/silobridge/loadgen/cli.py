"""``silobridge bench live``: load a running consortium and print what it sustains."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from silobridge.client.config import load_client_config
from silobridge.core.cli_support import ProgressBar, progress_bar, run_async_or_exit, stdout_console
from silobridge.core.errors import InvalidArgument
from silobridge.loadgen.session import (
    AUTO_RATE_STEPS,
    EXTRA_STEPS,
    LiveBench,
    Plan,
    read_query_file,
    synthetic_texts,
)
from silobridge.loadgen.stats import RunRow

bench_app = typer.Typer(no_args_is_help=True, help="Load-test a running consortium.")


def _numbers(text: str, what: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgument(f"--{what} takes comma-separated numbers, got '{text}'") from None
    if any(value <= 0 for value in values):
        raise InvalidArgument(f"--{what} values must be > 0")
    return values


class RunProgress:
    """``LiveBench.run``'s hook drawing one bar step per measured run.

    Each path runs every concurrency, then open loops at most at every rate; a path that
    saturates early gives its remaining steps back, so the ETA stays the time of the runs left.
    """

    def __init__(self, bar: ProgressBar, plan: Plan, paths: int) -> None:
        self.bar = bar
        self.per_path = len(plan.concurrency) + (
            len(plan.rates) or len(AUTO_RATE_STEPS) + EXTRA_STEPS
        )
        self.total = self.per_path * paths
        self.done = 0
        self.path = ""
        self.path_done = 0
        bar.update(0, total=self.total)

    async def __call__(self, path: str, mode: str, load: float, moment: str) -> None:
        if moment == "before":
            if path != self.path:
                self._close_path()
                self.path = path
            shown = f"c={int(load)}" if mode == "closed" else f"{load:g}/s"
            self.bar.update(description=f"bench {path} {mode} {shown}")
            return
        self.done += 1
        self.path_done += 1
        self.bar.update(self.done, total=self.total)

    def _close_path(self) -> None:
        if self.path:
            self.total -= self.per_path - self.path_done
        self.path_done = 0

    def finish(self) -> None:
        self._close_path()
        self.bar.update(self.done, total=self.done, description="bench done")


def rows_table(rows: Sequence[RunRow], title: str = "live load") -> Table:
    table = Table(title=title)
    for name in ("path", "mode", "load", "queries", "QPS", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(name, justify="left" if name in ("path", "mode") else "right")
    table.add_column("errors", justify="right")
    table.add_column("partial", justify="right")
    for row in rows:
        load = f"c={int(row.load)}" if row.mode == "closed" else f"{row.load:g}/s"
        table.add_row(
            row.path,
            row.mode,
            load,
            str(row.queries),
            f"{row.qps:.1f}",
            f"{row.p50_ms:.2f}",
            f"{row.p95_ms:.2f}",
            f"{row.p99_ms:.2f}",
            str(row.errors),
            str(row.partial),
        )
    return table


def live_command(
    config: Annotated[Path, typer.Option(help="client.toml of the member running the load.")],
    silos: Annotated[
        str, typer.Option(help="Comma-separated silos, each searched alone through the hub.")
    ] = "",
    direct: Annotated[
        bool, typer.Option(help="Also search the home silo directly, with no coordinator.")
    ] = False,
    queries: Annotated[
        Path | None, typer.Option(help="A JSONL file of queries ({'text': …} per line).")
    ] = None,
    texts: Annotated[
        int, typer.Option(help="How many query texts (synthetic unless --queries).")
    ] = 256,
    concurrency: Annotated[str, typer.Option(help="Closed-loop concurrencies.")] = "1,8,32,64",
    rates: Annotated[
        str, typer.Option(help="Open-loop rates (queries/s); default: up to saturation.")
    ] = "",
    duration: Annotated[float, typer.Option(help="Seconds measured per run.")] = 10.0,
    warmup: Annotated[float, typer.Option(help="Seconds of warm-up before a closed run.")] = 1.0,
    path_warmup: Annotated[
        float,
        typer.Option(
            help="Seconds each path is loaded, unmeasured, before any run (then 10 s more for "
            "the silos' background warm-up); 0: none."
        ),
    ] = 3.0,
    k: Annotated[int, typer.Option(help="Hits per query.")] = 10,
    fixed_interval: Annotated[
        bool, typer.Option(help="Open loop at fixed intervals instead of Poisson arrivals.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the rows as JSON to this file.")
    ] = None,
) -> None:
    """Closed loops at each concurrency and open loops up to saturation, per query path.

    Query texts are embedded once at the home silo before any timing. Every federated query
    is freshly signed; the client's signing time is reported on its own row.
    """

    async def main() -> dict[str, Any]:
        client_config = load_client_config(config)
        plan = Plan(
            concurrency=[int(c) for c in _numbers(concurrency, "concurrency")],
            rates=_numbers(rates, "rates"),
            duration=duration,
            warmup=warmup,
            poisson=not fixed_interval,
            path_warmup=path_warmup,
        )
        names = [name.strip() for name in silos.split(",") if name.strip()]
        query_texts = read_query_file(queries, texts) if queries else synthetic_texts(texts)
        async with LiveBench(client_config, k=k) as bench:
            await bench.prepare(query_texts, silos=names, direct=direct)
            with progress_bar("bench", unit="runs") as bar:
                runs = RunProgress(bar, plan, len(bench.paths))
                rows = await bench.run(plan, hook=runs)
                runs.finish()
            return {"rows": [row.to_dict() for row in rows], "signing": bench.signing_row()}

    report = run_async_or_exit(main)
    console = stdout_console()
    console.print(rows_table([RunRow(**row) for row in report["rows"]]))
    signing = report["signing"]
    console.print(
        f"client signing (QuerySigner): {signing['count']} queries, "
        f"{signing['mean_us']:.1f} µs per query"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")


bench_app.command("live")(live_command)
