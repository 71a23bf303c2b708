"""The evaluation matrix: native, source-native, none, each adapter kind and two-stage, per anchor
set and count; optionally the identity protocol beside the labelled one. The row schema is in
``results``, the scoring in ``scoring``; their names are importable from here as before."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import Progress

from silobridge.adapters.anchor_preference import (
    MAX_DOCUMENTS,
    interleave_preferences,
    preference_scores,
    preferred,
    spread_sample,
)
from silobridge.adapters.refinement import (
    GUARD_TARGETS_TENSOR,
    GUARD_TRANSLATED_TENSOR,
    apply_refinement,
    check_refinement,
    fit_refinement,
    guard_tensors,
)
from silobridge.core.cli_support import progress_display
from silobridge.core.errors import InvalidArgument
from silobridge.core.spaces import FloatMatrix
from silobridge.embedding.embedders import Embedder, load_embedder
from silobridge.evaluation.anchors import PREFERRED, resolve_anchor_sources
from silobridge.evaluation.cache import EmbeddingCache, default_cache_dir, embed_cached
from silobridge.evaluation.datasets import RetrievalDataset, load_beir, load_builtin
from silobridge.evaluation.receiving import (
    LOCAL_FIT_KIND,
    hubness,
    hubness_rerank,
    local_fit_sample,
    reference_from_translated,
)
from silobridge.evaluation.results import (
    AUTO,
    CUTOFF,
    DEFAULT_IDENTITY_DOCS,
    METHODS,
    PROTOCOLS,
    ROW_FIELDS,
    EvalConfig,
    EvalResult,
    EvalRow,
)
from silobridge.evaluation.scoring import Identity, Scorer
from silobridge.evaluation.search import rerank, top_k
from silobridge.evaluation.timing import median_apply_us


class EvalSession:
    """Loaded embedders and the embedding cache, shared by several ``run_evaluation`` calls."""

    def __init__(
        self,
        *,
        cache_dir: Path | None = None,
        use_cache: bool = True,
        threads: int = 2,
        console: Console | None = None,
    ) -> None:
        self.cache = EmbeddingCache((cache_dir or default_cache_dir()) if use_cache else None)
        self.threads = threads
        self.console = console
        self._embedders: dict[str, Embedder] = {}

    def embedder(self, spec: str) -> Embedder:
        if spec not in self._embedders:
            self._embedders[spec] = load_embedder(spec, threads=self.threads)
        return self._embedders[spec]

    def close(self) -> None:
        self.cache.close()

    @contextmanager
    def progress(self) -> Iterator[Progress | None]:
        # One task per (model, texts) embedded, on the shared display (a terminal only).
        bar = None if self.console is None else progress_display(unit="texts", console=self.console)
        if bar is None:
            yield None
            return
        with bar:
            yield bar


def load_dataset(config: EvalConfig) -> RetrievalDataset:
    size, queries, seed = config.corpus_size, config.queries, config.seed
    if config.dataset_dir is not None:
        return load_beir(
            config.dataset_dir, split=config.split, corpus_size=size, queries=queries, seed=seed
        )
    if config.dataset is None:
        raise InvalidArgument("name a dataset (--dataset) or a BEIR directory (--dataset-dir)")
    return load_builtin(config.dataset, corpus_size=size, queries=queries, seed=seed)


def run_evaluation(config: EvalConfig, session: EvalSession | None = None) -> EvalResult:
    """Embed, fit and score every row of the matrix ``config`` describes."""
    config.validate()
    own_session = session is None
    active = session or EvalSession()
    try:
        return _run(config, active, load_dataset(config))
    finally:
        if own_session:
            active.close()


def _run(config: EvalConfig, session: EvalSession, dataset: RetrievalDataset) -> EvalResult:
    from silobridge.adapters import FitConfig, fit

    sources = resolve_anchor_sources(config.anchors, config.anchor_files, dataset, config.seed)
    top = max(config.anchor_counts)
    # Fails before embedding; a preference pool is embedded whole and reordered below.
    anchor_texts = {
        source.name: source.texts if source.name == PREFERRED else source.take(top)
        for source in sources
    }
    source_model = session.embedder(config.source_model)
    target_model = session.embedder(config.target_model)
    with session.progress() as bar:

        def embed(model: Embedder, texts: Sequence[str], label: str) -> FloatMatrix:
            return embed_cached(model, texts, session.cache, label=label, progress=bar)

        corpus = embed(target_model, dataset.corpus_texts, f"{dataset.name} corpus")
        native_queries = embed(target_model, dataset.query_texts, f"{dataset.name} queries")
        source_queries = embed(source_model, dataset.query_texts, f"{dataset.name} queries")
        source_corpus = embed(source_model, dataset.corpus_texts, f"{dataset.name} corpus")
        traffic = (
            embed(source_model, _traffic_texts(dataset, config.traffic), f"{dataset.name} traffic")
            if config.traffic
            else None
        )
        anchor_pairs = {
            name: (
                embed(source_model, texts, f"{name} anchors"),
                embed(target_model, texts, f"{name} anchors"),
            )
            for name, texts in anchor_texts.items()
        }
    if PREFERRED in anchor_pairs:
        anchor_pairs[PREFERRED] = preferred_pairs(
            *anchor_pairs[PREFERRED], source_corpus, corpus, top
        )
    source_native = top_k(source_queries, source_corpus, CUTOFF)
    scorer = Scorer(config, dataset, top_k(native_queries, corpus, CUTOFF), source_native)
    identity = Identity(config, source_corpus, corpus)
    rows = [
        scorer.row("native", scorer.native, identity=identity.of(identity.targets)),
        scorer.row("source-native", source_native),
    ]
    if source_model.dimension == target_model.dimension:
        rows.append(
            scorer.row(
                "none",
                top_k(source_queries, corpus, CUTOFF),
                identity=identity.of(identity.sources),
            )
        )
    for name, (source_anchors, target_anchors) in anchor_pairs.items():
        for count in sorted(set(config.anchor_counts)):
            for position, kind in enumerate(dict.fromkeys(config.adapters)):
                started = time.perf_counter()
                adapter = fit(
                    source_anchors[:count],
                    target_anchors[:count],
                    FitConfig(kind=kind, seed=config.seed),
                )
                train_s = time.perf_counter() - started
                depth = config.rerank_depth if position == 0 and config.two_stage else CUTOFF
                ranked = top_k(adapter.apply(source_queries), corpus, depth)
                chosen = str(adapter.kind)
                label = f"{AUTO}→{chosen}" if kind == AUTO and chosen != AUTO else kind
                rows.append(
                    scorer.row(
                        "adapter",
                        ranked[:, :CUTOFF],
                        kind=label,
                        anchors=name,
                        count=count,
                        train_s=train_s,
                        apply_us=median_apply_us(adapter, source_queries, config.apply_calls),
                        chosen_kind=chosen,
                        heldout=_heldout_ndcg(adapter.metrics),
                        identity=identity.of(adapter.apply(identity.sources)),
                    )
                )
                if position == 0 and config.hubness:
                    # The silo's side: each document's hubness against the translated anchors
                    # (which it has), subtracted while re-scoring the index's top candidates.
                    candidates = (
                        ranked
                        if ranked.shape[1] >= config.rerank_depth
                        else top_k(adapter.apply(source_queries), corpus, config.rerank_depth)
                    )
                    # As the silo gets them: sampled to the artifact's budget, float16.
                    translated = adapter.apply(source_anchors[:count])
                    references: dict[str, npt.NDArray[np.generic]] = {
                        "anchors": reference_from_translated(translated, config.seed)
                    }
                    if traffic is not None:
                        references["traffic"] = adapter.apply(traffic)
                    for reference, vectors in references.items():
                        penalty = hubness(corpus, vectors)
                        corrected = hubness_rerank(
                            candidates, adapter.apply(source_queries), corpus, penalty, CUTOFF
                        )
                        rows.append(
                            scorer.row(
                                "adapter",
                                corrected,
                                kind=label,
                                anchors=name,
                                count=count,
                                train_s=train_s,
                                chosen_kind=chosen,
                                receiving=f"hubness({reference})",
                            )
                        )
                    if traffic is not None:
                        rows.extend(
                            _refine_rows(
                                scorer,
                                adapter.apply(traffic),
                                adapter.apply(source_queries),
                                corpus,
                                guard_tensors(translated, target_anchors[:count], config.seed),
                                config,
                                kind=label,
                                anchors=name,
                                count=count,
                                chosen_kind=chosen,
                            )
                        )
                if position == 0 and config.two_stage:
                    # The adapter shortlists; the target model's own query vector orders it.
                    reranked = rerank(ranked, native_queries, corpus, CUTOFF)
                    rows.append(
                        scorer.row(
                            "two-stage",
                            reranked,
                            kind=label,
                            anchors=name,
                            count=count,
                            train_s=train_s,
                            apply_us=None,
                            chosen_kind=chosen,
                        )
                    )
    if config.local_fit:
        rows.extend(_local_fit_rows(config, scorer, source_corpus, corpus, source_queries))
    return EvalResult(rows=tuple(rows), config=config, dataset=dataset.describe())


def _local_fit_rows(
    config: EvalConfig,
    scorer: Scorer,
    source_corpus: FloatMatrix,
    corpus: FloatMatrix,
    source_queries: FloatMatrix,
) -> list[EvalRow]:
    """The silo's local fit (its own documents embedded by both models), alone and with the
    hubness correction against its own translated sample."""
    from silobridge.adapters import FitConfig, fit

    picked = local_fit_sample(corpus.shape[0], config.local_fit)
    started = time.perf_counter()
    adapter = fit(
        source_corpus[picked], corpus[picked], FitConfig(kind=LOCAL_FIT_KIND, seed=config.seed)
    )
    train_s = time.perf_counter() - started
    queries = adapter.apply(source_queries)
    ranked = top_k(queries, corpus, max(CUTOFF, config.rerank_depth))
    reference = reference_from_translated(adapter.apply(source_corpus[picked]), config.seed)
    corrected = hubness_rerank(ranked, queries, corpus, hubness(corpus, reference), CUTOFF)
    return [
        scorer.row(
            "adapter",
            result,
            kind=LOCAL_FIT_KIND,
            anchors="own-documents",
            count=len(picked),
            train_s=train_s,
            receiving=steps,
        )
        for result, steps in (
            (ranked[:, :CUTOFF], "local-fit"),
            (corrected, "local-fit+hubness(own)"),
        )
    ]


def preferred_pairs(
    source_pool: FloatMatrix,
    target_pool: FloatMatrix,
    source_corpus: FloatMatrix,
    corpus: FloatMatrix,
    count: int,
) -> tuple[FloatMatrix, FloatMatrix]:
    """The pool's anchor pairs in the order the coordinator would build a domain-aware set: each
    silo's own ranking of the pool against its documents (``adapters/anchor_preference``),
    interleaved. The source silo is taken to hold the same corpus, embedded by its own model
    (a symmetric federation); every prefix is the set of that size."""
    if count > source_pool.shape[0]:
        raise InvalidArgument(
            f"{count} anchors asked of the {PREFERRED!r} pool of {source_pool.shape[0]} texts"
        )
    lists = []
    for pool, documents in ((target_pool, corpus), (source_pool, source_corpus)):
        sample = documents[spread_sample(documents.shape[0], MAX_DOCUMENTS)]
        lists.append(preferred(preference_scores(pool, sample), count))
    order = interleave_preferences(lists, count, source_pool.shape[0])
    return source_pool[order], target_pool[order]


def _refine_rows(
    scorer: Scorer,
    traffic: FloatMatrix,
    queries: FloatMatrix,
    corpus: FloatMatrix,
    guard: dict[str, npt.NDArray[np.float16]],
    config: EvalConfig,
    **labels: Any,
) -> list[EvalRow]:
    """Refinement from traffic as the silo fits it (``silo_agent/receiving/refine``): the
    guard's verdict on the traffic, then the test queries with the map fitted on all of it,
    alone and with hubness correction against the traffic as the map moves it. Measured even
    where the guard refuses, so the table shows what the guard saved."""
    verdict = check_refinement(
        traffic,
        corpus,
        guard[GUARD_TRANSLATED_TENSOR],
        guard[GUARD_TARGETS_TENSOR],
        seed=config.seed,
    )
    weights = fit_refinement(traffic, corpus)
    if weights is None:
        return []
    guard_text = "accepted" if verdict.accepted else f"refused: {verdict.reason}"
    mapped = apply_refinement(weights, queries)
    ranked = top_k(mapped, corpus, max(CUTOFF, config.rerank_depth))
    penalty = hubness(corpus, apply_refinement(weights, traffic))
    corrected = hubness_rerank(ranked, mapped, corpus, penalty, CUTOFF)
    return [
        scorer.row("adapter", result, receiving=steps, guard=guard_text, **labels)
        for result, steps in (
            (ranked[:, :CUTOFF], "refine(traffic)"),
            (corrected, "refine(traffic)+hubness(traffic)"),
        )
    ]


def _traffic_texts(dataset: RetrievalDataset, count: int) -> list[str]:
    pool = dataset.traffic_pool
    if len(pool) < count:
        raise InvalidArgument(
            f"--traffic {count}: {dataset.name} has {len(pool)} queries besides the test ones; "
            "lower --traffic or sample fewer test queries with --queries"
        )
    return list(pool[:count])


def _heldout_ndcg(metrics: dict[str, float]) -> float | None:
    for key in ("heldout_ndcg@10", "heldout_ndcg", "val_ndcg@10"):
        if key in metrics:
            return float(metrics[key])
    return None


__all__ = [
    "AUTO",
    "CUTOFF",
    "DEFAULT_IDENTITY_DOCS",
    "METHODS",
    "PROTOCOLS",
    "ROW_FIELDS",
    "EvalConfig",
    "EvalResult",
    "EvalRow",
    "EvalSession",
    "load_dataset",
    "run_evaluation",
]
