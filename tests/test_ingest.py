"""Corpus readers, and the ingest loop into a silo data directory, with a tiny test embedder."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import re
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from silobridge.core.documents import Document
from silobridge.core.errors import ConfigError, FailedPrecondition, InvalidArgument
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor, fingerprint_space
from silobridge.silo_agent.ingest import MAX_LINE_BYTES, BadLine, ingest, read_documents
from silobridge.silo_agent.store.data import EmbedderLike, SiloData
from silobridge.silo_agent.store.index import IndexSettings
from silobridge.silo_agent.store.milvus_settings import MilvusSettings

from .conftest import INDEX_BACKENDS

DIM = 32


class HashingEmbedder:
    """Hashed bag of words → 32-d unit vectors; records every text it is asked to embed."""

    dimension = DIM

    def __init__(self, salt: str = "") -> None:
        self._salt = salt
        self.model_id = f"test/hashing-bow{salt}"
        self.spec = f"test:hashing{salt}"
        self.embedded: list[str] = []
        self._space = SpaceDescriptor(
            space_id=f"hashing{salt}",
            model_id=self.model_id,
            dimension=DIM,
            fingerprint=fingerprint_space(self._vectors),
        )

    def _vectors(self, texts: Sequence[str]) -> FloatMatrix:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in re.findall(r"\w+", text.lower()) or ["<empty>"]:
                digest = hashlib.sha256((self._salt + token).encode()).digest()
                out[row, digest[0] % DIM] += 1.0 if digest[1] % 2 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out[:, :1] += (norms == 0).astype(np.float32)  # a cancelled-out bag still gets a direction
        unit: FloatMatrix = out / np.linalg.norm(out, axis=1, keepdims=True)
        return unit

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> FloatMatrix:
        self.embedded.extend(texts)
        return self._vectors(texts)

    @property
    def space(self) -> SpaceDescriptor:
        return self._space


def _conforms(embedder: EmbedderLike) -> EmbedderLike:
    return embedder


EMBEDDER_CHECK = _conforms(HashingEmbedder())  # mypy: the test embedder satisfies the protocol

VERSES = [
    ("Gen.1.1", "In the beginning God created the heaven and the earth."),
    ("Gen.1.2", "And the earth was without form, and void; and darkness was upon the deep."),
    ("Gen.1.3", "And God said, Let there be light: and there was light."),
    ("Gen.1.4", "And God saw the light, that it was good: and God divided the light."),
    ("Gen.1.5", "And God called the light Day, and the darkness he called Night."),
    ("Gen.1.6", "And God said, Let there be a firmament in the midst of the waters."),
    ("Gen.1.7", "And God made the firmament, and divided the waters from the waters."),
]


def write_jsonl(path: Path, records: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def verse_records() -> list[dict[str, object]]:
    return [{"id": i, "text": t, "metadata": {"book": "Genesis"}} for i, t in VERSES]


def split(items: Sequence[Document | BadLine]) -> tuple[list[Document], list[BadLine]]:
    return (
        [x for x in items if isinstance(x, Document)],
        [x for x in items if isinstance(x, BadLine)],
    )


# ---------------------------------------------------------------- readers


def test_jsonl_reader_yields_documents_with_metadata(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "kjv.jsonl", verse_records())
    good, bad = split(list(read_documents(source)))
    assert bad == []
    assert [d.doc_id for d in good] == [i for i, _ in VERSES]
    assert good[0].text == VERSES[0][1]
    assert good[0].metadata == {"book": "Genesis"}


def test_each_bad_jsonl_line_is_reported_by_number_and_good_lines_are_kept(
    tmp_path: Path,
) -> None:
    lines = [
        json.dumps({"id": "a", "text": "first good line"}),  # 1
        "{not json",  # 2
        json.dumps({"text": "no id"}),  # 3
        json.dumps({"id": "b"}),  # 4
        json.dumps({"id": "c", "text": "   "}),  # 5
        json.dumps({"id": "d", "text": "ok", "metadata": {"n": 1}}),  # 6
        json.dumps(["id", "text"]),  # 7
        "",  # 8: blank lines are not documents and not errors
        json.dumps({"id": "a", "text": "same id again"}),  # 9
        json.dumps({"id": "e", "text": "x" * (MAX_LINE_BYTES + 10)}),  # 10
        json.dumps({"id": 42, "text": "integer ids are accepted"}),  # 11
        json.dumps({"id": "f", "text": "last good line", "metadata": {"k": "v"}}),  # 12
    ]
    raw = "\n".join(lines).encode() + b"\n" + b'{"id": "g", "text": "caf\xe9"}\n'  # 13: latin-1
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(raw)

    good, bad = split(list(read_documents(source)))

    assert [d.doc_id for d in good] == ["a", "42", "f"]
    assert good[0].text == "first good line"  # the first of a duplicated id wins
    reasons = {b.line_number: b.reason for b in bad}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 9, 10, 13]
    assert reasons[2].startswith("invalid JSON")
    assert reasons[3] == "missing field 'id'"
    assert reasons[4] == "missing field 'text'"
    assert reasons[5] == "field 'text' must be a non-empty string"
    assert reasons[6] == "metadata must be an object of string values"
    assert "JSON object" in reasons[7]
    assert "duplicate id 'a'" in reasons[9]
    assert "first on line 1" in reasons[9]
    assert reasons[10] == "line exceeds 1 MiB"
    assert "UTF-8" in reasons[13]
    assert all(b.path == source for b in bad)
    assert str(bad[0]) == f"{source}:2: {reasons[2]}"


def test_a_lone_surrogate_is_a_bad_line_not_a_crash_later(tmp_path: Path) -> None:
    source = tmp_path / "s.ndjson"
    source.write_text('{"id": "s", "text": "bad \\ud800 escape"}\n{"id": "t", "text": "fine"}\n')
    good, bad = split(list(read_documents(source)))
    assert [d.doc_id for d in good] == ["t"]
    assert [(b.line_number, b.reason) for b in bad] == [
        (1, "field 'text' must be a non-empty string")
    ]


def test_csv_reader_uses_id_and_text_and_keeps_other_columns_as_metadata(tmp_path: Path) -> None:
    source = tmp_path / "docs.csv"
    source.write_text(
        "id,book,text\n"  # 1
        'g1,Genesis,"In the beginning, God"\n'  # 2
        'g2,Genesis,"a text that spans\n'  # 3
        'two lines"\n'  # 4
        "g3,Genesis\n"  # 5: too few fields
        "g4,Genesis,\n"  # 6: empty text
        "g1,Exodus,duplicate id\n"  # 7
        "g5,Exodus,last\n",  # 8
        encoding="utf-8",
    )
    good, bad = split(list(read_documents(source)))
    assert [(d.doc_id, d.metadata) for d in good] == [
        ("g1", {"book": "Genesis"}),
        ("g2", {"book": "Genesis"}),
        ("g5", {"book": "Exodus"}),
    ]
    assert good[1].text == "a text that spans\ntwo lines"
    reasons = {b.line_number: b.reason for b in bad}
    assert sorted(reasons) == [5, 6, 7]
    assert "expected 3 fields" in reasons[5]
    assert reasons[6] == "field 'text' must be a non-empty string"
    assert "first on line 2" in reasons[7]


def test_csv_with_a_bom_and_an_invalid_utf8_row(tmp_path: Path) -> None:
    source = tmp_path / "bom.csv"
    source.write_bytes("\ufeffid,text\nx,hello\n".encode() + b"y,caf\xe9\nz,bye\n")
    good, bad = split(list(read_documents(source)))
    assert [d.doc_id for d in good] == ["x", "z"]
    assert [(b.line_number, "UTF-8" in b.reason) for b in bad] == [(3, True)]


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ("name,body\na,b\n", "'id' and 'text'"), ("id,text,id\n", "repeats")],
)
def test_csv_without_a_usable_header_is_a_config_error(
    tmp_path: Path, content: str, message: str
) -> None:
    source = tmp_path / "h.csv"
    source.write_text(content)
    with pytest.raises(ConfigError, match=message):
        list(read_documents(source))


def test_gzipped_jsonl_and_csv_are_read(tmp_path: Path) -> None:
    jsonl = tmp_path / "kjv.jsonl.gz"
    jsonl.write_bytes(
        gzip.compress(write_jsonl(tmp_path / "plain.jsonl", verse_records()).read_bytes())
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "text"])
    writer.writerows(VERSES)
    csv_gz = tmp_path / "KJV.CSV.GZ"
    csv_gz.write_bytes(gzip.compress(buffer.getvalue().encode()))

    for source in (jsonl, csv_gz):
        good, bad = split(list(read_documents(source)))
        assert bad == []
        assert [(d.doc_id, d.text) for d in good] == VERSES


def test_file_level_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_documents(tmp_path / "absent.jsonl")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match=r"\.jsonl"):
        read_documents(tmp_path / "notes.txt")
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"this is not gzip data at all")
    with pytest.raises(ConfigError, match=re.escape("broken.jsonl.gz")):
        list(read_documents(broken))
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"id": "a", "text": "b"}\n' * 1000)[:-20])
    with pytest.raises(ConfigError, match=re.escape("truncated.jsonl.gz")):
        list(read_documents(truncated))


# A valid record's id is its line number, so ids never repeat (duplicates are tested above).
RECORD = st.tuples(st.text(), st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
JSON_WHITESPACE = b" \t\r\n"
# Blank lines (JSON whitespace, or a lone byte-order mark on line 1) are skipped, not reported.
NOISE = st.binary(max_size=80).filter(
    lambda b: b"\n" not in b and b.removeprefix(b"\xef\xbb\xbf").strip(JSON_WHITESPACE) != b""
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(RECORD, NOISE), max_size=25))
@example([b"\x1c", b"\x0c", b"\xef\xbb\xbf", b'"text"', (" ", {})])
def test_random_byte_lines_never_stop_the_jsonl_reader(
    lines: list[tuple[str, dict[str, str]] | bytes],
) -> None:
    records = {
        number: {"id": f"valid-{number}", "text": "t" + line[0], "metadata": line[1]}
        for number, line in enumerate(lines, start=1)
        if isinstance(line, tuple)
    }
    encoded = [
        json.dumps(records[number]).encode() if isinstance(line, tuple) else line
        for number, line in enumerate(lines, start=1)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "noise.jsonl"
        source.write_bytes(b"\n".join(encoded))
        items = list(read_documents(source))

    assert len(items) == len(lines)  # every non-blank line gives exactly one item, in order
    for number, item in enumerate(items, start=1):
        if number in records:
            assert isinstance(item, Document)
            assert item.doc_id == records[number]["id"]
            assert item.text == records[number]["text"]
            assert item.metadata == records[number]["metadata"]
        elif isinstance(item, BadLine):
            assert item.line_number == number


CELL = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(CELL, CELL), max_size=15, unique_by=lambda row: row[0]))
def test_every_csv_row_a_writer_produces_is_read_back(rows: list[tuple[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "text", "note"])
    writer.writerows((f"r{doc_id}", f"t{text}", text) for doc_id, text in rows)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "rows.csv"
        source.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        items = list(read_documents(source))
    assert all(isinstance(item, Document) for item in items)
    assert [(d.doc_id, d.text, d.metadata) for d in items if isinstance(d, Document)] == [
        (f"r{doc_id}", f"t{text}", {"note": text}) for doc_id, text in rows
    ]


# ---------------------------------------------------------------- SiloData and ingest

SETTINGS = IndexSettings(exact_threshold=1000)


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


@pytest.fixture(params=INDEX_BACKENDS)
def index_settings(request: pytest.FixtureRequest, tmp_path: Path) -> IndexSettings:
    """The silo's index: FAISS files, or a Milvus Lite file in its data directory."""
    if request.param == "faiss":
        return SETTINGS
    lite = MilvusSettings(str(tmp_path / "silo" / "milvus.db"), "ingest")
    return dataclasses.replace(SETTINGS, milvus=lite)


