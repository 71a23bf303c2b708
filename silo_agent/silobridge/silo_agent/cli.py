"""``silobridge silo …``: ingest (offline or live), delete, serve over mTLS, and search."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from silobridge.core.cli_support import (
    fail,
    print_json,
    progress_bar,
    run_async_or_exit,
    run_or_exit,
    serve_or_exit,
    stderr_console,
    stdout_console,
)
from silobridge.silo_agent.migrate_cli import expected_home, migrate_app

if TYPE_CHECKING:
    from silobridge.client.config import ClientConfig
    from silobridge.core.documents import DeleteReceipt
    from silobridge.silo_agent.ingest import IngestSummary

silo_app = typer.Typer(no_args_is_help=True, help="Run one organization's silo agent.")
silo_app.add_typer(migrate_app, name="migrate")
out = stdout_console()
err = stderr_console()

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Path to silo.toml.")]
ClientOption = Annotated[
    Path | None,
    typer.Option("--client", help="client.toml of one of the silo's admins (live changes)."),
]
SiloOption = Annotated[
    str | None,
    typer.Option("--silo", help="host:port of the running silo (default: the home silo)."),
]


# Texts per model call in an offline ingest: with texts sorted by length within each chunk, 16
# embedded 1.16x (minilm-l6) to 1.25x (minilm-l3-onnx) as fast as 64 on 2 cores.
OFFLINE_BATCH = 16
LIVE_BATCH = 64


@silo_app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(help="JSONL (id, text, metadata) or CSV files.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Path to silo.toml (offline ingest).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Offline: texts per model call (default 16, sorted by length within chunks of "
            "1,024 documents: the fastest on CPU, measured). --live: documents per message "
            "(default 64)."
        ),
    ] = None,
    live: Annotated[
        bool, typer.Option("--live", help="Send the documents to a running silo instead.")
    ] = False,
    client: ClientOption = None,
    silo: SiloOption = None,
) -> None:
    """Embed documents with the silo's model and upsert them into its docstore and index.

    Offline (--config silo.toml): in this process, while the silo is stopped or beside it.

    Live (--live --client client.toml): to a running silo, as one of its admins (access rule
    admin in silo.toml); each batch is durable when acknowledged, and the next search sees it.

    The files are read once first to count their documents, so the progress bar on stderr
    (drawn on a terminal only) shows the total and an ETA.
    """
    if live:
        result, target = _ingest_live(files, client, silo, batch_size or LIVE_BATCH, config)
        where = f"the silo at {target}"
    else:
        if config is None:
            fail("give --config silo.toml (offline ingest) or --live --client client.toml")
        result, data_dir = _ingest_offline(files, config, batch_size or OFFLINE_BATCH)
        where = str(data_dir)
    for bad in result.bad_lines:
        err.print(
            f"[yellow]skipped[/yellow] {bad.path}:{bad.line_number}: {bad.reason}", highlight=False
        )
    out.print(
        f"ingested {result.read} documents from {len(files)} file(s) into {where}: "
        f"{result.inserted} new, {result.updated} updated, {result.unchanged} unchanged, "
        f"{len(result.bad_lines)} bad line(s) skipped"
    )


def _ingest_offline(files: list[Path], config: Path, batch_size: int) -> tuple[IngestSummary, Path]:
    from silobridge.embedding.embedders import load_embedder
    from silobridge.silo_agent.config import load_silo_config
    from silobridge.silo_agent.ingest import count_documents
    from silobridge.silo_agent.ingest import ingest as run_ingest
    from silobridge.silo_agent.store.data import SiloData
    from silobridge.silo_agent.store.index import pin_faiss_threads

    cfg = run_or_exit(lambda: load_silo_config(config))

    def run() -> IngestSummary:
        total = count_documents(files)
        pin_faiss_threads(cfg.server.threads)
        with err.status(f"loading model {cfg.model} …"):
            embedder = load_embedder(cfg.model, threads=max(cfg.server.threads, 2))
            data = SiloData.open(cfg.data_dir, embedder.space, cfg.index)
        try:
            with progress_bar("ingest", total=total, unit="documents") as bar:
                return run_ingest(
                    files,
                    data,
                    embedder,
                    batch_size=batch_size,
                    progress=bar.update,
                )
        finally:
            data.close()

    return run_or_exit(run), cfg.data_dir


def _admin_target(client: Path | None, silo: str | None) -> tuple[ClientConfig, str]:
    from silobridge.silo_agent.migrate_cli import admin_target

    if client is None:
        fail("--live needs --client client.toml: the certificate of one of the silo's admins")
    return admin_target(client, silo)


def _ingest_live(
    files: list[Path], client: Path | None, silo: str | None, batch_size: int, config: Path | None
) -> tuple[IngestSummary, str]:
    from silobridge.rpc.silo_client import SiloClient
    from silobridge.silo_agent.ingest import count_documents
    from silobridge.silo_agent.live_ingest import ingest_live

    if config is not None:
        fail("--live sends to a running silo: give --client client.toml, not --config")
    cfg, target = _admin_target(client, silo)
    total = run_or_exit(lambda: count_documents(files))

    async def run() -> IngestSummary:
        async with SiloClient(
            target, cfg.tls, insecure=cfg.insecure, expect=expected_home(cfg, silo)
        ) as peer:
            with progress_bar("ingest", total=total, unit="documents") as bar:
                return await ingest_live(
                    files,
                    peer,
                    batch_size=batch_size,
                    progress=bar.update,
                )

    return run_async_or_exit(run), target


@silo_app.command()
def delete(
    doc_ids: Annotated[list[str], typer.Argument(help="Ids of the documents to remove.")],
    client: ClientOption = None,
    silo: SiloOption = None,
) -> None:
    """Remove documents from a running silo (its admins only: access rule admin in silo.toml)."""
    from silobridge.rpc.silo_client import SiloClient
    from silobridge.silo_agent.live_ingest import delete_live

    cfg, target = _admin_target(client, silo)

    async def run() -> DeleteReceipt:
        async with SiloClient(
            target, cfg.tls, insecure=cfg.insecure, expect=expected_home(cfg, silo)
        ) as peer:
            return await delete_live(doc_ids, peer)

    receipt = run_async_or_exit(run)
    missing = f"; not held: {', '.join(receipt.missing)}" if receipt.missing else ""
    out.print(
        f"deleted {receipt.deleted} document(s) from the silo at {target}; it now holds "
        f"{receipt.document_count}{missing}"
    )


@silo_app.command()
def serve(
    config: ConfigOption,
    log_level: Annotated[str, typer.Option(help="Python logging level.")] = "INFO",
) -> None:
    """Serve SiloService (and SiloAdminService, for its admins) over mTLS until SIGTERM/SIGINT."""
    from silobridge.silo_agent.config import load_silo_config
    from silobridge.silo_agent.server import serve as run_server

    async def main() -> None:
        await run_server(load_silo_config(config))

    serve_or_exit(main, log_level)


@silo_app.command()
def search(
    config: ConfigOption,
    text: Annotated[str, typer.Argument(help="Query text, embedded with the silo's own model.")],
    k: Annotated[int, typer.Option("--k", "-k", help="Number of hits.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Search the local index directly (debugging; no server, no access checks)."""
    from silobridge.core.hits import Hit
    from silobridge.silo_agent.config import load_silo_config
    from silobridge.silo_agent.server import open_service

    def run() -> tuple[list[Hit], dict[str, str]]:
        service = open_service(load_silo_config(config))
        try:
            hits = service.search_text(text, k)
            return hits, service.data.texts([h.doc_id for h in hits])
        finally:
            service.data.close()
            service.replay.close()

    hits, texts = run_or_exit(run)
    if as_json:
        rows = [
            {
                "doc_id": h.doc_id,
                "score": h.score,
                "text": texts.get(h.doc_id, ""),
                "fields": dict(h.fields),
            }
            for h in hits
        ]
        print_json(rows)
        return
    table = Table("rank", "doc id", "score", "text", title=f"local search: {text!r}")
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), hit.doc_id, f"{hit.score:.3f}", texts.get(hit.doc_id, "")[:90])
    out.print(table)


