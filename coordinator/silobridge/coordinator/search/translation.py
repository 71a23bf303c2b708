"""Routes a query vector into each target silo's space: which adapter, is it current, calibration.

Adapters are found by (source space, target model) and then checked against the silo's current
fingerprint, so a silo whose model changed since training gets a refusal that names both
fingerprints instead of a silently wrong translation.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from silobridge.adapters import Adapter
from silobridge.coordinator.search.calibration import Calibration, fit_calibration
from silobridge.coordinator.state.records import AdapterRecord, SiloRecord
from silobridge.coordinator.state.store import CoordinatorState
from silobridge.coordinator.training.fit import load_record_adapter
from silobridge.core.errors import FailedPrecondition, NotFound
from silobridge.core.spaces import SpaceDescriptor


@dataclass(frozen=True)
class Route:
    """How to reach one silo: the adapter to apply (None: same space) and its calibration."""

    silo: SiloRecord
    adapter: Adapter | None
    adapter_id: str
    calibration: Calibration | None


def staleness(record: AdapterRecord, silos: Sequence[SiloRecord]) -> str:
    """Why ``record`` no longer fits the registered silos ("" while it still does)."""
    problems = []
    for role, space in (("source", record.source), ("target", record.target)):
        same_model = [s for s in silos if s.space.model_id == space.model_id]
        if same_model and all(s.space.fingerprint != space.fingerprint for s in same_model):
            now = same_model[0]
            problems.append(
                f"{role} model {space.model_id} was trained at fingerprint {space.fingerprint} "
                f"but silo {now.name} now has fingerprint {now.space.fingerprint}"
            )
    return "; ".join(problems)


def adapter_refusal(record: AdapterRecord, source: SpaceDescriptor, silo: SiloRecord) -> str:
    """The refusal for an adapter whose fingerprints do not match the spaces in use, or ""."""
    problems = []
    if record.source.fingerprint != source.fingerprint:
        problems.append(
            f"source fingerprint {record.source.fingerprint} (trained) vs {source.fingerprint} "
            "(query)"
        )
    if record.target.fingerprint != silo.space.fingerprint:
        problems.append(
            f"target fingerprint {record.target.fingerprint} (trained) vs "
            f"{silo.space.fingerprint} (silo {silo.name} now)"
        )
    if not problems:
        return ""
    return (
        f"adapter {record.adapter_id} no longer matches: {'; '.join(problems)}; "
        "an admin must retrain it (silobridge train)"
    )


class Translator:
    """Finds, verifies, loads and caches adapters; thread-safe (called from worker threads)."""

    def __init__(self, state: CoordinatorState, verify_key: Ed25519PublicKey) -> None:
        self.state = state
        self.verify_key = verify_key
        self._lock = threading.Lock()
        self._adapters: dict[tuple[str, float], tuple[Adapter, Calibration | None]] = {}
        self._identity: dict[str, Calibration | None] = {}

    def route(self, source: SpaceDescriptor, silo: SiloRecord) -> Route:
        """The route to ``silo`` for vectors of ``source``; raises when none may be used."""
        if silo.space.fingerprint == source.fingerprint:
            return Route(silo, None, "", self.identity_calibration(source))
        record = self.newest_adapter(source, silo.space)
        if record is None:
            raise NotFound(
                f"no adapter from {source.space_id} to {silo.space.space_id} (silo {silo.name}); "
                "an admin must train one (silobridge train)"
            )
        refusal = adapter_refusal(record, source, silo)
        if refusal:
            raise FailedPrecondition(refusal)
        adapter, calibration = self._load(record, source, silo.space)
        return Route(silo, adapter, record.adapter_id, calibration)

    def newest_adapter(
        self, source: SpaceDescriptor, target: SpaceDescriptor
    ) -> AdapterRecord | None:
        """Newest adapter from ``source``'s space to ``target``'s model (any fingerprint)."""
        matches = [
            r
            for r in self.state.adapters()
            if r.source.space_id == source.space_id and r.target.model_id == target.model_id
        ]
        exact = [r for r in matches if r.target.fingerprint == target.fingerprint]
        pool = exact or matches
        return max(pool, key=lambda r: r.created_at) if pool else None

    def _load(
        self, record: AdapterRecord, source: SpaceDescriptor, target: SpaceDescriptor
    ) -> tuple[Adapter, Calibration | None]:
        key = (record.adapter_id, record.created_at)
        with self._lock:
            cached = self._adapters.get(key)
        if cached is not None:
            return cached
        adapter = load_record_adapter(record, self.verify_key, source=source, target=target)
        loaded = (adapter, Calibration.from_metrics(record.metrics))
        with self._lock:
            self._adapters[key] = loaded
        return loaded

    def identity_calibration(self, space: SpaceDescriptor) -> Calibration | None:
        """Null statistics of a space against itself, from anchors stored for it (if any)."""
        with self._lock:
            if space.fingerprint in self._identity:
                return self._identity[space.fingerprint]
        calibration = None
        for record in sorted(self.state.adapters(), key=lambda r: -r.created_at):
            if space.fingerprint not in (record.source.fingerprint, record.target.fingerprint):
                continue
            vectors = self.state.anchor_embeddings(
                record.anchor_set, record.anchor_set_version, space.fingerprint
            )
            if vectors is not None and vectors.shape[0] >= 2:
                calibration = fit_calibration(vectors, vectors)
                break
        with self._lock:
            # Only a found calibration is cached: anchors may arrive with the next training.
            if calibration is not None:
                self._identity[space.fingerprint] = calibration
        return calibration