@pytest.fixture
def data(
    tmp_path: Path, embedder: HashingEmbedder, index_settings: IndexSettings
) -> Iterator[SiloData]:
    opened = SiloData.open(tmp_path / "silo", embedder.space, index_settings)
    yield opened
    opened.close()


def test_ingesting_twice_embeds_nothing_the_second_time(
    tmp_path: Path, data: SiloData, embedder: HashingEmbedder
) -> None:
    source = write_jsonl(tmp_path / "kjv.jsonl", verse_records())
    done: list[int] = []
    first = ingest([source], data, embedder, batch_size=3, progress=done.append, chunk=3)
    assert (first.files, first.read, first.inserted, first.updated, first.unchanged) == (
        1,
        len(VERSES),
        len(VERSES),
        0,
        0,
    )
    assert first.index_rebuilt
    assert done == [3, 6, 7]
    assert len(embedder.embedded) == len(VERSES)

    embedder.embedded.clear()
    second = ingest([source], data, embedder, batch_size=3)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, len(VERSES))
    assert embedder.embedded == []
    assert not second.index_rebuilt


def test_ingest_reembeds_only_the_changed_document_and_search_sees_it(
    tmp_path: Path, data: SiloData, embedder: HashingEmbedder
) -> None:
    records = verse_records()
    ingest([write_jsonl(tmp_path / "v1.jsonl", records)], data, embedder)
    records[2] = {"id": "Gen.1.3", "text": "Quantum chromodynamics explains gluon confinement."}
    embedder.embedded.clear()

    summary = ingest([write_jsonl(tmp_path / "v2.jsonl", records)], data, embedder)

    assert (summary.inserted, summary.updated, summary.unchanged) == (0, 1, len(VERSES) - 1)
    assert embedder.embedded == ["Quantum chromodynamics explains gluon confinement."]
    query = embedder.embed(["quantum chromodynamics gluon confinement"])[0]
    hits = data.search(query, 3)
    assert hits[0].doc_id == "Gen.1.3"
    assert hits[0].fields == {}
    assert data.count() == len(VERSES)


