"""``silobridge eval``: run the evaluation matrix from the command line and report it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from silobridge.core.cli_support import run_or_exit

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def eval_command(
    source_model: Annotated[
        str, typer.Option(help="Embedder spec of the asking side (the query's space).")
    ],
    target_model: Annotated[
        str, typer.Option(help="Embedder spec of the searched side (the corpus's space).")
    ],
    dataset: Annotated[
        str,
        typer.Option(
            help="Built-in dataset: bible-web2kjv, kjv-knn (unlabelled) or pydoc-heading2para "
            "(a Python-docs heading finds its section's first paragraph; refuses public anchors)."
        ),
    ] = "bible-web2kjv",
    dataset_dir: Annotated[
        Path | None,
        typer.Option(help="A BEIR-format directory (corpus.jsonl, queries.jsonl, qrels/*.tsv)."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Qrels split of a BEIR directory (default: test).")
    ] = None,
    corpus_size: Annotated[
        int | None, typer.Option(help="Subsample the corpus to N documents (relevant kept).")
    ] = None,
    queries: Annotated[int | None, typer.Option(help="Subsample M judged queries.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every sample and of adapter fitting.")] = 0,
    anchors: Annotated[
        list[str] | None,
        typer.Option(
            help="Anchor set: public (Python docs), synthetic (random word strings), "
            "in-domain, or a public generator: zipf (frequency-weighted words), sentences "
            "(real English sentences), chain (a word-pair chain over them) or mix; or "
            "preferred (domain-aware: both silos' preferred texts of 64,000 mix texts, "
            "interleaved); repeat for several."
        ),
    ] = None,
    anchor_file: Annotated[
        list[Path] | None,
        typer.Option(help="Your own anchor texts (JSONL with 'text', or one per line)."),
    ] = None,
    anchor_count: Annotated[
        list[int] | None, typer.Option(help="Anchors per fit; repeat for several (nested sets).")
    ] = None,
    adapters: Annotated[
        str, typer.Option(help="Comma-separated adapter kinds, e.g. auto or procrustes,affine.")
    ] = "auto",
    two_stage: Annotated[
        bool, typer.Option(help="Also re-rank the first kind's top hits with the target model.")
    ] = True,
    rerank_depth: Annotated[
        int, typer.Option(help="How many adapter hits the two-stage row re-ranks.")
    ] = 100,
    protocol: Annotated[
        str,
        typer.Option(
            help="labelled (the dataset's judged queries), or identity: also the seed paper's "
            "protocol, a document's source vector translated must find that document (R@1, MRR)."
        ),
    ] = "labelled",
    identity_docs: Annotated[
        int, typer.Option(help="Documents sampled for the identity protocol.")
    ] = 1000,
    traffic: Annotated[
        int,
        typer.Option(
            help="Unlabelled queries besides the test ones that the receiving silo has answered: "
            "adds a hubness-correction row against them (0: none)."
        ),
    ] = 0,
    local_fit: Annotated[
        int,
        typer.Option(
            min=0,
            help="Corpus documents a local-fit row fits on (the receiving silo runs the source "
            "model itself and maps it with its own documents; 0: no such rows).",
        ),
    ] = 4096,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the rows and config as JSON here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of retention against anchor count here.")
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Embedding cache directory (default $SILOBRIDGE_CACHE_DIR or ~/.cache)."),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither read nor write the embedding cache.")
    ] = False,
    threads: Annotated[int, typer.Option(help="Threads per embedding model.")] = 2,
) -> None:
    """Measure adapter retrieval quality beside the native and no-adapter baselines."""
    from silobridge.evaluation.report import print_result, write_json, write_plot
    from silobridge.evaluation.runner import EvalConfig, EvalSession, run_evaluation

    kinds = tuple(kind.strip() for kind in adapters.split(",") if kind.strip())
    config = run_or_exit(
        lambda: EvalConfig(
            source_model=source_model,
            target_model=target_model,
            dataset=None if dataset_dir is not None else dataset,
            dataset_dir=dataset_dir,
            split=split,
            corpus_size=corpus_size,
            queries=queries,
            seed=seed,
            # A file alone means "these anchors only"; nothing at all means the public set.
            anchors=tuple(anchors) if anchors else (() if anchor_file else ("public",)),
            anchor_files=tuple(anchor_file or ()),
            anchor_counts=tuple(anchor_count or (4000,)),
            adapters=kinds,
            two_stage=two_stage,
            rerank_depth=rerank_depth,
            protocol=protocol,
            identity_docs=identity_docs,
            traffic=traffic,
            local_fit=local_fit,
        )
    )

    def evaluate() -> None:
        session = EvalSession(
            cache_dir=cache_dir, use_cache=not no_cache, threads=threads, console=err
        )
        try:
            result = run_evaluation(config, session)
        finally:
            session.close()
        print_result(result, out)
        if json_path is not None:
            write_json(result, json_path)
            err.print(f"wrote {json_path}", highlight=False)
        if plot is not None:
            write_plot(result, plot)
            err.print(f"wrote {plot}", highlight=False)

    run_or_exit(evaluate)
