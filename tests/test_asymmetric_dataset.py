"""The asymmetric built-in set: a Python-documentation heading asks for its section's paragraph."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from silobridge.core.errors import InvalidArgument
from silobridge.evaluation.anchors import resolve_anchor_sources
from silobridge.evaluation.cli import eval_command
from silobridge.evaluation.corpus import load_records
from silobridge.evaluation.datasets import (
    PYDOC_HEADINGS,
    RetrievalDataset,
    check_anchor_source,
    load_builtin,
)

from .conftest import load_demo_data_builder


def _words(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def data() -> RetrievalDataset:
    return load_builtin(PYDOC_HEADINGS, corpus_size=None, queries=200, seed=0)


# ---- the committed file ------------------------------------------------------------------------


def test_each_section_record_pairs_a_unique_heading_with_a_unique_paragraph() -> None:
    records = load_records("pydoc_sections")
    assert 2000 < len(records) < 4000
    assert [r.id for r in records] == [f"pysec-{n:06d}" for n in range(1, len(records) + 1)]
    headings = [r.metadata["heading"].casefold() for r in records]
    assert len(set(headings)) == len(headings)
    assert len({r.text for r in records}) == len(records)
    assert all(r.metadata["source"].endswith(".rst") for r in records)


# ---- the builder -------------------------------------------------------------------------------

SAMPLE_PAGE = """\
=================
Widget Management
=================

**Source code:** ``Lib/widgets.py``

Widgets are managed by a registry that keeps one entry for every widget the
application has created so far, and frees them when the program exits.

Examples
--------

This paragraph sits under a generic heading, so it never becomes a query of the set even
though it is long enough to be prose.

frobnicate
----------

This paragraph sits under a single lowercase code name, so it is not a topical heading that
a reader would type as a search query.

A heading that runs on for far too many words to be anything like a search query
----------------------------------------------------------------------------------

This paragraph sits under a heading of more than twelve words, which reads like a sentence and
not like the short query this set is about.

Shared Title
------------

A section whose title another page uses as well, so the title alone cannot say which of the two
paragraphs a reader meant.

Registry Internals
------------------

Widgets are managed by a registry that keeps one entry for every widget the
application has created so far, and frees them when the program exits.
"""

OTHER_PAGE = """\
:mod:`widgets` --- Building *simple* widgets
============================================

The widgets module builds simple widgets from a description, checks their layout against the
screen and reports every widget it could not place.

Shared Title
------------

A second section under the same title as one on another page: both copies are dropped because
the title alone cannot say which of the two paragraphs a reader meant.
"""


def test_sections_skip_generic_code_like_repeated_headings_and_reused_paragraphs(
    tmp_path: Path,
) -> None:
    (tmp_path / "library").mkdir()
    (tmp_path / "a.rst.txt").write_text(SAMPLE_PAGE, encoding="utf-8")
    (tmp_path / "library" / "widgets.rst.txt").write_text(OTHER_PAGE, encoding="utf-8")
    records = load_demo_data_builder().pydoc_sections(tmp_path)
    pairs = [(r.metadata["heading"], r.metadata["source"], r.text.split()[:3]) for r in records]
    # "Registry Internals" repeats the first section's paragraph, so only the first pair stays.
    assert pairs == [
        ("Widget Management", "a.rst", ["Widgets", "are", "managed"]),
        (
            "widgets --- Building simple widgets",
            "library/widgets.rst",
            ["The", "widgets", "module"],
        ),
    ]
    assert [r.id for r in records] == ["pysec-000001", "pysec-000002"]


# ---- the dataset -------------------------------------------------------------------------------


def test_headings_are_short_queries_for_longer_paragraphs(data: RetrievalDataset) -> None:
    assert data.name == PYDOC_HEADINGS
    assert data.labelled
    assert len(data.query_ids) == 200
    assert len(data.corpus_ids) == len(load_records("pydoc_sections"))
    assert all(_words(q) <= 12 for q in data.query_texts)
    assert all(_words(doc) >= 20 for doc in data.corpus_texts)
    mean_query = sum(map(_words, data.query_texts)) / len(data.query_texts)
    mean_doc = sum(map(_words, data.corpus_texts)) / len(data.corpus_texts)
    assert mean_doc > 4 * mean_query
    for query_id, judged in zip(data.query_ids, data.qrels, strict=True):
        # One relevant document per heading: the paragraph stored under the same id.
        assert [data.corpus_ids[doc] for doc in judged] == [query_id]


def test_no_test_heading_or_its_paragraph_is_in_the_anchor_or_traffic_pools(
    data: RetrievalDataset,
) -> None:
    relevant = {data.corpus_texts[doc] for judged in data.qrels for doc in judged}
    held_out = set(data.query_texts) | relevant
    assert not held_out & set(data.in_domain_pool)
    assert not held_out & set(data.traffic_pool)
    all_headings = {r.metadata["heading"] for r in load_records("pydoc_sections")}
    # Traffic is the other headings; the in-domain pool mixes headings and paragraphs evenly.
    assert set(data.traffic_pool) <= all_headings
    assert len(data.traffic_pool) == len(all_headings) - len(data.query_ids)
    head = data.in_domain_pool[:1000]
    assert 400 < sum(text in all_headings for text in head) < 600


def test_subsampling_is_reproducible_and_keeps_every_relevant_paragraph() -> None:
    first = load_builtin(PYDOC_HEADINGS, corpus_size=300, queries=50, seed=3)
    again = load_builtin(PYDOC_HEADINGS, corpus_size=300, queries=50, seed=3)
    other = load_builtin(PYDOC_HEADINGS, corpus_size=300, queries=50, seed=4)
    assert first == again
    assert first.query_ids != other.query_ids
    assert (len(first.query_ids), len(first.corpus_ids)) == (50, 300)
    assert set(first.query_ids) <= set(first.corpus_ids)
    with pytest.raises(InvalidArgument, match="--queries"):
        load_builtin(PYDOC_HEADINGS, corpus_size=None, queries=10**6, seed=0)


# ---- anchors -----------------------------------------------------------------------------------


def test_public_anchors_are_refused_because_they_hold_this_corpus(data: RetrievalDataset) -> None:
    assert data.excludes_public_anchors
    public_texts = {r.text for r in load_records("pydoc_anchors")}
    # Why the refusal exists: nearly every paragraph of the corpus is also a public anchor.
    assert sum(text in public_texts for text in data.corpus_texts) > len(data.corpus_texts) // 2
    with pytest.raises(InvalidArgument, match="Python-documentation paragraphs"):
        check_anchor_source(data, "public")
    with pytest.raises(InvalidArgument, match="--anchors synthetic or in-domain"):
        resolve_anchor_sources(["synthetic", "public"], [], data, seed=0)
    sources = resolve_anchor_sources(["synthetic", "in-domain"], [], data, seed=0)
    assert [source.name for source in sources] == ["synthetic", "in-domain"]
    # Other sets still take the public anchors.
    bible = load_builtin("kjv-knn", corpus_size=50, queries=5, seed=0)
    check_anchor_source(bible, "public")


def test_the_cli_explains_the_refusal_without_a_traceback() -> None:
    app = typer.Typer()
    app.command("eval")(eval_command)

    @app.callback()
    def root() -> None:
        """Mounts `eval` as a sub-command, as the silobridge entry point does."""

    # No --anchors means the public set, which this dataset refuses before any model loads.
    args = ["eval", "--source-model", "static-64", "--target-model", "static-64"]
    args += ["--dataset", PYDOC_HEADINGS, "--queries", "20", "--no-cache"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "Python-documentation paragraphs" in result.output
    assert "Traceback" not in result.output
