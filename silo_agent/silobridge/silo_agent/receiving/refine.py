"""Refinement from traffic in the silo: a correction after the coordinator's adapter, opt-in.

With ``[receiving] refine = true`` (and a ``traffic_pool``), once the pool of one source space
holds ``traffic_min`` translated queries, the silo fits a correction on them and its own
documents in the background (``silobridge.adapters.refinement``: ridge towards the identity on
CSLS mutual pairs) and runs the label-free guard first: the artifact's signed anchor check pairs
must not move apart, and the share of held-out pooled queries with a mutual partner must not
fall. Only an accepted correction is used; it is refitted every ``traffic_refresh`` new queries.
Queries it maps are hubness-corrected against the pool as the correction maps it; a source
space the silo answers without hubness correction (``hubness_off_for``) is not refined either
(the refinement was measured with it: BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from silobridge.adapters.hubness import HubnessCorrection
from silobridge.adapters.refinement import (
    GuardVerdict,
    apply_refinement,
    check_refinement,
    fit_refinement,
)
from silobridge.silo_agent.adapter_fetch import Translation
from silobridge.silo_agent.receiving.hubness_routes import (
    TRAFFIC,
    HubnessCorrections,
    traffic_key,
)
from silobridge.silo_agent.store.data import SiloData
from silobridge.silo_agent.store.generation import Generation

log = logging.getLogger(__name__)
# As the silo's audit lines name the step.
REFINE_STEP = "refine(traffic)"


@dataclass(frozen=True)
class Refined:
    """An accepted correction: the map, the hubness correction of what it maps, the verdict."""

    weights: npt.NDArray[np.float32]
    correction: HubnessCorrection | None
    verdict: GuardVerdict

    def apply(self, vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        mapped: npt.NDArray[np.float32] = apply_refinement(self.weights, vector[None, :])[0]
        return mapped


@dataclass
class _State:
    refined: Refined | None = None
    verdict: GuardVerdict | None = None
    fitted_at: int = -1  # the pool's ``added`` count when the last fit started
    running: bool = False


class Refinements:
    """``refinements.get(translation, generation)`` -> the accepted correction in use, or None."""

    def __init__(self, corrections: HubnessCorrections, data: SiloData) -> None:
        self.corrections = corrections
        self.settings = corrections.settings
        self.data = data
        self._states: dict[tuple[str, str], _State] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.settings.refine and self.corrections.traffic.enabled

    def get(self, translation: Translation, generation: Generation) -> Refined | None:
        """The correction for queries through ``translation`` into ``generation``; starts a
        (re)fit in the background when the pool has grown enough since the last one."""
        # Measured only together with the hubness correction of what it maps: not without it.
        if not self.enabled or not self.settings.hubness_for(translation.source_space):
            return None
        pool = self.corrections.traffic.get(
            traffic_key(translation.source_space, generation.space.space_id)
        )
        key = (translation.adapter_id, generation.space.space_id)
        with self._lock:
            state = self._states.setdefault(key, _State())
            due = (
                pool is not None
                and len(pool) >= self.settings.traffic_min
                and not state.running
                and (
                    state.fitted_at < 0
                    or pool.added - state.fitted_at >= self.settings.traffic_refresh
                )
            )
            if due and pool is not None:
                state.running = True
                state.fitted_at = pool.added
                snapshot = pool.snapshot()
                threading.Thread(
                    target=self._fit,
                    args=(state, translation, generation, snapshot),
                    name="refine-fit",
                    daemon=True,
                ).start()
            return state.refined

    def verdict(self, adapter_id: str, space_id: str) -> GuardVerdict | None:
        """The guard's last verdict for queries through ``adapter_id`` into ``space_id``."""
        with self._lock:
            state = self._states.get((adapter_id, space_id))
            return state.verdict if state is not None else None

    def _fit(
        self,
        state: _State,
        translation: Translation,
        generation: Generation,
        pool: npt.NDArray[np.float32],
    ) -> None:
        try:
            refined, verdict = self._fitted(translation, generation, pool)
        except Exception:  # a background step: the silo answers without the correction
            log.exception("fitting the refinement for adapter %s failed", translation.adapter_id)
            refined, verdict = None, None
        with self._lock:
            state.running = False
            if verdict is not None:
                state.verdict = verdict
                # A refused refit also retires the correction in use: the pool moved on.
                state.refined = refined

    def _fitted(
        self, translation: Translation, generation: Generation, pool: npt.NDArray[np.float32]
    ) -> tuple[Refined | None, GuardVerdict | None]:
        if translation.guard_translated is None or translation.guard_targets is None:
            log.warning(
                "adapter %s carries no anchor check pairs (trained before refinement existed): "
                "no refinement until it is retrained",
                translation.adapter_id,
            )
            return None, None
        _keys, documents = self.data.docstore.all_vectors(generation.slot.table)
        lam = self.settings.refine_lambda
        verdict = check_refinement(
            pool, documents, translation.guard_translated, translation.guard_targets, lam=lam
        )
        log.info(
            "refinement for adapter %s into %s from %d pooled queries: %s",
            translation.adapter_id,
            generation.space.space_id,
            len(pool),
            verdict.describe(),
        )
        if not verdict.accepted:
            return None, verdict
        weights = fit_refinement(pool, documents, lam)
        if weights is None:
            return None, verdict
        correction = self.corrections.build(
            f"refined traffic of {translation.source_space}",
            apply_refinement(weights, pool),
            generation,
            TRAFFIC,
        )
        return Refined(weights, correction, verdict), verdict
