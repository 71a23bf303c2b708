"""``silobridge query | silos | adapters | train``: a consortium member's commands.

Plain functions; ``silobridge.cli`` registers them as top-level commands. Heavy imports (gRPC,
numpy, the SDK) happen inside each command so ``silobridge --help`` stays fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from silobridge.core.cli_support import (
    fail,
    print_json,
    progress_bar,
    run_async_or_exit,
    run_or_exit,
    stderr_console,
    stdout_console,
)
from silobridge.core.federation import FederatedAnswer, SiloOutcome

if TYPE_CHECKING:
    from silobridge.client.api import FederatedClient
    from silobridge.core.listings import AdapterListing, SiloListing

out = stdout_console()
err = stderr_console()

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Path to client.toml.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

STATE_STYLES = {
    SiloOutcome.OK: "green",
    SiloOutcome.TIMEOUT: "yellow",
    SiloOutcome.UNAVAILABLE: "red",
    SiloOutcome.DENIED: "magenta",
    SiloOutcome.ERROR: "red",
}
NDCG_METRIC = "heldout_ndcg@10"
# The stages a TrainAdapter stream reports, in order (coordinator/training: run, fit, preferred).
PREFER_STAGE = "prefer anchors"
TRAIN_STAGES = ("collect anchors", "fit", "calibrate", "store")
DONE_STAGE = "done"


def _whole(header: str) -> Column:
    # Ids and addresses are copied into other commands: fold them, never cut them with "…".
    return Column(header, overflow="fold")


def format_age(seconds: float) -> str:
    """A coarse age: ``42s``, ``5m``, ``3h``, ``12d``; a future time (clock skew) is ``0s``."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def split_silos(value: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; empty means every silo the caller may query."""
    return [name.strip() for name in value.split(",") if name.strip()]


def hits_table(result: FederatedAnswer, title: str) -> Table:
    table = Table(
        "rank", _whole("silo"), _whole("doc id"), "score", "merged", "disclosed fields", title=title
    )
    for rank, hit in enumerate(result.hits, 1):
        # Text() keeps a peer's strings from being read as rich markup.
        table.add_row(
            str(rank),
            Text(hit.silo),
            Text(hit.doc_id),
            f"{hit.score:.3f}",
            f"{hit.merged_score:.3f}",
            Text(json.dumps(dict(hit.fields), ensure_ascii=False) if hit.fields else ""),
        )
    return table


def status_table(result: FederatedAnswer) -> Table:
    table = Table(
        _whole("silo"), "state", "hits", "ms", _whole("adapter"), "message", title="silos"
    )
    for status in result.statuses:
        table.add_row(
            Text(status.silo),
            Text(status.state.value, style=STATE_STYLES.get(status.state, "red")),
            str(status.hit_count),
            f"{status.elapsed_ms:.0f}",
            Text(status.adapter_id or "—"),
            Text(status.message),
        )
    return table


def silos_table(silos: Sequence[SiloListing]) -> Table:
    table = Table(
        _whole("silo"),
        "org",
        _whole("endpoint"),
        "model",
        "dim",
        _whole("space"),
        "docs",
        "health",
        "message",
    )
    for silo in silos:
        table.add_row(
            Text(silo.silo),
            Text(silo.org),
            Text(silo.endpoint),
            Text(silo.space.model_id if silo.space else "?"),
            str(silo.space.dimension) if silo.space else "?",
            Text(silo.space.space_id if silo.space else "?"),
            str(silo.document_count),
            _health(silo),
            Text(silo_message(silo)),
        )
    return table


def _health(silo: SiloListing) -> Text:
    if silo.denied_reason:
        return Text("denied", style="magenta")  # no query is routed to it, healthy or not
    return Text("ok", style="green") if silo.healthy else Text("down", style="red")


