"""The committed demo corpus: aligned KJV/WEB verses, clean Python-doc anchors, and its loader."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.evaluation.corpus import (
    DEMO_SETS,
    DemoRecord,
    demo_data_dir,
    load_records,
)

from .conftest import load_demo_data_builder

REPO = Path(__file__).resolve().parents[1]


builder = load_demo_data_builder()


@pytest.fixture(scope="module")
def kjv() -> list[DemoRecord]:
    return load_records("kjv")


@pytest.fixture(scope="module")
def web() -> list[DemoRecord]:
    return load_records("web")


@pytest.fixture(scope="module")
def anchors() -> list[DemoRecord]:
    return load_records("pydoc_anchors")


# --- the committed files ---------------------------------------------------------------------


def test_demo_files_are_committed_beside_their_readme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SILOBRIDGE_DEMO_DATA", raising=False)
    directory = demo_data_dir()
    assert directory == REPO / "data" / "demo"
    for name in DEMO_SETS:
        assert (directory / f"{name}.jsonl.gz").stat().st_size > 100_000
    readme = (directory / "README.md").read_text(encoding="utf-8")
    assert "scripts/build_demo_data.py" in readme
    assert "apt-get install sword-text-kjv sword-text-web python3.11-doc" in readme


def test_kjv_and_web_hold_the_same_verses_in_the_same_order(
    kjv: list[DemoRecord], web: list[DemoRecord]
) -> None:
    assert len(kjv) >= 30_000
    ids = [r.id for r in kjv]
    assert ids == [r.id for r in web]
    assert len(set(ids)) == len(ids)
    for records, translation in ((kjv, "KJV"), (web, "WEB")):
        for record in records:
            meta = record.metadata
            assert record.id == f"{meta['book']}.{meta['chapter']}.{meta['verse']}"
            assert meta["translation"] == translation
            assert record.text.strip() == record.text != ""


def test_verse_texts_carry_no_markup_or_notes(kjv: list[DemoRecord], web: list[DemoRecord]) -> None:
    for record in (*kjv, *web):
        assert "<" not in record.text and ">" not in record.text, record.id
        assert "  " not in record.text, record.id
    by_id = {r.id: r.text for r in web}
    # WEB's Gen 1:1 carries a footnote on "God" ("The Hebrew word rendered ..."): gone, words kept.
    assert by_id["Gen.1.1"] == "In the beginning, God created the heavens and the earth."


def test_spot_checks_pair_an_archaic_verse_with_its_modern_twin(
    kjv: list[DemoRecord], web: list[DemoRecord]
) -> None:
    kjv_by_id = {r.id: r.text for r in kjv}
    web_by_id = {r.id: r.text for r in web}
    assert kjv_by_id["Gen.1.1"].startswith("In the beginning God created")
    assert "John.3.16" in kjv_by_id and "John.3.16" in web_by_id
    assert kjv_by_id["John.3.16"] != web_by_id["John.3.16"]
    assert "believeth" in kjv_by_id["John.3.16"]
    assert "believes" in web_by_id["John.3.16"]
    # Numbering rebuilt from chapter markers: the last verse of the Bible lines up in both.
    assert kjv[-1].id == web[-1].id == "Rev.22.21"
    assert "Glossary" not in web_by_id["Rev.22.21"]


def test_anchors_are_unique_prose_paragraphs(anchors: list[DemoRecord]) -> None:
    assert len(anchors) >= 15_000
    assert len({r.id for r in anchors}) == len(anchors)
    assert len({r.text for r in anchors}) == len(anchors)
    for record in anchors:
        assert re.fullmatch(r"pydoc-\d{6}", record.id)
        assert record.metadata["source"].endswith(".rst")
        assert len(record.text.split()) >= 20, record.id
        assert ">>>" not in record.text, record.id
        assert ":func:" not in record.text and ":class:" not in record.text, record.id
        assert "``" not in record.text, record.id


# --- the loader ------------------------------------------------------------------------------


def test_limit_returns_the_head_of_the_set(kjv: list[DemoRecord]) -> None:
    assert load_records("kjv", limit=5) == kjv[:5]
    assert load_records("web", limit=0) == []
    assert [r.id for r in load_records("pydoc_anchors", limit=3)] == [
        "pydoc-000001",
        "pydoc-000002",
        "pydoc-000003",
    ]


def test_unknown_set_and_negative_limit_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="pydoc_anchors"):
        load_records("bible")
    with pytest.raises(InvalidArgument, match="limit"):
        load_records("kjv", limit=-1)


def test_missing_file_names_the_rebuild_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SILOBRIDGE_DEMO_DATA", str(tmp_path))
    assert demo_data_dir() == tmp_path
    with pytest.raises(ConfigError, match=r"scripts/build_demo_data\.py"):
        load_records("web")


def test_corrupt_file_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILOBRIDGE_DEMO_DATA", str(tmp_path))
    (tmp_path / "kjv.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError, match="unreadable"):
        load_records("kjv")
    with gzip.open(tmp_path / "web.jsonl.gz", "wt", encoding="utf-8") as out:
        out.write('{"id": "x", "text": "y"}\n')
    with pytest.raises(ConfigError, match=r"web\.jsonl\.gz:1"):
        load_records("web")


_record = st.builds(
    DemoRecord,
    id=st.text(min_size=1, max_size=20),
    text=st.text(max_size=200),
    metadata=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
)


@given(records=st.lists(_record, max_size=8), limit=st.none() | st.integers(0, 10))
def test_written_records_load_back_unchanged(
    tmp_path_factory: pytest.TempPathFactory, records: list[DemoRecord], limit: int | None
) -> None:
    directory = tmp_path_factory.mktemp("demo")
    out = directory / "pydoc_anchors.jsonl.gz"
    builder.write_jsonl_gz(out, [builder.Record(r.id, r.text, r.metadata) for r in records])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SILOBRIDGE_DEMO_DATA", str(directory))
        loaded = load_records("pydoc_anchors", limit=limit)
    assert loaded == records[:limit]


# --- the builder's cleaning rules ------------------------------------------------------------


def test_builder_output_is_byte_identical_across_runs(tmp_path: Path) -> None:
    records = [builder.Record("Gen.1.1", "Au commencement, Dieu créa", {"book": "Gen"})]
    first = builder.write_jsonl_gz(tmp_path / "a.jsonl.gz", records)
    second = builder.write_jsonl_gz(tmp_path / "b.jsonl.gz", records)
    assert first == second
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    line = gzip.decompress((tmp_path / "a.jsonl.gz").read_bytes()).decode("utf-8")
    assert (
        line == '{"id":"Gen.1.1","text":"Au commencement, Dieu créa","metadata":{"book":"Gen"}}\n'
    )


def test_osis_cleaning_drops_notes_and_headings_but_keeps_words() -> None:
    raw = (
        '<w lemma="strong:H0430">God</w><note placement="foot"><reference type="annotateRef">'
        "1:1 </reference>a footnote</note><w>created</w> <title>Section heading</title>"
        '<transChange type="added">it was</transChange> good<note n="a">x</note>. '
        '<q who="Jesus">“Go.”</q>Then ¶ &amp; <speaker>Beloved</speaker>'
    )
    assert builder.clean_osis(raw) == "God created it was good. “Go.” Then &"


def test_canonical_psalm_titles_stay_and_acrostic_letters_go() -> None:
    title = '<title canonical="true" type="psalm">A Psalm of <w>David</w>.</title> Hear me.'
    assert builder.clean_osis(title) == "A Psalm of David. Hear me."
    acrostic = '<title canonical="true" type="psalm">BETH</title> <l/>How can a young man'
    assert builder.clean_osis(acrostic) == "How can a young man"


def test_rst_prose_keeps_paragraphs_and_drops_code_tables_and_headings() -> None:
    source = """\
Heading
=======

.. function:: spam(eggs)
              spam(eggs, ham)

   Return the *spam* of :func:`~os.path.join` applied to ``eggs``, see `the docs
   <https://example.org>`_ and :pep:`8`.  For example::

      x = spam(1)

   >>> spam(2)
   4

   .. versionchanged:: 3.11 Accepts **ham**.

.. code-block:: python

   print("code")

=====  =====
a      b
=====  =====
"""
    paragraphs = [
        builder.strip_inline_markup(p) for p in builder.rst_paragraphs(source.split("\n"))
    ]
    assert paragraphs == [
        "Return the spam of join applied to eggs, see the docs and PEP 8. For example:",
        "Accepts ham.",
    ]
