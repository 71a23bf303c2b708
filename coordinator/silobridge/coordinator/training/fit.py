"""Train, calibrate, sign and record one adapter between two registered embedding spaces."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from silobridge.adapters import Adapter, FitConfig, fit
from silobridge.adapters.artifact import load_adapter, save_adapter, weights_sha256
from silobridge.adapters.hubness import REFERENCE_TENSOR, reference_from_translated
from silobridge.adapters.refinement import guard_tensors
from silobridge.coordinator.search.calibration import fit_calibration
from silobridge.coordinator.state.records import AdapterRecord
from silobridge.coordinator.state.store import CoordinatorState, FloatMatrix
from silobridge.core.errors import FailedPrecondition, InvalidArgument
from silobridge.core.spaces import SpaceDescriptor

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from silobridge.coordinator.anchors.manifest import AnchorSetInfo

ProgressFn = Callable[[str, str], None]  # (stage, message)
# The fit's held-out quality, as ``silobridge.adapters.fit`` measures it; the floor applies to it.
QUALITY_METRIC = "heldout_ndcg@10"
QUALITY_FLOOR_KEY = "[training] min_heldout_ndcg"


def adapter_id_for(
    source: SpaceDescriptor,
    target: SpaceDescriptor,
    anchor_set_sha256: str,
    kind: str,
    weights_sha256: str,
) -> str:
    """The id of an adapter: its spaces, anchors and kind, and the hash of its weights.

    Retraining that changes the weights gives a new id, so a silo that cached the old artifact
    by id fetches the new one instead of serving stale weights.
    """
    return (
        f"{source.fingerprint[:8]}-{target.fingerprint[:8]}-{anchor_set_sha256[:8]}-{kind}-"
        f"{weights_sha256[:12]}"
    )


def check_quality(metrics: dict[str, float], floor: float) -> None:
    """Refuse (``FailedPrecondition``) an adapter whose held-out quality is below ``floor``."""
    value = metrics.get(QUALITY_METRIC)
    if value is None or not value >= floor:
        shown = "not measured" if value is None else f"{value:.3f}"
        raise FailedPrecondition(
            f"the fitted adapter's {QUALITY_METRIC} is {shown}, below the quality floor "
            f"{floor:.3f} ({QUALITY_FLOOR_KEY} in coordinator.toml); it was not signed. Check "
            "both silos' anchor vectors (an adapter this poor maps queries to noise), or lower "
            "the floor knowingly"
        )


def train_adapter(
    state: CoordinatorState,
    *,
    source: SpaceDescriptor,
    target: SpaceDescriptor,
    source_vectors: FloatMatrix,
    target_vectors: FloatMatrix,
    anchor_set: AnchorSetInfo,
    fit_config: FitConfig,
    signing_key: Ed25519PrivateKey,
    progress: ProgressFn | None = None,
    quality_floor: float = 0.0,
) -> AdapterRecord:
    """Fit a ``source`` -> ``target`` adapter on the anchor pairs, calibrate it, sign and store it.

    Row i of ``source_vectors`` and ``target_vectors`` is anchor i of ``anchor_set`` embedded
    in each space. The calibration statistics go into the adapter's metrics before it is saved,
    so the signed manifest carries them; the translated anchors go into the artifact as the
    receiving silo's hubness reference (``adapters/hubness.py``). Stages reported: ``fit``,
    ``calibrate``, ``store``. An adapter whose held-out nDCG is below ``quality_floor`` is
    refused before it is signed.
    """
    report: ProgressFn = progress if progress is not None else _silent
    source_rows = _checked_anchor_matrix(source_vectors, source, anchor_set, "source")
    target_rows = _checked_anchor_matrix(target_vectors, target, anchor_set, "target")

    count = source_rows.shape[0]
    report("fit", f"fitting {fit_config.kind} on {count} anchor pairs")
    adapter = fit(
        source_rows, target_rows, fit_config, progress=lambda message: report("fit", message)
    )
    check_quality(adapter.metrics, quality_floor)

    report("calibrate", f"estimating the unrelated-score null of {adapter.kind} on the anchors")
    translated = adapter.apply(source_rows)
    calibration = fit_calibration(translated, target_rows, seed=fit_config.seed)
    adapter.metrics.update(calibration.to_metrics())
    report(
        "calibrate",
        f"null mean {calibration.null_mean:.3f}, std {calibration.null_std:.3f}",
    )

    # The receiving silo's hubness reference: these public anchors as the adapter maps them.
    # And the refinement guard's check pairs: some of them beside their target-space vectors.
    receiving = {
        REFERENCE_TENSOR: reference_from_translated(translated, fit_config.seed),
        **guard_tensors(translated, target_rows, fit_config.seed),
    }
    adapter_id = adapter_id_for(
        source, target, anchor_set.sha256, fit_config.kind, weights_sha256(adapter, receiving)
    )
    directory = state.adapters_dir / adapter_id
    report("store", f"signing and storing adapter {adapter_id}")
    save_adapter(
        directory,
        adapter,
        source=source,
        target=target,
        anchor_set_sha256=anchor_set.sha256,
        signing_key=signing_key,
        receiving=receiving,
    )
    record = AdapterRecord(
        adapter_id=adapter_id,
        kind=adapter.kind,
        source=source,
        target=target,
        anchor_set=anchor_set.name,
        anchor_set_version=anchor_set.version,
        anchor_set_sha256=anchor_set.sha256,
        metrics=dict(adapter.metrics),
        created_at=time.time(),
        path=directory,
    )
    state.add_adapter(record)
    return record


def load_record_adapter(
    record: AdapterRecord,
    verify_key: Ed25519PublicKey,
    *,
    source: SpaceDescriptor,
    target: SpaceDescriptor,
) -> Adapter:
    """Load ``record``'s artifact, checking its signature and its spaces ``source`` -> ``target``.

    Raises ``SpaceMismatch`` naming both fingerprints when a silo's model changed since training.
    """
    loaded = load_adapter(
        record.path, verify_key=verify_key, expected_source=source, expected_target=target
    )
    return loaded.adapter


def _checked_anchor_matrix(
    vectors: FloatMatrix, space: SpaceDescriptor, anchor_set: AnchorSetInfo, role: str
) -> FloatMatrix:
    # Checked before fitting, which can take minutes, rather than when saving afterwards.
    matrix = np.asarray(vectors, dtype=np.float32)
    expected = (anchor_set.count, space.dimension)
    if matrix.shape != expected:
        raise InvalidArgument(
            f"{role} anchor embeddings have shape {matrix.shape} but anchor set "
            f"{anchor_set.name} {anchor_set.version} has {anchor_set.count} texts and space "
            f"{space.space_id!r} has dimension {space.dimension}: expected {expected}"
        )
    return matrix


def _silent(stage: str, message: str) -> None:
    """The default progress sink: training says nothing unless asked."""
