"""Public anchor generators: seeded, nested, distinct, bounded, and public by construction."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from silobridge.coordinator.anchors.catalogue import AnchorCatalogue
from silobridge.coordinator.anchors.cli import anchors_app
from silobridge.coordinator.anchors.generators import (
    CHAIN_MAX_WORDS,
    CHAIN_MIN_WORDS,
    GENERATORS,
    available,
    bigram_chain,
    chain_tokens,
    generate_anchor_texts,
    packaged_sentences,
)
from silobridge.coordinator.anchors.synthetic import (
    MAX_WORDS,
    MIN_WORDS,
    english_words,
    random_word_strings,
)
from silobridge.core.errors import InvalidArgument
from silobridge.evaluation.anchors import ANCHOR_KINDS, resolve_anchor_sources
from silobridge.evaluation.datasets import load_builtin

SEEDS = st.integers(0, 2**32 - 1)


def test_packaged_sentences_are_distinct_plain_english_sentences() -> None:
    sentences = packaged_sentences()
    assert len(sentences) > 10_000
    assert len(set(sentences)) == len(sentences)
    for sentence in sentences:
        assert sentence.isascii()
        assert 4 <= len(sentence.split()) <= 40
        assert sentence[0].isupper() or sentence[0] in "\"'"


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(GENERATORS), st.integers(0, 150), SEEDS)
def test_every_generator_is_deterministic_nested_and_distinct(
    generator: str, count: int, seed: int
) -> None:
    texts = generate_anchor_texts(generator, count, seed)
    assert len(texts) == count == len(set(texts))
    assert all(text and text == text.strip() for text in texts)
    assert generate_anchor_texts(generator, count, seed) == texts
    assert generate_anchor_texts(generator, count // 3, seed) == texts[: count // 3]


@pytest.mark.parametrize("generator", GENERATORS)
def test_seeds_change_the_texts(generator: str) -> None:
    assert generate_anchor_texts(generator, 30, 1) != generate_anchor_texts(generator, 30, 2)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 300), SEEDS)
def test_words_are_the_synthetic_word_strings(count: int, seed: int) -> None:
    assert generate_anchor_texts("words", count, seed) == random_word_strings(count, seed)


def test_zipf_draws_list_words_and_favours_the_first_ranks() -> None:
    words = english_words()
    texts = generate_anchor_texts("zipf", 2_000, 0)
    drawn = [word for text in texts for word in text.split(" ")]
    assert all(MIN_WORDS <= len(text.split(" ")) <= MAX_WORDS for text in texts)
    assert set(drawn) <= set(words)
    top = set(words[:100])
    share = sum(word in top for word in drawn) / len(drawn)
    # Uniform draws would put under 0.5% of words in the first 100 ranks.
    assert share > 20 * 100 / len(words)


def test_sentences_are_the_packaged_ones_shuffled_and_bounded() -> None:
    every = generate_anchor_texts("sentences", len(packaged_sentences()), 5)
    assert sorted(every) == sorted(packaged_sentences())
    assert every != packaged_sentences()
    assert available("sentences") == len(packaged_sentences())
    with pytest.raises(InvalidArgument, match="holds only"):
        generate_anchor_texts("sentences", len(packaged_sentences()) + 1, 5)


@settings(max_examples=10, deadline=None)
@given(SEEDS)
def test_chain_texts_are_new_walks_over_seen_word_pairs(seed: int) -> None:
    chain = bigram_chain()
    training = {" ".join(chain_tokens(s)) for s in packaged_sentences()}
    pairs = {pair for sentence in packaged_sentences() for pair in pairwise(chain_tokens(sentence))}
    for text in generate_anchor_texts("chain", 200, seed):
        tokens = text.split(" ")
        assert text not in training
        assert CHAIN_MIN_WORDS <= len(tokens) <= CHAIN_MAX_WORDS
        assert text == text.lower()
        assert set(pairwise(tokens)) <= pairs
    assert chain.training == frozenset(training)


def test_mix_takes_turns_between_words_sentences_and_chain() -> None:
    texts = generate_anchor_texts("mix", 300, 0)
    sentences = set(packaged_sentences())
    vocabulary = set(english_words())
    from_sentences = [t for t in texts if t in sentences]
    from_words = [t for t in texts if t not in sentences and set(t.split(" ")) <= vocabulary]
    assert len(from_sentences) == 100
    # A chain walk can, rarely, use only list words; the word strings are still about a third.
    assert 90 <= len(from_words) <= 110
    # Its parts have their own seeds: the mix does not replay the words generator's seed.
    assert not set(random_word_strings(100, 0)) & set(texts)


def test_bad_names_and_counts_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown anchor generator 'poems'"):
        generate_anchor_texts("poems", 5, 0)
    for generator in GENERATORS:
        with pytest.raises(InvalidArgument, match="non-negative"):
            generate_anchor_texts(generator, -1, 0)


def test_eval_anchor_kinds_are_the_generators_texts() -> None:
    data = load_builtin("kjv-knn", corpus_size=50, queries=5, seed=0)
    kinds = ["zipf", "sentences", "chain", "mix"]
    assert set(kinds) <= set(ANCHOR_KINDS)
    sources = resolve_anchor_sources([*kinds, "synthetic"], [], data, seed=3)
    assert [source.name for source in sources] == [*kinds, "synthetic"]
    for kind, source in zip(kinds, sources, strict=False):
        assert source.take(50) == generate_anchor_texts(kind, 50, 3)
    assert len(sources[1].texts) == len(packaged_sentences())
    with pytest.raises(InvalidArgument, match="holds only"):
        sources[1].take(len(packaged_sentences()) + 1)
    assert sources[-1].take(50) == random_word_strings(50, 3)


# --- the CLI -----------------------------------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text('[coordinator]\nstate_dir = "state"\n[server]\ninsecure = true\n')
    return path


def test_cli_builds_a_chain_set_and_records_the_generator(tmp_path: Path) -> None:
    config = _config(tmp_path)
    runner = CliRunner()
    base = ["build", "--config", str(config), "--synthetic", "40"]
    chain = runner.invoke(anchors_app, [*base, "--name", "chained", "--generator", "chain"])
    assert chain.exit_code == 0, chain.output
    catalogue = AnchorCatalogue(tmp_path / "state/anchors")
    assert catalogue.info("chained").source == "chain:40:seed=0"
    assert catalogue.get("chained").texts == generate_anchor_texts("chain", 40, 0)

    words = runner.invoke(anchors_app, [*base, "--name", "plain", "--generator", "words"])
    assert words.exit_code == 0, words.output
    assert catalogue.info("plain").source == "synthetic:40:seed=0"
    assert catalogue.get("plain").texts == random_word_strings(40, 0)


def test_cli_refuses_bad_generator_use(tmp_path: Path) -> None:
    config = _config(tmp_path)
    runner = CliRunner()
    base = ["build", "--config", str(config), "--name", "x"]
    unknown = runner.invoke(anchors_app, [*base, "--synthetic", "5", "--generator", "poems"])
    alone = runner.invoke(anchors_app, [*base, "--from", "a.txt", "--generator", "chain"])
    too_many = runner.invoke(
        anchors_app,
        [*base, "--synthetic", str(len(packaged_sentences()) + 1), "--generator", "sentences"],
    )
    for result, message in (
        (unknown, "unknown anchor generator 'poems'"),
        (alone, "--generator only applies to --synthetic N"),
        (too_many, "holds only"),
    ):
        assert result.exit_code == 1
        assert message in " ".join(result.output.split())
    assert not (tmp_path / "state/anchors/x").exists()
