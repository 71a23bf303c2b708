"""Public anchor texts by generator name: word strings, real sentences, a word chain, a mix.

Every generator is deterministic for a seed and nested (the first n texts of a larger request
equal a request for n), and every text is public: the word list and the sentences are package
data (SENTENCES.md says where the sentences come from). Real sentences fit better adapters than
uniform word strings at equal count; the bigram chain keeps their word order statistics while
producing as many new texts as asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice

import numpy as np

from silobridge.coordinator.anchors.synthetic import (
    MAX_WORDS,
    MIN_WORDS,
    english_words,
    packaged_lines,
    random_word_strings,
)
from silobridge.core.errors import InvalidArgument

SENTENCES_FILE = "sentences.txt.gz"
WORDS = "words"
ZIPF = "zipf"
SENTENCES = "sentences"
CHAIN = "chain"
MIX = "mix"
GENERATORS: tuple[str, ...] = (WORDS, ZIPF, SENTENCES, CHAIN, MIX)
# Zipf-like weight 1/(rank + ZIPF_OFFSET): the word list is in vocabulary order, roughly by
# frequency; the offset keeps the first few words from crowding out everything else.
ZIPF_OFFSET = 10
CHAIN_MIN_WORDS = 3
CHAIN_MAX_WORDS = 30
# Draws in a row that yield nothing new before the chain is called exhausted; far above what
# any real request meets, it only turns an endless loop into an error.
CHAIN_MAX_MISSES = 100_000
_START = 0
_END = 1


@lru_cache(maxsize=1)
def packaged_sentences() -> tuple[str, ...]:
    """The public sentences shipped as package data, in file order."""
    return tuple(dict.fromkeys(packaged_lines(SENTENCES_FILE, "sentence list")))


def available(generator: str) -> int | None:
    """How many texts ``generator`` can give, or None where it is not bounded."""
    _check_name(generator)
    return len(packaged_sentences()) if generator == SENTENCES else None


def generate_anchor_texts(generator: str, count: int, seed: int) -> tuple[str, ...]:
    """``count`` distinct public texts from ``generator`` (one of GENERATORS), seeded."""
    _check_name(generator)
    if count < 0:
        raise InvalidArgument(f"count must be non-negative, got {count}")
    limit = available(generator)
    if limit is not None and count > limit:
        raise InvalidArgument(
            f"{count} texts asked of the {generator!r} generator, which holds only {limit}"
        )
    if generator == WORDS:
        return random_word_strings(count, seed)
    texts = tuple(islice(_stream(generator, seed), count))
    if len(texts) < count:
        raise InvalidArgument(
            f"the {generator!r} generator ran out of new texts after {len(texts)} of {count}"
        )
    return texts


def _check_name(generator: str) -> None:
    if generator not in GENERATORS:
        raise InvalidArgument(
            f"unknown anchor generator {generator!r}; choose {', '.join(GENERATORS)}"
        )


def _stream(generator: str, seed: int) -> Iterator[str]:
    if generator == WORDS:
        return _word_stream(seed)
    if generator == ZIPF:
        return _zipf_stream(seed)
    if generator == SENTENCES:
        return _sentence_stream(seed)
    if generator == CHAIN:
        return _chain_stream(seed)
    return _mix_stream(seed)


def _word_stream(seed: int) -> Iterator[str]:
    # The same draws as random_word_strings, lazily, so a mix can take as many as it needs.
    words = np.asarray(english_words())
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    while True:
        length = int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
        text = " ".join(words[rng.integers(0, len(words), size=length)])
        if text not in seen:
            seen.add(text)
            yield text


def _zipf_stream(seed: int) -> Iterator[str]:
    words = np.asarray(english_words())
    weights = 1.0 / (np.arange(len(words), dtype=np.float64) + ZIPF_OFFSET)
    cumulative = np.cumsum(weights / weights.sum())
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    while True:
        length = int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
        picks = np.searchsorted(cumulative, rng.random(length), side="right")
        text = " ".join(words[np.minimum(picks, len(words) - 1)])
        if text not in seen:
            seen.add(text)
            yield text


def _sentence_stream(seed: int) -> Iterator[str]:
    sentences = packaged_sentences()
    for index in np.random.default_rng(seed).permutation(len(sentences)):
        yield sentences[int(index)]


@dataclass(frozen=True)
class BigramChain:
    """Next-word choices per word: successor ids and their cumulative probabilities."""

    tokens: tuple[str, ...]  # id → token; ids 0 and 1 are the start and end symbols
    successors: tuple[np.ndarray, ...]
    cumulative: tuple[np.ndarray, ...]
    training: frozenset[str]  # the training sentences as the chain spells them

    def walk(self, rng: np.random.Generator) -> list[str] | None:
        """One text from start to end, or None where it leaves the allowed length."""
        out: list[str] = []
        state = _START
        while True:
            choices = self.cumulative[state]
            pick = int(np.searchsorted(choices, rng.random(), side="right"))
            state = int(self.successors[state][min(pick, len(choices) - 1)])
            if state == _END:
                return out if len(out) >= CHAIN_MIN_WORDS else None
            if len(out) == CHAIN_MAX_WORDS:
                return None
            out.append(self.tokens[state])


def chain_tokens(sentence: str) -> list[str]:
    """How the chain splits a sentence: lowercased, on whitespace, punctuation kept."""
    return sentence.lower().split()


@lru_cache(maxsize=1)
def bigram_chain() -> BigramChain:
    """The word-pair chain of the packaged sentences (built once; insertion order is fixed)."""
    ids: dict[str, int] = {"<s>": _START, "</s>": _END}
    counts: list[dict[int, int]] = [{}, {}]
    training: set[str] = set()
    for sentence in packaged_sentences():
        tokens = chain_tokens(sentence)
        training.add(" ".join(tokens))
        previous = _START
        for token in [*tokens, None]:
            if token is None:
                current = _END
            else:
                current = ids.setdefault(token, len(ids))
                if current == len(counts):
                    counts.append({})
            counts[previous][current] = counts[previous].get(current, 0) + 1
            previous = current
    successors: list[np.ndarray] = []
    cumulative: list[np.ndarray] = []
    for seen_next in counts:
        # Only the end symbol has no successors, and a walk stops there before looking.
        following = seen_next or {_END: 1}
        weights = np.fromiter(following.values(), dtype=np.float64)
        successors.append(np.fromiter(following.keys(), dtype=np.int64))
        cumulative.append(np.cumsum(weights / weights.sum()))
    return BigramChain(tuple(ids), tuple(successors), tuple(cumulative), frozenset(training))


def _chain_stream(seed: int) -> Iterator[str]:
    chain = bigram_chain()
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    misses = 0
    while misses < CHAIN_MAX_MISSES:
        tokens = chain.walk(rng)
        text = " ".join(tokens) if tokens is not None else None
        # A walk that retraces a training sentence is that sentence, not a new text.
        if text is None or text in seen or text in chain.training:
            misses += 1
            continue
        misses = 0
        seen.add(text)
        yield text


def _mix_stream(seed: int) -> Iterator[str]:
    # Each part has its own sub-seed, so the mix does not replay the words or chain of seed.
    words_seed, sentences_seed, chain_seed = (
        int(part) for part in np.random.SeedSequence(seed).generate_state(3)
    )
    parts = [_word_stream(words_seed), _sentence_stream(sentences_seed), _chain_stream(chain_seed)]
    seen: set[str] = set()
    while parts:
        for part in list(parts):
            text = next(part, None)
            if text is None:  # the sentences run out first; the others go on
                parts.remove(part)
            elif text not in seen:
                seen.add(text)
                yield text
