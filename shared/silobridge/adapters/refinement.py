"""Refinement from traffic: a receiving silo's correction after the adapter, fitted without labels.

A silo that answers many translated queries can see where the adapter lands them: a query and
a document that are each other's nearest neighbour (by CSLS, so hubs do not pair with
everything) are most likely a match. A linear map fitted on those pairs, pulled towards the
identity (ridge: ``min ||Q W - D||² + λ ||W - I||²``), corrects what the public anchors could
not teach the adapter about this silo's domain. Measured on ``bible-web2kjv`` and
``pydoc-heading2para`` (BENCHMARKS.md): an unregularised rotation on plain nearest-neighbour
pairs loses on both, the ridge map on CSLS pairs gains on both.

Nothing here has labels, so a refinement must pass a **label-free guard** before a silo uses
it (``check_refinement``):

- *anchors*: the adapter's signed check pairs (public anchors as the adapter maps them, and the
  same anchors embedded by the silo's own model) must not move apart: a map that fits the
  traffic by bending the general mapping out of shape is refused;
- *held out*: fitted on half the pool, the map must not lower (by more than
  ``MAX_HELDOUT_DROP``) the share of the other half's queries that find a mutual partner: a map
  that does not generalise to queries it was not fitted on is refused.

Measured (BENCHMARKS.md): every map that lowered nDCG (an unregularised fit, λ = 0 or 3, or a
rotation on plain nearest-neighbour pairs) moved the anchors' mean cosine down by 0.02 or more;
the default ridge map (λ = 30) moved it by at most 0.002 and, with hubness correction against
the refined pool, raised nDCG on both built-in sets.

Pure numpy; the silo (``silo_agent/receiving/refine``) and the harness use the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from silobridge.adapters.hubness import DEFAULT_K
from silobridge.core.errors import InvalidArgument

FloatMatrix = npt.NDArray[np.float32]
IntVector = npt.NDArray[np.int64]

# Names of the check pairs inside a signed artifact (``receiving.*`` tensors, float16).
GUARD_TRANSLATED_TENSOR = "receiving.guard_translated"
GUARD_TARGETS_TENSOR = "receiving.guard_targets"
# The check pairs' share of the artifact's one gRPC message (8 MiB; the hubness reference takes
# 4): at most this many bytes, both tensors together (512 rows at 512 dimensions).
GUARD_MAX_BYTES = 1024 * 1024
GUARD_ROWS = 1024
DEFAULT_LAMBDA = 30.0
# How far the anchors' mean cosine may fall, and R@1 among them, before a refinement is refused.
MAX_ANCHOR_COSINE_DROP = 0.01
MAX_ANCHOR_R1_DROP = 0.01
# How far the share of held-out pooled queries with a mutual partner may fall. The ridge map
# that helps on the asymmetric set lowers it by 0.003-0.024 (noisy: half the pool is a few
# hundred queries); maps that hurt, by 0.017-0.08, and the anchors refuse those anyway. This
# check catches a pool that teaches nothing general (a map fitted to a few callers' queries).
MAX_HELDOUT_DROP = 0.05
# Fewer mutual pairs than this fit noise: no refinement.
MIN_PAIRS = 64
# Similarity blocks are kept to about this many entries (64 MiB of float32).
_BLOCK_ENTRIES = 16_000_000


def unit_rows(rows: npt.ArrayLike) -> FloatMatrix:
    """``rows`` as float32 unit rows (a zero row stays zero)."""
    array = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    out: FloatMatrix = array / np.maximum(norms, 1e-12)
    return out


def knn_mean(rows: FloatMatrix, others: FloatMatrix, k: int = DEFAULT_K) -> FloatMatrix:
    """Each row's mean cosine with its ``k`` nearest ``others`` (CSLS's neighbourhood term)."""
    k = max(1, min(k, others.shape[0]))
    out = np.empty(rows.shape[0], dtype=np.float32)
    step = max(1, _BLOCK_ENTRIES // max(1, others.shape[0]))
    for start in range(0, rows.shape[0], step):
        sims = rows[start : start + step] @ others.T
        out[start : start + step] = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:].mean(1)
    return out


def mutual_pairs(
    queries: npt.ArrayLike, documents: npt.ArrayLike, k: int = DEFAULT_K
) -> tuple[IntVector, IntVector]:
    """(query rows, document rows) that are each other's best match by CSLS.

    ``CSLS(q, d) = 2 cos(q, d) - r(q) - r(d)``, ``r`` the mean cosine with the ``k`` nearest of
    the other side. A query's best document and a document's best query are taken among all of
    the other side; only pairs where both agree are kept.
    """
    q = unit_rows(queries)
    d = unit_rows(documents)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1] or not len(q) or not len(d):
        raise InvalidArgument("mutual pairs need two non-empty matrices of the same dimension")
    r_q = knn_mean(q, d, k)
    r_d = knn_mean(d, q, k)
    best_doc = np.empty(len(q), dtype=np.int64)
    step = max(1, _BLOCK_ENTRIES // len(d))
    for start in range(0, len(q), step):
        scores = 2.0 * (q[start : start + step] @ d.T) - r_d[None, :]
        best_doc[start : start + step] = scores.argmax(axis=1)
    # Only the documents some query chose can be in a mutual pair: their best query among all.
    chosen = np.unique(best_doc)
    best_query = np.empty(len(chosen), dtype=np.int64)
    step = max(1, _BLOCK_ENTRIES // len(q))
    for start in range(0, len(chosen), step):
        block = d[chosen[start : start + step]]
        best_query[start : start + step] = (2.0 * (block @ q.T) - r_q[None, :]).argmax(axis=1)
    back = dict(zip(chosen.tolist(), best_query.tolist(), strict=True))
    rows = np.asarray(
        [i for i, doc in enumerate(best_doc.tolist()) if back[doc] == i], dtype=np.int64
    )
    return rows, best_doc[rows] if len(rows) else np.zeros(0, dtype=np.int64)


def fit_refinement(
    queries: npt.ArrayLike, documents: npt.ArrayLike, lam: float = DEFAULT_LAMBDA
) -> FloatMatrix | None:
    """The ridge-to-identity map fitted on the mutual pairs of ``queries`` (translated, in the
    silo's space) and ``documents``; None with fewer than ``MIN_PAIRS`` pairs."""
    if not np.isfinite(lam) or lam < 0:
        raise InvalidArgument(f"the refinement's lambda must be finite and >= 0, got {lam}")
    q = unit_rows(queries)
    d = unit_rows(documents)
    rows, docs = mutual_pairs(q, d)
    if len(rows) < MIN_PAIRS:
        return None
    a, b = q[rows].astype(np.float64), d[docs].astype(np.float64)
    eye = np.eye(a.shape[1])
    weights = np.linalg.solve(a.T @ a + lam * eye, a.T @ b + lam * eye)
    refined: FloatMatrix = weights.astype(np.float32)
    return refined


def guard_tensors(
    translated: npt.ArrayLike, targets: npt.ArrayLike, seed: int = 0
) -> dict[str, npt.NDArray[np.float16]]:
    """The check pairs a coordinator signs into an artifact: up to ``GUARD_ROWS`` public anchors
    (and ``GUARD_MAX_BYTES``) as the adapter maps them and as the target model embeds them (unit
    rows, float16)."""
    mapped = np.asarray(translated, dtype=np.float32)
    own = np.asarray(targets, dtype=np.float32)
    if mapped.shape != own.shape or mapped.ndim != 2 or mapped.shape[0] < 2:
        raise InvalidArgument(
            f"guard pairs need two matrices of the same shape (n >= 2, dim), got {mapped.shape} "
            f"and {own.shape}"
        )
    rows = np.arange(mapped.shape[0])
    budget = max(2, min(GUARD_ROWS, GUARD_MAX_BYTES // (4 * mapped.shape[1])))
    if len(rows) > budget:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), budget, replace=False))
    return {
        GUARD_TRANSLATED_TENSOR: unit_rows(mapped[rows]).astype(np.float16),
        GUARD_TARGETS_TENSOR: unit_rows(own[rows]).astype(np.float16),
    }