def test_ingest_collects_bad_lines_from_every_file(
    tmp_path: Path, data: SiloData, embedder: HashingEmbedder
) -> None:
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"id": "x", "text": "good"}) + "\n{oops\n")
    b = tmp_path / "b.csv"
    b.write_text("id,text\ny,fine\nz,\n")
    summary = ingest([a, b], data, embedder)
    assert (summary.files, summary.read, summary.inserted) == (2, 2, 2)
    assert [(bad.path.name, bad.line_number) for bad in summary.bad_lines] == [
        ("a.jsonl", 2),
        ("b.csv", 3),
    ]


def test_a_misspelt_path_fails_before_anything_is_stored(
    tmp_path: Path, data: SiloData, embedder: HashingEmbedder
) -> None:
    good = write_jsonl(tmp_path / "kjv.jsonl", verse_records())
    with pytest.raises(ConfigError, match=re.escape("kjv.jsnol")):
        ingest([good, tmp_path / "kjv.jsnol"], data, embedder)
    assert data.count() == 0


def test_search_finds_a_document_by_its_own_vector(
    tmp_path: Path, data: SiloData, embedder: HashingEmbedder
) -> None:
    ingest([write_jsonl(tmp_path / "kjv.jsonl", verse_records())], data, embedder)
    for doc_id, text in VERSES:
        hits = data.search(embedder.embed([text])[0], 2)
        assert hits[0].doc_id == doc_id
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].fields == {"book": "Genesis"}


