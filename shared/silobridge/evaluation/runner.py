"""The evaluation matrix: native, source-native, none, each adapter kind and two-stage, per anchor
set and count; optionally the identity protocol beside the labelled one."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from silobridge.core.errors import InvalidArgument
from silobridge.core.spaces import FloatMatrix
from silobridge.embedding.embedders import Embedder, load_embedder
from silobridge.evaluation.anchors import resolve_anchor_sources
from silobridge.evaluation.cache import EmbeddingCache, default_cache_dir, embed_cached
from silobridge.evaluation.datasets import RetrievalDataset, load_beir, load_builtin
from silobridge.evaluation.metrics import (
    IntMatrix,
    arr_at_k,
    mean_mrr,
    mean_ndcg,
    mean_recall,
    retention,
)
from silobridge.evaluation.receiving import hubness, hubness_rerank
from silobridge.evaluation.search import rerank, top_k
from silobridge.evaluation.timing import MIN_APPLY_CALLS, describe_machine, median_apply_us

# The JSON row fields other tools read; every row carries each of them (None where n/a).
ROW_FIELDS: tuple[str, ...] = (
    "method",
    "kind",
    "receiving",
    "anchors",
    "anchor_count",
    "ndcg@10",
    "recall@10",
    "mrr@10",
    "retention_ndcg@10",
    "retention_recall@10",
    "source_native_ndcg@10",
    "retention_achievable_ndcg@10",
    "identity_r@1",
    "identity_mrr@10",
    "arr@10",
    "train_s",
    "apply_us",
)
# "source-native": the source model searching the corpus embedded by itself. No adapter can be
# expected to beat min(native, source-native), the "achievable" retention is measured against.
METHODS: tuple[str, ...] = ("native", "source-native", "none", "adapter", "two-stage")
CUTOFF = 10
AUTO = "auto"
# ``labelled``: the dataset's judged queries. ``identity`` adds the seed paper's protocol beside
# it: a document's source-space vector, translated, must find the same document in the target
# index (R@1, MRR@10), over a sample of ``identity_docs`` documents.
PROTOCOLS = ("labelled", "identity")
DEFAULT_IDENTITY_DOCS = 1000


@dataclass(frozen=True)
class EvalConfig:
    """One (source model, target model) evaluation; every field has a CLI option of its name."""

    source_model: str
    target_model: str
    dataset: str | None = "bible-web2kjv"
    dataset_dir: Path | None = None  # a BEIR directory; wins over ``dataset`` when set
    split: str | None = None
    corpus_size: int | None = None
    queries: int | None = None
    seed: int = 0
    anchors: tuple[str, ...] = ("public",)
    anchor_files: tuple[Path, ...] = ()
    anchor_counts: tuple[int, ...] = (4000,)
    adapters: tuple[str, ...] = (AUTO,)
    two_stage: bool = True
    rerank_depth: int = 100
    apply_calls: int = MIN_APPLY_CALLS
    protocol: str = "labelled"
    identity_docs: int = DEFAULT_IDENTITY_DOCS
    # Receiving-side rows for the first adapter kind: hubness correction against its
    # translated anchors (``receiving.py``).
    hubness: bool = True
    # Unlabelled queries disjoint from the test ones (the dataset's traffic pool) the receiving
    # silo has answered: 0 for none; with N, a hubness row against the translated traffic.
    traffic: int = 0

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InvalidArgument(
                f"unknown protocol {self.protocol!r}; choose from {', '.join(PROTOCOLS)}"
            )
        if self.identity_docs < 1:
            raise InvalidArgument("--identity-docs must be at least 1")
        if self.traffic < 0:
            raise InvalidArgument("--traffic must not be negative")
        if not self.anchor_counts or min(self.anchor_counts) < 1:
            raise InvalidArgument("every --anchor-count must be at least 1")
        if not self.adapters:
            raise InvalidArgument("--adapters names no adapter kind")
        if self.rerank_depth < CUTOFF:
            raise InvalidArgument(f"the re-rank depth must be at least {CUTOFF}")
        if self.apply_calls < MIN_APPLY_CALLS:
            raise InvalidArgument(f"apply latency needs at least {MIN_APPLY_CALLS} calls")
        from silobridge.adapters import KINDS

        unknown = [kind for kind in self.adapters if kind not in KINDS]
        if unknown:
            raise InvalidArgument(
                f"unknown adapter kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}"
            )


@dataclass(frozen=True)
class EvalRow:
    """One line of the result table; ``to_json`` gives the documented row schema."""

    method: str
    kind: str | None
    anchors: str | None
    anchor_count: int | None
    ndcg: float | None
    recall: float | None
    mrr: float | None
    retention_ndcg: float | None
    retention_recall: float | None
    arr: float | None
    train_s: float | None
    apply_us: float | None
    source_model: str
    target_model: str
    chosen_kind: str | None = None
    heldout_ndcg: float | None = None
    source_native_ndcg: float | None = None
    # nDCG@10 over min(native, source-native): what an adapter can be expected to reach.
    retention_achievable_ndcg: float | None = None
    # The identity protocol (``--protocol identity``), None otherwise.
    identity_r1: float | None = None
    identity_mrr: float | None = None
    # The receiving silo's steps after the adapter ("" for none), e.g. "hubness(anchors)".
    receiving: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kind": self.kind,
            "receiving": self.receiving,
            "anchors": self.anchors,
            "anchor_count": self.anchor_count,
            "ndcg@10": self.ndcg,
            "recall@10": self.recall,
            "mrr@10": self.mrr,
            "retention_ndcg@10": self.retention_ndcg,
            "retention_recall@10": self.retention_recall,
            "source_native_ndcg@10": self.source_native_ndcg,
            "retention_achievable_ndcg@10": self.retention_achievable_ndcg,
            "identity_r@1": self.identity_r1,
            "identity_mrr@10": self.identity_mrr,
            "arr@10": self.arr,
            "train_s": self.train_s,
            "apply_us": self.apply_us,
            "source_model": self.source_model,
            "target_model": self.target_model,
            "chosen_kind": self.chosen_kind,
            "heldout_ndcg@10": self.heldout_ndcg,
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> EvalRow:
        """The inverse of ``to_json``, for tools that re-read a result file."""
        return cls(
            method=row["method"],
            kind=row["kind"],
            anchors=row["anchors"],
            anchor_count=row["anchor_count"],
            ndcg=row["ndcg@10"],
            recall=row["recall@10"],
            mrr=row["mrr@10"],
            retention_ndcg=row["retention_ndcg@10"],
            retention_recall=row["retention_recall@10"],
            arr=row["arr@10"],
            train_s=row["train_s"],
            apply_us=row["apply_us"],
            source_model=row["source_model"],
            target_model=row["target_model"],
            chosen_kind=row.get("chosen_kind"),
            heldout_ndcg=row.get("heldout_ndcg@10"),
            source_native_ndcg=row.get("source_native_ndcg@10"),
            retention_achievable_ndcg=row.get("retention_achievable_ndcg@10"),
            identity_r1=row.get("identity_r@1"),
            identity_mrr=row.get("identity_mrr@10"),
            receiving=row.get("receiving", ""),
        )


@dataclass(frozen=True)
class EvalResult:
    rows: tuple[EvalRow, ...]
    config: EvalConfig
    dataset: dict[str, object]
    date: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    machine: str = field(default_factory=describe_machine)

    def to_json(self) -> dict[str, Any]:
        config = {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in asdict(self.config).items()
        }
        config["anchor_files"] = [str(p) for p in self.config.anchor_files]
        return {
            "rows": [row.to_json() for row in self.rows],
            "config": config,
            "dataset": self.dataset,
            "date": self.date,
            "machine": self.machine,
        }


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
        if self.console is None:
            yield None
            return
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        ) as bar:
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
    anchor_texts = {source.name: source.take(top) for source in sources}  # fails before embedding
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
    source_native = top_k(source_queries, source_corpus, CUTOFF)
    scorer = _Scorer(config, dataset, top_k(native_queries, corpus, CUTOFF), source_native)
    identity = _Identity(config, source_corpus, corpus)
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
                    references = {"anchors": adapter.apply(source_anchors[:count])}
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
    return EvalResult(rows=tuple(rows), config=config, dataset=dataset.describe())


class _Scorer:
    """Turns rankings into rows, against the native rankings of the same queries."""

    def __init__(
        self,
        config: EvalConfig,
        dataset: RetrievalDataset,
        native: IntMatrix,
        source_native: IntMatrix,
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.native = native
        self.native_ndcg, self.native_recall, self.native_mrr = self._metrics(native)
        self.source_native_ndcg = self._metrics(source_native)[0]
        self.achievable_ndcg = (
            None
            if self.native_ndcg is None or self.source_native_ndcg is None
            else min(self.native_ndcg, self.source_native_ndcg)
        )

    def _metrics(self, ranked: IntMatrix) -> tuple[float | None, float | None, float | None]:
        if not self.dataset.labelled:
            return None, None, None
        qrels = self.dataset.qrels
        return (
            mean_ndcg(ranked, qrels, CUTOFF),
            mean_recall(ranked, qrels, CUTOFF),
            mean_mrr(ranked, qrels, CUTOFF),
        )

    def row(
        self,
        method: str,
        ranked: IntMatrix,
        *,
        kind: str | None = None,
        anchors: str | None = None,
        count: int | None = None,
        train_s: float | None = None,
        apply_us: float | None = None,
        chosen_kind: str | None = None,
        heldout: float | None = None,
        identity: tuple[float, float] | None = None,
        receiving: str = "",
    ) -> EvalRow:
        ndcg, recall, mrr = self._metrics(ranked)
        identity_r1, identity_mrr = identity if identity is not None else (None, None)
        return EvalRow(
            method=method,
            kind=kind,
            anchors=anchors,
            anchor_count=count,
            ndcg=ndcg,
            recall=recall,
            mrr=mrr,
            retention_ndcg=retention(ndcg, self.native_ndcg),
            retention_recall=retention(recall, self.native_recall),
            # Native agrees with itself by definition; computing it gives exactly 1.0 too.
            arr=arr_at_k(ranked, self.native, CUTOFF),
            train_s=train_s,
            apply_us=apply_us,
            source_model=self.config.source_model,
            target_model=self.config.target_model,
            chosen_kind=chosen_kind,
            heldout_ndcg=heldout,
            source_native_ndcg=self.source_native_ndcg,
            retention_achievable_ndcg=retention(ndcg, self.achievable_ndcg),
            identity_r1=identity_r1,
            identity_mrr=identity_mrr,
            receiving=receiving,
        )


class _Identity:
    """The identity protocol: each sampled document's own vector, in the query's space, must
    find that document in the target index. Off (every ``of`` is None) unless asked for."""

    def __init__(self, config: EvalConfig, source_corpus: FloatMatrix, corpus: FloatMatrix):
        self.on = config.protocol == "identity"
        count = min(config.identity_docs, corpus.shape[0])
        rng = np.random.default_rng(config.seed)
        self.docs = np.sort(rng.choice(corpus.shape[0], size=count, replace=False))
        self.sources = source_corpus[self.docs]
        self.targets = corpus[self.docs]
        self.corpus = corpus

    def of(self, vectors: FloatMatrix) -> tuple[float, float] | None:
        """(R@1, MRR@10) of ``vectors`` (one per sampled document, in the target space)."""
        if not self.on:
            return None
        ranked = top_k(vectors, self.corpus, CUTOFF)
        found = ranked == self.docs[:, None]
        rank = np.where(found.any(axis=1), found.argmax(axis=1) + 1, 0)
        reciprocal = np.where(rank > 0, 1.0 / np.maximum(rank, 1), 0.0)
        return float(np.mean(rank == 1)), float(np.mean(reciprocal))


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
