"""An on-disk embedding cache keyed by (model fingerprint, text hash), and embedding through it."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.progress import Progress

from silobridge.core.errors import ConfigError
from silobridge.core.spaces import FloatMatrix
from silobridge.embedding.embedders import Embedder

CACHE_ENV_VAR = "SILOBRIDGE_CACHE_DIR"
CACHE_FILE = "embeddings.sqlite"
# Texts embedded between two cache writes: an interrupted run keeps what it had paid for.
EMBED_CHUNK = 512
# SQLite's default limit on bound parameters is 999 in older builds; stay under it.
_LOOKUP_CHUNK = 900

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    fingerprint TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (fingerprint, text_sha256)
) WITHOUT ROWID
"""


def default_cache_dir() -> Path:
    """``$SILOBRIDGE_CACHE_DIR`` if set, else ``~/.cache/silobridge``."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "silobridge"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Float32 vectors per (fingerprint, sha256 of text). ``directory=None`` keeps them in memory.

    The fingerprint describes the model's behaviour (``SpaceDescriptor.fingerprint``), so two
    spec strings naming the same weights share entries and a changed model never hits old ones.
    """

    def __init__(self, directory: Path | None) -> None:
        if directory is None:
            self.path: Path | None = None
            self._db = sqlite3.connect(":memory:")
        else:
            self.path = directory / CACHE_FILE
            try:
                directory.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path)
                self._db.execute("PRAGMA journal_mode=WAL")
            except (OSError, sqlite3.Error) as exc:
                raise ConfigError(
                    f"cannot open the embedding cache {self.path} ({exc}); "
                    "point --cache-dir elsewhere or pass --no-cache"
                ) from exc
        self._db.execute(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def lookup(self, fingerprint: str, hashes: Sequence[str], dim: int) -> dict[str, FloatMatrix]:
        """The cached vectors among ``hashes``; entries of another dimension are ignored."""
        found: dict[str, FloatMatrix] = {}
        for start in range(0, len(hashes), _LOOKUP_CHUNK):
            chunk = list(hashes[start : start + _LOOKUP_CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT text_sha256, vector FROM embeddings "  # noqa: S608 -- only '?' marks
                f"WHERE fingerprint = ? AND text_sha256 IN ({marks})",
                [fingerprint, *chunk],
            )
            for sha, blob in rows:
                vector = np.frombuffer(blob, dtype="<f4")
                if vector.shape[0] == dim:
                    found[sha] = vector.astype(np.float32)
        return found

    def store(self, fingerprint: str, hashes: Sequence[str], vectors: FloatMatrix) -> None:
        rows = [
            (fingerprint, sha, np.asarray(vec, dtype="<f4").tobytes())
            for sha, vec in zip(hashes, vectors, strict=True)
        ]
        self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", rows)
        self._db.commit()


def embed_cached(
    embedder: Embedder,
    texts: Sequence[str],
    cache: EmbeddingCache,
    *,
    label: str,
    progress: Progress | None = None,
    batch_size: int = 64,
) -> FloatMatrix:
    """Embed ``texts`` (n, dim) with ``embedder``, computing only what ``cache`` lacks."""
    fingerprint = embedder.space.fingerprint
    hashes = [text_sha256(t) for t in texts]
    unique = list(dict.fromkeys(hashes))
    found = cache.lookup(fingerprint, unique, embedder.dimension)
    text_of = dict(zip(hashes, texts, strict=True))
    missing = [sha for sha in unique if sha not in found]
    task = None
    if progress is not None and missing:
        task = progress.add_task(f"{embedder.spec}: {label}", total=len(missing))
    for start in range(0, len(missing), EMBED_CHUNK):
        chunk = missing[start : start + EMBED_CHUNK]
        vectors = embedder.embed([text_of[sha] for sha in chunk], batch_size=batch_size)
        cache.store(fingerprint, chunk, vectors)
        found.update(zip(chunk, vectors, strict=True))
        if progress is not None and task is not None:
            progress.advance(task, len(chunk))
    out = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
    for row, sha in enumerate(hashes):
        out[row] = found[sha]
    return out
