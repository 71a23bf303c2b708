"""Local fit: a silo that holds a querying side's model fits its own in-domain adapter.

``[receiving] local_models`` names embedding model specs the silo can run besides its own. For
each, a spread sample of the silo's documents is embedded with that model, and an adapter from
that model's space into the silo's is fitted on the pairs (sample vector, stored vector): the
anchors are the silo's own documents, and nothing leaves the silo. The silo then answers queries
in that space itself (a route like a migrating silo's old space), so ``Describe`` lists the space
in ``also_serves`` and the coordinator forwards such queries without its public-anchor adapter.
Queries on that route are hubness-corrected too (``[receiving] hubness``), against the sample as
the fit maps it.
The silo's ``accept_spaces`` policy still decides whether it serves a space at all.

The fit is kept under ``<data_dir>/local-fit/<space id>/`` and reused after a restart (fitted
again where the silo's own model changed since). A migration's route tables replace the local
routes: after a cut-over the silo serves them again from its next start.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from silobridge.adapters import Adapter, FitConfig, fit
from silobridge.adapters.artifact import SpaceMismatch, load_adapter, save_adapter
from silobridge.adapters.hubness import REFERENCE_TENSOR, reference_from_translated
from silobridge.core.errors import FailedPrecondition, NotFound, SiloBridgeError
from silobridge.core.spaces import SpaceDescriptor
from silobridge.embedding.embedders import Embedder, load_embedder
from silobridge.silo_agent.migration.local_adapters import MIN_SAMPLE, sample
from silobridge.silo_agent.routes import Route
from silobridge.silo_agent.store.data import SiloData

log = logging.getLogger(__name__)
LOCAL_FIT_DIR = "local-fit"
KIND = "affine"
# The anchors are the silo's own documents: the artifact names no public anchor set.
_OWN_DOCUMENTS = "0" * 64
_EMBED_CHUNK = 256
_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]")


class Stopped(SiloBridgeError):
    """The silo shut down while fitting."""


@dataclass(frozen=True)
class LocalFit:
    """An in-domain adapter from ``space`` into the silo's primary space."""

    space: SpaceDescriptor
    adapter: Adapter
    anchors: int
    reused: bool
    # The sample as the fit maps it: the hubness reference of queries on this route.
    hubness_reference: npt.NDArray[np.generic] | None = None


def fit_local(
    data: SiloData,
    embedder: Embedder,
    *,
    sample_size: int,
    batch_size: int,
    stop: threading.Event | None = None,
) -> LocalFit:
    """Fit (or reload) the adapter from ``embedder``'s space into ``data``'s primary space."""
    own = data.primary.space
    space = embedder.space
    if space.fingerprint == own.fingerprint:
        raise FailedPrecondition(
            f"local model {embedder.spec!r} is the silo's own model; it needs no local fit"
        )
    directory = data.data_dir / LOCAL_FIT_DIR / _UNSAFE.sub("_", space.space_id)
    try:
        loaded = load_adapter(directory, expected_source=space, expected_target=own)
        anchors = int(loaded.adapter.metrics.get("anchors", 0))
        reference = loaded.receiving.get(REFERENCE_TENSOR)
        return LocalFit(space, loaded.adapter, anchors, True, reference)
    except (NotFound, SpaceMismatch):
        pass  # none yet, or fitted into a space the silo no longer embeds in: fit again
    texts, target = sample(data.docstore, sample_size)
    if len(texts) < MIN_SAMPLE:
        raise FailedPrecondition(
            f"the silo holds {len(texts)} documents; a local fit needs at least {MIN_SAMPLE}"
        )
    parts = []
    for start in range(0, len(texts), _EMBED_CHUNK):
        if stop is not None and stop.is_set():
            raise Stopped("the silo stopped during a local fit")
        parts.append(embedder.embed(texts[start : start + _EMBED_CHUNK], batch_size=batch_size))
    source = np.vstack(parts).astype(np.float32)
    adapter = fit(source, target, FitConfig(kind=KIND))
    adapter.metrics["anchors"] = float(len(texts))
    reference = reference_from_translated(adapter.apply(source))
    save_adapter(
        directory,
        adapter,
        source=space,
        target=own,
        anchor_set_sha256=_OWN_DOCUMENTS,
        receiving={REFERENCE_TENSOR: reference},
    )
    return LocalFit(space, adapter, len(texts), False, reference)


def local_routes(
    data: SiloData,
    specs: tuple[str, ...],
    *,
    accepts: Callable[[str], bool],
    sample_size: int,
    batch_size: int,
    threads: int,
    stop: threading.Event,
    add_route: Callable[[Route], None],
) -> None:
    """Fit each local model in turn and hand its route to ``add_route`` (blocking; a worker
    thread runs it). A model that fails is logged and skipped: the silo serves on without it."""
    for spec in specs:
        if stop.is_set():
            return
        try:
            embedder = load_embedder(spec, threads=threads)
            if not accepts(embedder.space.space_id):
                log.warning(
                    "local model %s (space %s) is not in [access] accept_spaces: not served",
                    spec,
                    embedder.space.space_id,
                )
                continue
            done = fit_local(
                data, embedder, sample_size=sample_size, batch_size=batch_size, stop=stop
            )
        except Stopped:
            return
        except Exception:  # a background step: the silo serves on without this route
            log.exception("local fit for model %s failed; queries in its space use adapters", spec)
            continue
        log.info(
            "local fit %s -> %s on %d own documents (%s): answering queries in %s itself",
            done.space.space_id,
            data.primary.space.space_id,
            done.anchors,
            "reloaded" if done.reused else "fitted now",
            done.space.space_id,
        )
        add_route(
            Route(
                done.space,
                data.primary,
                done.adapter,
                local=True,
                hubness_reference=done.hubness_reference,
            )
        )