def test_search_before_any_ingest_says_what_to_run(data: SiloData) -> None:
    with pytest.raises(
        FailedPrecondition, match="index not built yet: run `silobridge silo ingest`"
    ):
        data.search(np.ones(DIM, dtype=np.float32) / np.sqrt(DIM), 3)


def test_search_refuses_a_vector_of_the_wrong_dimension(
    tmp_path: Path, data: SiloData, embedder: HashingEmbedder
) -> None:
    ingest([write_jsonl(tmp_path / "kjv.jsonl", verse_records())], data, embedder)
    with pytest.raises(InvalidArgument, match=f"expects \\({DIM},\\)"):
        data.search(np.ones(DIM + 1, dtype=np.float32), 3)


def test_a_server_opening_the_directory_later_serves_the_saved_index(
    tmp_path: Path, data: SiloData, embedder: HashingEmbedder, index_settings: IndexSettings
) -> None:
    ingest([write_jsonl(tmp_path / "kjv.jsonl", verse_records())], data, embedder)
    server_side = SiloData.open(data.data_dir, embedder.space, index_settings)
    try:
        assert server_side.count() == len(VERSES)
        query = embedder.embed([VERSES[4][1]])[0]
        assert [h.doc_id for h in server_side.search(query, 3)] == [
            h.doc_id for h in data.search(query, 3)
        ]
    finally:
        server_side.close()


