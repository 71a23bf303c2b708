"""Rankings into rows: metrics against the native ranking and the achievable ceiling, and the
identity protocol (a document's own translated vector must find it)."""

from __future__ import annotations

import numpy as np

from silobridge.core.spaces import FloatMatrix
from silobridge.evaluation.datasets import RetrievalDataset
from silobridge.evaluation.metrics import (
    IntMatrix,
    arr_at_k,
    mean_mrr,
    mean_ndcg,
    mean_recall,
    retention,
)
from silobridge.evaluation.results import CUTOFF, EvalConfig, EvalRow
from silobridge.evaluation.search import top_k


class Scorer:
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
        guard: str = "",
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
            guard=guard,
        )


class Identity:
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
