"""Routes a query vector into each target silo's space: which adapter, is it current, calibration.

Adapters are found by (source space, target model) and then checked against the silo's current
fingerprint, so a silo whose model changed since training gets a refusal that names both
fingerprints instead of a silently wrong translation. A silo that migrates to another model
answers in more than one space (``SiloRecord.also_serves``): queries in any of them need no
adapter, and an adapter into any of them is current.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator, Sequence
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
    """How to reach one silo: the adapter to apply (None: a space the silo answers in itself),
    its calibration, and ``target``, the space the silo searches: its own, or one it also serves
    while it migrates."""

    silo: SiloRecord
    adapter: Adapter | None
    adapter_id: str
    calibration: Calibration | None
    target: SpaceDescriptor


def staleness(record: AdapterRecord, silos: Sequence[SiloRecord]) -> str:
    """Why ``record`` no longer fits the registered silos ("" while it still does).

    Every space a silo answers in natively counts: its own, and while it migrates the one it
    moves to or from (``also_serves``), so an adapter into a migrating silo's old space stays
    current until the silo stops serving that space.
    """
    problems = []
    for role, space in (("source", record.source), ("target", record.target)):
        same_model = [
            (silo, served)
            for silo in silos
            for served in silo.served_spaces()
            if served.model_id == space.model_id
        ]
        if same_model and all(served.fingerprint != space.fingerprint for _, served in same_model):
            now, served = same_model[0]
            problems.append(
                f"{role} model {space.model_id} was trained at fingerprint {space.fingerprint} "
                f"but silo {now.name} now has fingerprint {served.fingerprint}"
            )
    return "; ".join(problems)


def adapter_refusal(record: AdapterRecord, source: SpaceDescriptor, silo: SiloRecord) -> str:
    """The refusal for an adapter whose fingerprints do not match the spaces in use, or "".

    The target may be any space ``silo`` answers in natively (its own or an ``also_serves`` one).
    """
    problems = []
    if record.source.fingerprint != source.fingerprint:
        problems.append(
            f"source fingerprint {record.source.fingerprint} (trained) vs {source.fingerprint} "
            "(query)"
        )
    if silo.serves(record.target.fingerprint) is None:
        # Name the served space of the adapter's target model: that is the one that changed.
        now = next(
            (s for s in silo.served_spaces() if s.model_id == record.target.model_id), silo.space
        )
        problems.append(
            f"target fingerprint {record.target.fingerprint} (trained) vs "
            f"{now.fingerprint} (silo {silo.name} now)"
        )
    if not problems:
        return ""
    return (
        f"adapter {record.adapter_id} no longer matches: {'; '.join(problems)}; "
        "an admin must retrain it (silobridge train)"
    )


class NotInMemory(Exception):
    """Planning would read an adapter or anchors from disk: plan in a worker thread instead."""


# Set while a plan runs on the event loop: anything not in memory yet raises NotInMemory.
_FROM_MEMORY: contextvars.ContextVar[bool] = contextvars.ContextVar("from_memory", default=False)


@contextlib.contextmanager
def from_memory() -> Iterator[None]:
    """Within this block the translator answers only from what it has loaded already."""
    token = _FROM_MEMORY.set(True)
    try:
        yield
    finally:
        _FROM_MEMORY.reset(token)


class Translator:
    """Finds, verifies, loads and caches adapters; thread-safe (called from worker threads)."""

    def __init__(self, state: CoordinatorState, verify_key: Ed25519PublicKey) -> None:
        self.state = state
        self.verify_key = verify_key
        self._lock = threading.Lock()
        self._adapters: dict[tuple[str, float], tuple[Adapter, Calibration | None]] = {}
        self._identity: dict[tuple[str, str], Calibration | None] = {}

    def route(self, source: SpaceDescriptor, silo: SiloRecord) -> Route:
        """The route to ``silo`` for vectors of ``source``; raises when none may be used.

        A silo answers in its own space and, while it migrates, in its ``also_serves`` spaces
        itself: a query in any of them goes without an adapter. Otherwise the adapter may lead
        into any of them; one into the silo's own space is preferred.
        """
        native = silo.serves(source.fingerprint)
        if native is not None:
            return Route(silo, None, "", self.native_calibration(source, silo), native)
        found: list[AdapterRecord] = []
        for served in silo.served_spaces():
            record = self.newest_adapter(source, served)
            if record is not None and all(r.adapter_id != record.adapter_id for r in found):
                found.append(record)
        if not found:
            targets = " or ".join(s.space_id for s in silo.served_spaces())
            raise NotFound(
                f"no adapter from {source.space_id} to {targets} (silo {silo.name}); "
                "an admin must train one (silobridge train)"
            )
        for record in found:
            target = silo.serves(record.target.fingerprint)
            # Current: trained at the query's fingerprint, into a space the silo answers in.
            if target is not None and not adapter_refusal(record, source, silo):
                adapter, calibration = self._load(record, source, target)
                return Route(silo, adapter, record.adapter_id, calibration, target)
        # Every candidate is stale: the refusal names the one into the silo's own space first.
        raise FailedPrecondition(adapter_refusal(found[0], source, silo))

    def newest_adapter(
        self, source: SpaceDescriptor, target: SpaceDescriptor
    ) -> AdapterRecord | None:
        """Newest adapter from ``source``'s space to ``target``'s model (any fingerprint; one at
        ``target``'s own fingerprint first)."""
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
        if _FROM_MEMORY.get():
            raise NotInMemory(record.adapter_id)
        adapter = load_record_adapter(record, self.verify_key, source=source, target=target)
        loaded = (adapter, Calibration.from_metrics(record.metrics))
        with self._lock:
            self._adapters[key] = loaded
        return loaded

    def native_calibration(self, source: SpaceDescriptor, silo: SiloRecord) -> Calibration | None:
        """The null of a silo's answers to queries of ``source``, a space it answers in itself.

        From the anchors the silo sent in ``source`` where it sent any. A space it serves without
        having sent anchors in it (a model it runs only to fit its own adapter, ``[receiving]
        local_models``; or a migration's other generation) ends in the silo's own space: its
        answers are calibrated as a query translated into that space would be (the current
        adapter from ``source``, its null), else as its own space against itself. Never raw: a
        raw cosine taken as a z-score loses every merge to a calibrated silo.
        """
        calibration = self.identity_calibration(source, silo.name)
        if calibration is not None or source.fingerprint == silo.space.fingerprint:
            return calibration
        record = self.newest_adapter(source, silo.space)
        if (
            record is not None
            and record.target.fingerprint == silo.space.fingerprint
            and not adapter_refusal(record, source, silo)
        ):
            return self._load(record, source, silo.space)[1]
        return self.identity_calibration(silo.space, silo.name)

    def identity_calibration(self, space: SpaceDescriptor, silo: str) -> Calibration | None:
        """Null statistics of a space against itself, from the anchors ``silo`` sent in it (if
        any): a silo's scores are calibrated on its own vectors, never another silo's."""
        key = (space.fingerprint, silo)
        with self._lock:
            if key in self._identity:
                return self._identity[key]
        if _FROM_MEMORY.get():
            raise NotInMemory(space.space_id)
        calibration = None
        for record in sorted(self.state.adapters(), key=lambda r: -r.created_at):
            if space.fingerprint not in (record.source.fingerprint, record.target.fingerprint):
                continue
            vectors = self.state.anchor_embeddings(
                record.anchor_set, record.anchor_set_version, space.fingerprint, silo=silo
            )
            if vectors is not None and vectors.shape[0] >= 2:
                calibration = fit_calibration(vectors, vectors)
                break
        with self._lock:
            # Only a found calibration is cached: anchors may arrive with the next training.
            if calibration is not None:
                self._identity[key] = calibration
        return calibration