def test_a_running_server_picks_up_a_later_ingest_on_reload(
    tmp_path: Path, data: SiloData, embedder: HashingEmbedder, index_settings: IndexSettings
) -> None:
    ingest([write_jsonl(tmp_path / "a.jsonl", verse_records()[:3])], data, embedder)
    server_side = SiloData.open(data.data_dir, embedder.space, index_settings)
    try:
        assert server_side.reload_index() is False
        ingest([write_jsonl(tmp_path / "b.jsonl", verse_records())], data, embedder)
        query = embedder.embed([VERSES[6][1]])[0]
        if index_settings.milvus is None:
            # FAISS: the server serves the files it loaded until it reloads.
            assert server_side.search(query, 1)[0].doc_id != VERSES[6][0]
            assert server_side.reload_index() is True
        else:
            # Milvus: the ingest swapped the alias and dropped the old collection; the server's
            # next search follows the alias to the new one, without a reload.
            pass
        assert server_side.search(query, 1)[0].doc_id == VERSES[6][0]
    finally:
        server_side.close()


def test_another_model_is_refused_by_the_docstore_and_by_ingest(
    tmp_path: Path, data: SiloData, embedder: HashingEmbedder, index_settings: IndexSettings
) -> None:
    other = HashingEmbedder(salt="other")
    assert other.space.fingerprint != embedder.space.fingerprint
    with pytest.raises(FailedPrecondition) as refused:
        SiloData.open(data.data_dir, other.space, index_settings)
    for expected in (
        embedder.space.fingerprint,
        other.space.fingerprint,
        embedder.model_id,
        other.model_id,
        "new data directory",
    ):
        assert expected in refused.value.message
    with pytest.raises(FailedPrecondition, match=other.space.fingerprint):
        ingest([write_jsonl(tmp_path / "kjv.jsonl", verse_records())], data, other)
    assert other.embedded == []


def test_an_index_from_another_model_is_refused_even_with_a_fresh_docstore(
    tmp_path: Path, data: SiloData, embedder: HashingEmbedder, index_settings: IndexSettings
) -> None:
    ingest([write_jsonl(tmp_path / "kjv.jsonl", verse_records())], data, embedder)
    data.close()
    (data.data_dir / "docstore.sqlite").unlink()
    for leftover in data.data_dir.glob("docstore.sqlite-*"):
        leftover.unlink()
    other = HashingEmbedder(salt="other")
    with pytest.raises(FailedPrecondition, match=f"index .*{embedder.space.fingerprint}"):
        SiloData.open(data.data_dir, other.space, index_settings)


def test_an_interrupted_ingest_is_finished_by_the_next_one(
    tmp_path: Path, data: SiloData, embedder: HashingEmbedder, index_settings: IndexSettings
) -> None:
    ingest([write_jsonl(tmp_path / "v1.jsonl", verse_records())], data, embedder)
    records = verse_records()
    records[0] = {"id": "Gen.1.1", "text": "Quantum chromodynamics explains gluon confinement."}
    v2 = write_jsonl(tmp_path / "v2.jsonl", records)
    # An ingest of v2 that crashed after its upsert and before the index rebuild.
    changed = Document("Gen.1.1", str(records[0]["text"]), {})
    data.upsert([changed], embedder.embed([changed.text]))
    reopened = SiloData.open(data.data_dir, embedder.space, index_settings)
    try:
        assert reopened.needs_rebuild
        summary = ingest([v2], reopened, embedder)
        assert (summary.inserted, summary.updated) == (0, 0)  # nothing left to store ...
        assert summary.index_rebuilt  # ... but the index still had to catch up
        assert not reopened.needs_rebuild
        hits = reopened.search(embedder.embed(["quantum chromodynamics gluon"])[0], 1)
        assert hits[0].doc_id == "Gen.1.1"
    finally:
        reopened.close()


def test_concurrent_searches_agree_with_serial_ones(
    tmp_path: Path, data: SiloData, embedder: HashingEmbedder
) -> None:
    ingest([write_jsonl(tmp_path / "kjv.jsonl", verse_records())], data, embedder)
    queries = embedder.embed([t for _, t in VERSES] * 8)
    expected = [[h.doc_id for h in data.search(q, 3)] for q in queries]
    start = threading.Barrier(4)

    def run(q: np.ndarray) -> list[str]:
        return [h.doc_id for h in data.search(q, 3)]

    def first_wait(q: np.ndarray) -> list[str]:
        start.wait(timeout=10)
        return run(q)

    with ThreadPoolExecutor(max_workers=4) as pool:
        warm = list(pool.map(first_wait, queries[:4]))
        results = warm + list(pool.map(run, queries[4:]))
    assert results == expected