def silo_message(silo: SiloListing) -> str:
    """The message column: the coordinator's message, then the spaces a migrating silo also
    answers in itself (``also serves: <space ids>``)."""
    parts = [f"denied: {silo.denied_reason}"] if silo.denied_reason else []
    parts += [silo.message] if silo.message else []
    if silo.also_serves:
        parts.append("also serves: " + ", ".join(space.space_id for space in silo.also_serves))
    return "; ".join(parts)


def adapters_table(adapters: Sequence[AdapterListing], now: float) -> Table:
    table = Table(_whole("id"), "kind", "source → target", "anchor set", "nDCG@10", "age", "stale")
    for adapter in adapters:
        ndcg = adapter.metrics.get(NDCG_METRIC)
        table.add_row(
            Text(adapter.adapter_id),
            Text(adapter.kind),
            Text(f"{adapter.source.model_id} → {adapter.target.model_id}"),
            Text(f"{adapter.anchor_set}@{adapter.version}"),
            "—" if ndcg is None else f"{ndcg:.3f}",
            format_age(now - adapter.created_unix),
            Text(f"STALE: {adapter.stale_reason}", style="red") if adapter.stale else Text(""),
        )
    return table


def query_command(
    config: ConfigOption,
    text: Annotated[
        str, typer.Argument(help="Query text; embedded by your home silo (or use --file).")
    ] = "",
    k: Annotated[int, typer.Option("--k", "-k", help="Number of merged hits.")] = 10,
    silos: Annotated[
        str, typer.Option(help="Comma-separated silo names; default: all you may query.")
    ] = "",
    merge: Annotated[str, typer.Option(help="Score merging: calibrated or rrf.")] = "calibrated",
    rerank: Annotated[
        bool,
        typer.Option(
            help="Two-stage re-ranking: SENDS THE QUERY TEXT to every target silo that accepts it."
        ),
    ] = False,
    rerank_depth: Annotated[
        int, typer.Option(help="Hits each silo re-ranks (0: the coordinator's default).")
    ] = 0,
    as_json: JsonOption = False,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help='A JSONL file of queries, one {"text": ..., "id": ...} a line: embedded at home '
            "and searched in batches of up to 256 (one signature each); with --json, one JSON "
            "object a line.",
        ),
    ] = None,
) -> None:
    """Search the federation: the text is embedded at home; only its vector travels (by default)."""
    from silobridge.client.api import FederatedClient, check_search_options
    from silobridge.client.config import load_client_config

    if file is not None and text:
        fail("give a query text or --file, not both")
    if file is not None and rerank:
        fail("--rerank sends one query's text; it is not available with --file")
    if file is None and not text.strip():
        fail("the query text is empty")
    run_or_exit(lambda: check_search_options(k=k, merge=merge, rerank_depth=rerank_depth))
    cfg = run_or_exit(lambda: load_client_config(config))
    if file is not None:
        from silobridge.client.batch_cli import query_file

        query_file(
            cfg, file, k=k, silos=split_silos(silos), merge=merge, as_json=as_json, out=out, err=err
        )
        return

    async def run() -> FederatedAnswer:
        # A peer's failure names the peer: the text goes to the home silo, the vector onwards.
        async with FederatedClient(cfg) as client:
            return await client.query(
                text,
                k=k,
                silos=split_silos(silos),
                merge=merge,
                rerank=rerank,
                rerank_depth=rerank_depth,
            )

    result = run_async_or_exit(run)
    if as_json:
        print_json(result.to_dict())
    else:
        out.print(hits_table(result, title=f"federated search: {text!r}"))
        out.print(status_table(result))
    if result.failed:
        names = ", ".join(f"{status.silo} ({status.state.value})" for status in result.failed)
        err.print(f"[yellow]partial answer: not every silo answered: {escape(names)}[/yellow]")


def _silo_json(silo: SiloListing) -> dict[str, Any]:
    # The keys this command has always printed, and ``also_serves``; the disclosure policy is
    # the boundary report's.
    return {key: value for key, value in asdict(silo).items() if key != "policy"}


