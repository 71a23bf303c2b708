"""Synthetic public anchors: reproducible, nested, distinct, made only of the public word list."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from silobridge.coordinator.anchors.synthetic import (
    MAX_WORDS,
    MIN_WORDS,
    english_words,
    random_word_strings,
)


def test_word_list_is_plain_english_words() -> None:
    words = english_words()
    assert len(words) > 20_000
    assert {"shepherd", "river", "function"} <= set(words)
    assert all(word.isalpha() and word.isascii() and len(word) >= 3 for word in words)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 400), st.integers(0, 2**32 - 1))
def test_strings_are_deterministic_nested_and_distinct(count: int, seed: int) -> None:
    strings = random_word_strings(count, seed)
    assert len(strings) == count == len(set(strings))
    assert random_word_strings(count, seed) == strings
    assert random_word_strings(count // 2, seed) == strings[: count // 2]
    vocabulary = set(english_words())
    for text in strings:
        words = text.split(" ")
        assert MIN_WORDS <= len(words) <= MAX_WORDS
        assert set(words) <= vocabulary


def test_different_seeds_give_different_anchors() -> None:
    assert random_word_strings(50, 1) != random_word_strings(50, 2)
