"""Synthetic public anchors: random strings of English words, owned by nobody, leaking nothing.

Anchor texts must be public. Public *documents* (such as the Python documentation) carry their
own domain, and an adapter fitted on them transfers poorly to a silo whose texts look nothing
alike. Random strings of common words cover the vocabulary evenly instead; BENCHMARKS.md shows
they recover far more retrieval quality than documentation paragraphs at every anchor count.
"""

from __future__ import annotations

import gzip
import importlib.resources
from functools import lru_cache

import numpy as np

from silobridge.core.errors import ConfigError, InvalidArgument

WORDLIST_FILE = "wordlist.txt.gz"
MIN_WORDS = 3
MAX_WORDS = 15


def packaged_lines(file_name: str, what: str) -> tuple[str, ...]:
    """The non-empty lines of a gzip text file shipped as this package's data, in file order."""
    # Package data, so ``anchors build --synthetic`` works from an installed wheel.
    path = importlib.resources.files("silobridge.coordinator.anchors") / file_name
    try:
        with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as handle:
            lines = tuple(line.strip() for line in handle if line.strip())
    except OSError as error:
        raise ConfigError(f"cannot read the {what} {path}: {error}") from None
    if not lines:
        raise ConfigError(f"the {what} {path} is empty")
    return lines


@lru_cache(maxsize=1)
def english_words() -> tuple[str, ...]:
    """The public word list: alphabetic entries (3+ letters) of bert-base-uncased's vocabulary."""
    return packaged_lines(WORDLIST_FILE, "word list")


def random_word_strings(count: int, seed: int) -> tuple[str, ...]:
    """``count`` distinct strings of 3 to 15 words drawn uniformly from ``english_words()``.

    Deterministic for a seed, and nested: the first n strings of a larger request equal a
    request for n.
    """
    if count < 0:
        raise InvalidArgument(f"count must be non-negative, got {count}")
    words = np.asarray(english_words())
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < count:
        length = int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
        out[" ".join(words[rng.integers(0, len(words), size=length)])] = None
    return tuple(out)
