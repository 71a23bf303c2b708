"""The migration's own adapters, fitted on the silo's in-domain anchors (its documents).

A spread sample of the silo's documents is embedded with the new model; with their stored
source vectors they are anchor pairs that never leave the silo. Two affine maps are fitted:
*backward* (source -> target) gives every not yet re-encoded document a provisional vector in
the new space, and maps old-space queries once the old generation is gone; *forward*
(target -> source) answers new-space queries on the old index while the provisional vectors
are being written. Affine was chosen by measurement (BENCHMARKS.md, "Migration"): mapping the
documents forward beat mapping the queries back on the demo's KJV pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from silobridge.adapters import Adapter, FitConfig, fit
from silobridge.adapters.artifact import load_adapter, save_adapter
from silobridge.core.errors import FailedPrecondition, InvalidArgument
from silobridge.core.spaces import SpaceDescriptor
from silobridge.embedding.embedders import Embedder
from silobridge.silo_agent.store.docstore import DocStore

FloatMatrix = npt.NDArray[np.float32]
DEFAULT_SAMPLE = 8_192
MIN_SAMPLE = 64
KIND = "affine"
# The anchors are the silo's own texts: the artifact names their sample, not a public set.
_LOCAL_ANCHORS = "0" * 64
HELD_OUT = 0.1
AGREEMENT_K = 10


@dataclass(frozen=True)
class LocalAdapters:
    forward: Adapter  # target -> source
    backward: Adapter  # source -> target
    anchors: int
    agreement: float  # held-out share of the native top 10 the provisional vectors find

    def save(self, directory: Path, source: SpaceDescriptor, target: SpaceDescriptor) -> None:
        for name, adapter, src, tgt in (
            ("forward", self.forward, target, source),
            ("backward", self.backward, source, target),
        ):
            save_adapter(
                directory / name, adapter, source=src, target=tgt, anchor_set_sha256=_LOCAL_ANCHORS
            )

    @classmethod
    def load(
        cls, directory: Path, source: SpaceDescriptor, target: SpaceDescriptor
    ) -> LocalAdapters:
        if not (directory / "backward").is_dir():
            raise FailedPrecondition(
                f"the migration's adapters are missing from {directory}; roll the migration "
                "back (`silobridge silo migrate rollback`) and start it again"
            )
        forward = load_adapter(
            directory / "forward", expected_source=target, expected_target=source
        ).adapter
        backward = load_adapter(
            directory / "backward", expected_source=source, expected_target=target
        ).adapter
        anchors = int(backward.metrics.get("anchors", 0))
        return cls(forward, backward, anchors, float(backward.metrics.get("agreement@10", 0.0)))


def sample(docstore: DocStore, count: int) -> tuple[list[str], FloatMatrix]:
    """Texts and source vectors of ``count`` documents (or all) spread evenly over the keys."""
    with docstore.reading() as conn:
        keys = [int(row[0]) for row in conn.execute("SELECT key FROM documents ORDER BY key")]
        if not keys:
            return [], np.zeros((0, 0), dtype=np.float32)
        picks = np.unique(np.linspace(0, len(keys) - 1, num=min(count, len(keys))).round())
        chosen = [keys[int(i)] for i in picks]
        rows = []
        for start in range(0, len(chosen), 500):
            part = chosen[start : start + 500]
            marks = ",".join("?" * len(part))
            rows.extend(
                conn.execute(
                    f"SELECT text, vector FROM documents WHERE key IN ({marks}) ORDER BY key",  # noqa: S608
                    part,
                ).fetchall()
            )
    flat = np.frombuffer(b"".join(row[1] for row in rows), dtype="<f4")
    return [str(row[0]) for row in rows], flat.reshape(len(rows), -1).astype(np.float32)


def fit_local(
    docstore: DocStore, target_model: Embedder, sample_size: int, batch_size: int
) -> LocalAdapters:
    """Embed the sample with the new model and fit both maps; measures the held-out agreement."""
    if sample_size < MIN_SAMPLE:
        raise InvalidArgument(f"sample_size must be at least {MIN_SAMPLE}, got {sample_size}")
    texts, source = sample(docstore, sample_size)
    if len(texts) < MIN_SAMPLE:
        raise FailedPrecondition(
            f"the silo holds {len(texts)} documents; a migration fits its adapters on at least "
            f"{MIN_SAMPLE} of them (re-ingest the corpus with the new model instead)"
        )
    target = target_model.embed(texts, batch_size=batch_size)
    config = FitConfig(kind=KIND)
    agreement = _agreement(source, target, config)
    forward = fit(target, source, config)
    backward = fit(source, target, config)
    backward.metrics["agreement@10"] = agreement
    return LocalAdapters(forward, backward, len(texts), agreement)


def _agreement(source: FloatMatrix, target: FloatMatrix, config: FitConfig) -> float:
    """Fit on 90%, then: of each held-out text's native top 10 among the sample documents in
    the new space, the share its search over their provisional vectors finds (0% re-encoded)."""
    count = source.shape[0]
    held = np.arange(count)[:: max(1, round(1 / HELD_OUT))]
    train = np.setdiff1d(np.arange(count), held)
    adapter = fit(source[train], target[train], config)
    documents = adapter.apply(source)
    k = min(AGREEMENT_K, count - 1)
    native = _top(target[held] @ target.T, held, k)
    mixed = _top(target[held] @ documents.T, held, k)
    overlap = [len(set(a) & set(b)) / k for a, b in zip(native, mixed, strict=True)]
    return float(np.mean(overlap))


def _top(scores: FloatMatrix, own: npt.NDArray[np.int64], k: int) -> list[list[int]]:
    scores = scores.copy()
    scores[np.arange(own.shape[0]), own] = -np.inf  # a text is not its own neighbour
    return [list(row) for row in np.argsort(-scores, axis=1)[:, :k]]
