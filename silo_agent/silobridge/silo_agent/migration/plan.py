"""`silo migrate plan`: what moving the silo to another model takes; measured, nothing changed.

The new model embeds a sample spread over the silo's own documents (their texts never leave the
silo), timed; the rate gives the re-encode estimate. Disk is what the new space adds beside the
old one until the old generation is dropped: one vector per document in the docstore, and the
new index.
"""

from __future__ import annotations

import time

from silobridge.core.errors import ConfigError, FailedPrecondition, InvalidArgument
from silobridge.core.migration import MigrationPlan
from silobridge.embedding.embedders import Embedder, load_embedder
from silobridge.silo_agent.service import SiloService
from silobridge.silo_agent.store.index import IndexSettings

DEFAULT_SAMPLE = 256
MAX_SAMPLE = 4_096
FLOAT32_BYTES = 4
# Per vector, beside the vector itself: the id map (8 bytes) and, for HNSW, the graph's links
# (about 2 x M neighbours of 4 bytes each on the bottom layer, M = 32 by default).
ID_BYTES = 8
HNSW_LINK_BYTES = 2 * 32 * 4


def plan_migration(service: SiloService, to_model: str, sample_size: int = 0) -> MigrationPlan:
    """Load ``to_model``, embed a sample of the silo's texts with it, and estimate the rest."""
    if not to_model.strip():
        raise InvalidArgument("name the model to migrate to (a spec such as 'minilm-l6')")
    size = sample_size or DEFAULT_SAMPLE
    if not 1 <= size <= MAX_SAMPLE:
        raise InvalidArgument(f"sample_size must be between 1 and {MAX_SAMPLE}, got {size}")
    embedder = load_model(to_model, service.config.server.threads)
    current = service.space
    if embedder.space.fingerprint == current.fingerprint:
        raise FailedPrecondition(
            f"the silo already serves space {current.space_id}: there is nothing to migrate"
        )
    documents = service.data.count()
    texts = service.data.docstore.sample_texts(size)
    if not texts:
        raise FailedPrecondition("the silo holds no documents: there is nothing to re-encode")
    batch_size = service.config.limits.batch_size
    embedder.embed(texts[:1], batch_size=batch_size)  # warm-up: first-call setup is not the rate
    started = time.perf_counter()
    embedder.embed(texts, batch_size=batch_size)
    seconds = max(time.perf_counter() - started, 1e-9)
    rate = len(texts) / seconds
    return MigrationPlan(
        current=current,
        target=embedder.space,
        documents=documents,
        sample_documents=len(texts),
        sample_seconds=seconds,
        documents_per_second=rate,
        estimated_seconds=documents / rate,
        disk_bytes=_disk_bytes(documents, embedder.space.dimension, service.config.index),
    )


def load_model(spec: str, threads: int) -> Embedder:
    """The model an admin named, or InvalidArgument saying why it does not load."""
    try:
        return load_embedder(spec, threads=threads)
    except ConfigError as error:
        # The caller named the model: a spec that does not load is their input, not our config.
        raise InvalidArgument(f"cannot load model {spec!r}: {error.message}") from None


def _disk_bytes(documents: int, dimension: int, index: IndexSettings) -> int:
    vector = dimension * FLOAT32_BYTES
    per_index_entry = vector + ID_BYTES
    if documents >= index.exact_threshold:
        per_index_entry += HNSW_LINK_BYTES
    return documents * (vector + per_index_entry)
