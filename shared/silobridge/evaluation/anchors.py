"""Anchor texts for fitting adapters: the public set, in-domain texts, or a user's file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from silobridge.coordinator.anchors.generators import (
    CHAIN,
    MIX,
    SENTENCES,
    ZIPF,
    available,
    generate_anchor_texts,
)
from silobridge.coordinator.anchors.synthetic import random_word_strings
from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.evaluation.corpus import load_records
from silobridge.evaluation.datasets import RetrievalDataset, check_anchor_source

PUBLIC = "public"
SYNTHETIC = "synthetic"
IN_DOMAIN = "in-domain"
# Kinds named after the anchors.generators generator that makes their texts.
GENERATED_KINDS: tuple[str, ...] = (ZIPF, SENTENCES, CHAIN, MIX)
# Domain-aware: both silos' preferred texts of a large public pool (``mix``), interleaved.
PREFERRED = "preferred"
PREFERENCE_POOL = 64_000
ANCHOR_KINDS: tuple[str, ...] = (PUBLIC, SYNTHETIC, IN_DOMAIN, *GENERATED_KINDS, PREFERRED)
# Enough for the largest standard anchor count (16,000) with room for held-out splits.
SYNTHETIC_POOL = 48_000


@dataclass(frozen=True)
class AnchorSource:
    """Anchor texts in a seeded order: the first ``n`` are the ``n``-anchor set (nested)."""

    name: str
    texts: tuple[str, ...]

    def take(self, count: int) -> tuple[str, ...]:
        if count > len(self.texts):
            raise InvalidArgument(
                f"{count} anchors asked of the {self.name!r} anchor set, which holds only "
                f"{len(self.texts)} distinct texts; lower --anchor-count"
            )
        return self.texts[:count]


def public_anchors(seed: int) -> AnchorSource:
    """Python-documentation paragraphs: general technical English, not any silo's domain."""
    texts = [r.text for r in load_records("pydoc_anchors")]
    # File order groups paragraphs by page; shuffling makes small prefixes span many pages.
    return AnchorSource(PUBLIC, _distinct_shuffled(texts, seed))


def synthetic_anchors(seed: int) -> AnchorSource:
    """Random strings of common English words: public by construction, no domain of their own."""
    return AnchorSource(SYNTHETIC, random_word_strings(SYNTHETIC_POOL, seed))


def generated_anchors(generator: str, seed: int) -> AnchorSource:
    """Texts of a public generator: a pool like the synthetic one, or all of a finite one."""
    limit = available(generator)
    pool = SYNTHETIC_POOL if limit is None else min(limit, SYNTHETIC_POOL)
    return AnchorSource(generator, generate_anchor_texts(generator, pool, seed))


def preference_pool(seed: int) -> AnchorSource:
    """The public pool domain-aware anchors are chosen from (``PREFERRED``): its texts in pool
    order; the harness reorders them by the silos' preferences once both are embedded."""
    return AnchorSource(PREFERRED, generate_anchor_texts(MIX, PREFERENCE_POOL, seed))


def in_domain_anchors(dataset: RetrievalDataset) -> AnchorSource:
    """Texts of the evaluated distribution that are neither test queries nor relevant documents.

    The dataset loader already seeded the pool's order, so it is used as is.
    """
    return AnchorSource(IN_DOMAIN, tuple(dict.fromkeys(dataset.in_domain_pool)))


def file_anchors(path: Path, seed: int) -> AnchorSource:
    """A user's own public texts: JSONL objects with a "text" field, or one text per line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read anchor file {path}: {exc}") from exc
    texts: list[str] = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("{"):
            try:
                text = json.loads(stripped)["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{path}:{number} looks like JSON but has no string field 'text' ({exc})"
                ) from exc
            if not isinstance(text, str):
                raise ConfigError(f"{path}:{number}: field 'text' is not a string")
            stripped = text.strip()
        if stripped:
            texts.append(stripped)
    if not texts:
        raise ConfigError(f"anchor file {path} holds no texts")
    return AnchorSource(f"file:{path.name}", _distinct_shuffled(texts, seed))


def resolve_anchor_sources(
    names: Sequence[str], files: Sequence[Path], dataset: RetrievalDataset, seed: int
) -> list[AnchorSource]:
    """The anchor sources a run asked for, in the order asked, without repeats."""
    sources: list[AnchorSource] = []
    for name in dict.fromkeys(names):
        check_anchor_source(dataset, name)
        if name == PUBLIC:
            sources.append(public_anchors(seed))
        elif name == SYNTHETIC:
            sources.append(synthetic_anchors(seed))
        elif name == IN_DOMAIN:
            sources.append(in_domain_anchors(dataset))
        elif name in GENERATED_KINDS:
            sources.append(generated_anchors(name, seed))
        elif name == PREFERRED:
            sources.append(preference_pool(seed))
        else:
            raise InvalidArgument(
                f"unknown anchor set {name!r}; choose {', '.join(ANCHOR_KINDS)}, "
                "or give --anchor-file"
            )
    sources.extend(file_anchors(path, seed) for path in dict.fromkeys(files))
    if not sources:
        raise InvalidArgument(
            f"no anchors: give --anchors {', '.join(ANCHOR_KINDS)}, or an --anchor-file"
        )
    return sources


def _distinct_shuffled(texts: Sequence[str], seed: int) -> tuple[str, ...]:
    # Duplicates would weight one pair twice in the fit and overstate the anchor count.
    distinct = list(dict.fromkeys(texts))
    order = np.random.default_rng(seed).permutation(len(distinct))
    return tuple(distinct[i] for i in order)