def apply_refinement(weights: FloatMatrix, vectors: npt.ArrayLike) -> FloatMatrix:
    """``vectors`` mapped by ``weights``, as unit rows."""
    return unit_rows(np.asarray(vectors, dtype=np.float32) @ weights)


@dataclass(frozen=True)
class GuardVerdict:
    """What the label-free guard measured, and whether it lets the refinement be used."""

    accepted: bool
    anchor_cosine: tuple[float, float]  # before, after
    anchor_r1: tuple[float, float]
    heldout_pair_rate: tuple[float, float]
    reason: str

    def describe(self) -> str:
        b, a = self.anchor_cosine
        rb, ra = self.anchor_r1
        hb, ha = self.heldout_pair_rate
        verdict = "accepted" if self.accepted else f"refused ({self.reason})"
        return (
            f"{verdict}: anchor cosine {b:.4f} -> {a:.4f}, anchor R@1 {rb:.4f} -> {ra:.4f}, "
            f"held-out mutual pairs {hb:.4f} -> {ha:.4f}"
        )


def check_refinement(
    pool: npt.ArrayLike,
    documents: npt.ArrayLike,
    guard_translated: npt.ArrayLike,
    guard_targets: npt.ArrayLike,
    *,
    lam: float = DEFAULT_LAMBDA,
    seed: int = 0,
) -> GuardVerdict:
    """Whether a refinement fitted on ``pool`` may be used (see the module's docstring).

    ``guard_translated[i]`` and ``guard_targets[i]`` are one public anchor: as the adapter maps
    it, and as the silo's own model embeds it.
    """
    q = unit_rows(pool)
    d = unit_rows(documents)
    gt = unit_rows(guard_translated)
    gy = unit_rows(guard_targets)
    if gt.shape != gy.shape or gt.ndim != 2 or gt.shape[0] < 2 or gt.shape[1] != d.shape[1]:
        raise InvalidArgument(
            f"the guard's anchor pairs {gt.shape} and {gy.shape} must be the same (n >= 2, "
            f"{d.shape[1]}) shape"
        )
    order = np.random.default_rng(seed).permutation(len(q))
    half = len(q) // 2
    fit_half, check_half = q[order[:half]], q[order[half:]]
    weights = fit_refinement(fit_half, d, lam)
    before = (_mean_cosine(gt, gy), _r1(gt, gy), _pair_rate(check_half, d))
    if weights is None:
        return GuardVerdict(
            False, (before[0],) * 2, (before[1],) * 2, (before[2],) * 2,
            f"fewer than {MIN_PAIRS} mutual pairs in half the pool",
        )  # fmt: skip
    mapped = apply_refinement(weights, gt)
    after = (
        _mean_cosine(mapped, gy),
        _r1(mapped, gy),
        _pair_rate(apply_refinement(weights, check_half), d),
    )
    reasons = []
    if before[0] - after[0] > MAX_ANCHOR_COSINE_DROP:
        reasons.append(f"the anchors' mean cosine fell by {before[0] - after[0]:.4f}")
    if before[1] - after[1] > MAX_ANCHOR_R1_DROP:
        reasons.append(f"the anchors' R@1 fell by {before[1] - after[1]:.4f}")
    if before[2] - after[2] > MAX_HELDOUT_DROP:
        reasons.append(f"held-out queries with a mutual partner fell by {before[2] - after[2]:.4f}")
    return GuardVerdict(
        not reasons,
        (before[0], after[0]),
        (before[1], after[1]),
        (before[2], after[2]),
        "; ".join(reasons),
    )


def _mean_cosine(a: FloatMatrix, b: FloatMatrix) -> float:
    return float(np.einsum("ij,ij->i", a, b).mean())


def _r1(a: FloatMatrix, b: FloatMatrix) -> float:
    return float((np.argmax(a @ b.T, axis=1) == np.arange(len(a))).mean())


def _pair_rate(queries: FloatMatrix, documents: FloatMatrix) -> float:
    return len(mutual_pairs(queries, documents)[0]) / max(1, len(queries))
