"""Embedding spaces: the descriptor every vector travels with, and its behavioural fingerprint."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# A fixed probe set. Changing it changes every fingerprint, so it is versioned in the hash.
PROBE_VERSION = "probe-v1"
PROBE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "In the beginning God created the heaven and the earth.",
    "How do I reverse a list in Python?",
    "The central bank raised interest rates by a quarter point.",
    "Photosynthesis converts light energy into chemical energy.",
    "She walked along the beach at sunset, thinking of home.",
    "Error: connection refused while contacting the database server.",
    "A federated search queries several indexes without moving documents.",
    "The patient was prescribed antibiotics for the infection.",
    "Mount Everest is the highest mountain above sea level.",
    "Please return the signed contract by Friday.",
    "Love is patient, love is kind.",
    "Vectors are compared by the cosine of the angle between them.",
    "The orchestra played a symphony by Beethoven.",
    "What time does the last train leave for the airport?",
    "Quarterly revenue grew twelve percent year over year.",
)
# Rounded to this many decimals before hashing, so harmless float noise (thread counts, BLAS
# kernels) does not change the fingerprint while a different model or version does.
FINGERPRINT_DECIMALS = 2

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SpaceDescriptor:
    """What a vector means: produced by which model, in how many dimensions, compared how."""

    space_id: str
    model_id: str
    dimension: int
    fingerprint: str
    metric: str = "cosine"


def fingerprint_space(embed: Callable[[Sequence[str]], FloatMatrix]) -> str:
    """Hash of the model's rounded embeddings of ``PROBE_TEXTS`` (hex, 16 chars, sha256 prefix)."""
    vectors = np.asarray(embed(list(PROBE_TEXTS)), dtype=np.float64)
    rounded = np.round(vectors, FINGERPRINT_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    digest = hashlib.sha256()
    digest.update(PROBE_VERSION.encode())
    digest.update(str(rounded.shape).encode())
    digest.update(rounded.astype("<f8").tobytes())
    return digest.hexdigest()[:16]