@silo_app.command()
def query(
    endpoint: Annotated[str, typer.Option(help="host:port of the silo.")],
    cert: Annotated[Path, typer.Option(help="Your certificate (PEM).")],
    key: Annotated[Path, typer.Option(help="Your private key (PEM).")],
    ca: Annotated[Path, typer.Option(help="The consortium CA certificate (PEM).")],
    text: Annotated[str, typer.Argument(help="Query text.")],
    k: Annotated[int, typer.Option("--k", "-k", help="Number of hits.")] = 10,
    timeout: Annotated[float, typer.Option(help="Seconds per call.")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Query a running silo over mTLS: Embed the text there (your own org's silo), then Search."""
    from silobridge.core.config import TlsFiles
    from silobridge.core.hits import Hit
    from silobridge.rpc.silo_client import SiloClient

    async def run() -> tuple[str, list[Hit]]:
        async with SiloClient(endpoint, TlsFiles(cert=cert, key=key, ca=ca)) as silo:
            info = await silo.describe(timeout=timeout)
            vector = (await silo.embed([text], timeout=timeout))[0]
            return info.name, await silo.search_vector(vector, k, timeout=timeout)

    name, hits = run_async_or_exit(run)
    if as_json:
        rows = [{"doc_id": h.doc_id, "score": h.score, "fields": dict(h.fields)} for h in hits]
        print_json(rows)
        return
    table = Table("rank", "doc id", "score", "disclosed fields", title=f"silo {name}: {text!r}")
    for rank, hit in enumerate(hits, 1):
        fields = json.dumps(dict(hit.fields)) if hit.fields else ""
        table.add_row(str(rank), hit.doc_id, f"{hit.score:.3f}", fields)
    out.print(table)


@silo_app.command("push-anchors")
def push_anchors(
    config: ConfigOption,
    anchor_set: Annotated[str, typer.Option("--anchor-set", help="Anchor set name.")],
    version: Annotated[
        str, typer.Option("--version", help="Anchor set version (default: the newest).")
    ] = "",
    batch_size: Annotated[int, typer.Option(help="Texts embedded per batch.")] = 64,
) -> None:
    """Fetch an anchor set from the coordinator, embed it with the silo's model, submit the vectors.

    Only the public anchor texts' vectors leave the silo; documents and their vectors never do.
    """
    from silobridge.embedding.embedders import load_embedder
    from silobridge.silo_agent.config import load_silo_config
    from silobridge.silo_agent.registration import AnchorPush, push_anchor_embeddings

    cfg = run_or_exit(lambda: load_silo_config(config))
    if cfg.coordinator is None:
        fail(
            f"{cfg.source} has no [coordinator] section: add one with "
            'endpoint = "host:port" of the coordinator to push anchors to'
        )

    def run() -> AnchorPush:
        with err.status(f"loading model {cfg.model} …"):
            embedder = load_embedder(cfg.model, threads=max(cfg.server.threads, 2))
        with progress_bar("embed anchors", unit="texts") as bar:
            return asyncio.run(
                push_anchor_embeddings(
                    cfg,
                    embedder,
                    anchor_set,
                    version,
                    batch_size=batch_size,
                    progress=lambda done, total: bar.update(done, total=total),
                )
            )

    pushed = run_or_exit(run)
    out.print(
        f"pushed {pushed.count} anchor vectors of {pushed.anchor_set} {pushed.version} "
        f"in space {pushed.space_id}",
        highlight=False,
    )
