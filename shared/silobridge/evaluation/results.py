"""What an evaluation is asked (``EvalConfig``) and what it reports (``EvalRow``, ``EvalResult``):
the documented row schema that result files, the bench and the plots read."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from silobridge.core.errors import InvalidArgument
from silobridge.evaluation.timing import MIN_APPLY_CALLS, describe_machine

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
    # Documents of the corpus a local-fit row fits on (the silo holding the source model): 0 off.
    local_fit: int = 4096

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
    # For a refinement row: the label-free guard's verdict ("accepted" or "refused: why").
    guard: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kind": self.kind,
            "receiving": self.receiving,
            "guard": self.guard,
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
            guard=row.get("guard", ""),
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