def _listing(
    config: Path,
    as_json: bool,
    fetch: Callable[[FederatedClient], Coroutine[Any, Any, Sequence[Any]]],
    table: Callable[[Sequence[Any]], Table],
    row_json: Callable[[Any], dict[str, Any]] = asdict,
) -> None:
    """Fetch a list from the coordinator; print it as JSON or as a table."""
    from silobridge.client.api import FederatedClient
    from silobridge.client.config import load_client_config

    cfg = run_or_exit(lambda: load_client_config(config))

    async def run() -> Sequence[Any]:
        async with FederatedClient(cfg) as client:
            return await fetch(client)

    rows = run_async_or_exit(run)
    if as_json:
        print_json([row_json(row) for row in rows])
    else:
        out.print(table(rows))


def silos_command(config: ConfigOption, as_json: JsonOption = False) -> None:
    """List the silos registered at the coordinator, probed for health just now."""
    _listing(config, as_json, lambda client: client.list_silos(), silos_table, _silo_json)


def adapters_command(config: ConfigOption, as_json: JsonOption = False) -> None:
    """List the adapters the coordinator holds; a STALE one is refused until retrained."""
    _listing(
        config,
        as_json,
        lambda client: client.list_adapters(),
        lambda rows: adapters_table(rows, now=time.time()),
    )


def train_command(
    config: ConfigOption,
    source: Annotated[str, typer.Option(help="Source space id (the querying silo's space).")],
    target: Annotated[str, typer.Option(help="Target space id (the searched silo's space).")],
    anchor_set: Annotated[str, typer.Option(help="Anchor set name at the coordinator.")],
    kind: Annotated[str, typer.Option(help="Adapter kind; auto picks the best.")] = "auto",
    version: Annotated[str, typer.Option(help="Anchor set version; default: the newest.")] = "",
    prefer: Annotated[
        int,
        typer.Option(
            min=0,
            help="Treat the anchor set as a public pool: the source and target silos each name "
            "their N preferred texts of it and the adapter is trained on N of those, "
            "interleaved, stored as a new anchor set. This reveals which public texts lie near "
            "each silo's documents (a coarse picture of its topics; never a document, vector or "
            "score); each silo must set [receiving] anchor_preferences = true. 0: off.",
        ),
    ] = 0,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds before giving up; default: wait.")
    ] = None,
) -> None:
    """Train an adapter source → target on an anchor set at the coordinator (admins only).

    Each stage the coordinator reports is printed on stderr, under a bar of the stages done
    (on a terminal); the fit's share of the time depends on the kind, so no ETA is guessed.
    """
    from silobridge.client.api import FederatedClient
    from silobridge.client.config import load_client_config

    cfg = run_or_exit(lambda: load_client_config(config))
    started = time.monotonic()
    stages = [*((PREFER_STAGE,) if prefer else ()), *TRAIN_STAGES]

    async def run() -> AdapterListing | None:
        adapter: AdapterListing | None = None
        with progress_bar(
            f"training {source} → {target}", total=len(stages), unit="stages", eta=False
        ) as progress:
            async with FederatedClient(cfg) as client:
                steps = client.train(
                    source,
                    target,
                    anchor_set,
                    kind=kind,
                    version=version,
                    prefer=prefer,
                    timeout=timeout,
                )
                async for step in steps:
                    progress.note(f"[cyan]{escape(step.stage)}[/cyan] {escape(step.message)}")
                    done = stages.index(step.stage) if step.stage in stages else None
                    if step.stage == DONE_STAGE:
                        done = len(stages)
                    progress.update(done, description=f"training: {step.stage}")
                    adapter = step.adapter or adapter
        return adapter

    adapter = run_async_or_exit(run)
    if adapter is None:
        fail("the coordinator ended training without reporting an adapter")
    ndcg = adapter.metrics.get(NDCG_METRIC)
    out.print(
        f"trained adapter {escape(adapter.adapter_id)} ({escape(adapter.kind)}) "
        f"in {time.monotonic() - started:.1f} s; held-out nDCG@10 "
        + ("—" if ndcg is None else f"{ndcg:.3f}")
    )
