"""The Milvus index backend (``[index] backend = "milvus"``) on a real Milvus Lite.

The same random unit vectors go into a FAISS-backed and a Milvus-backed data directory: exact
search must return the same ids in the same order with the same scores, HNSW must find what
exact search finds, live writes and deletes must be searched at once, a restart must serve the
saved collection, another model's collection is refused, and a migration's generations are
collections behind aliases. One Lite file serves the module; each test has its own prefix.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from silobridge.core.documents import Document
from silobridge.core.errors import ConfigError, FailedPrecondition, Unavailable
from silobridge.core.migration import MigrationCommand, MigrationState
from silobridge.core.spaces import SpaceDescriptor
from silobridge.embedding.embedders import load_embedder
from silobridge.evaluation.corpus import load_records
from silobridge.rpc.silo_client import SiloClient
from silobridge.silo_agent.config import load_silo_config
from silobridge.silo_agent.migration import files
from silobridge.silo_agent.store import journal
from silobridge.silo_agent.store.data import SiloData
from silobridge.silo_agent.store.index import IndexSettings
from silobridge.silo_agent.store.milvus_home import MilvusHome
from silobridge.silo_agent.store.milvus_settings import MilvusSettings

from .conftest import Pki, ServerThread, index_table, ingest_kjv, write_silo_config
from .test_live_writes import ADMINS
from .test_migration_commands import NEW_MODEL
from .test_migration_commands import _ready as wait_until_ready
from .test_migration_commands import _run as run_migration
from .test_migration_commands import _search as search_in_space

DIM = 32
SPACE = SpaceDescriptor("rand@0001", "test/random", DIM, "00000000000000a1")
OTHER = SpaceDescriptor("rand@0002", "test/other", DIM, "00000000000000b2")
NEW = SpaceDescriptor("small@0003", "test/small", 8, "00000000000000c3")
EXACT = 1_000_000
CORPUS = 600  # KJV verses in the mTLS comparison
MIGRATED = 120  # KJV verses of the migrated silo
_prefixes = itertools.count()


def unit(seed: int, n: int, dim: int = DIM) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim))
    out: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return out


def docs(start: int, stop: int) -> list[Document]:
    return [Document(f"doc-{i}", f"text {i}", {}) for i in range(start, stop)]


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Milvus Lite file for the module: starting Lite is the slow part."""
    return tmp_path_factory.mktemp("milvus") / "shared.db"


def on_milvus(lite: Path, exact_threshold: int = EXACT, prefix: str = "") -> IndexSettings:
    name = prefix or f"t{next(_prefixes)}"
    return IndexSettings(exact_threshold=exact_threshold, milvus=MilvusSettings(str(lite), name))


@pytest.fixture
def opened() -> Iterator[list[SiloData]]:
    """Data directories a test opened, closed after it (the Lite file stays)."""
    directories: list[SiloData] = []
    yield directories
    for data in directories:
        data.close()


def filled(
    opened: list[SiloData], root: Path, settings: IndexSettings, vectors: np.ndarray
) -> SiloData:
    data = SiloData.open(root, SPACE, settings)
    opened.append(data)
    data.upsert(docs(0, vectors.shape[0]), vectors)
    data.rebuild_index()
    return data


def assert_same_hits(faiss: SiloData, milvus: SiloData, queries: np.ndarray, k: int) -> None:
    for query in queries:
        expected, got = faiss.search(query, k), milvus.search(query, k)
        assert [hit.doc_id for hit in got] == [hit.doc_id for hit in expected]
        for mine, theirs in zip(got, expected, strict=True):
            assert mine.score == pytest.approx(theirs.score, abs=1e-5)


def milvus_home(data: SiloData) -> MilvusHome:
    assert isinstance(data.home, MilvusHome)
    return data.home


def aliases_of(home: MilvusHome) -> dict[str, str]:
    """Each of the silo's aliases in Milvus, and the collection it names."""
    return {
        alias: home.client.describe_alias(alias)["collection_name"]
        for alias in home.client.list_aliases()["aliases"]
        if alias == home.prefix or alias.startswith(f"{home.prefix}__")
    }


# --------------------------------------------------------------------- search parity


def test_exact_search_equals_faiss_exact_on_the_same_vectors(
    tmp_path: Path, lite: Path, opened: list[SiloData]
) -> None:
    vectors = unit(1, 3000)
    faiss = filled(opened, tmp_path / "faiss", IndexSettings(exact_threshold=EXACT), vectors)
    milvus = filled(opened, tmp_path / "milvus", on_milvus(lite), vectors)
    assert milvus.manifest is not None and milvus.manifest.factory == "milvus:FLAT"
    assert milvus.manifest.count == 3000
    assert not milvus.needs_rebuild and milvus.pending_changes == 0
    queries = unit(2, 40)
    assert_same_hits(faiss, milvus, queries, 10)
    assert_same_hits(faiss, milvus, queries[:5], 100)


def test_hnsw_recall_at_10_against_exact_search(
    tmp_path: Path, lite: Path, opened: list[SiloData]
) -> None:
    vectors, queries = unit(3, 6000), unit(4, 100)
    approximate = IndexSettings(exact_threshold=1)
    faiss = filled(opened, tmp_path / "faiss", approximate, vectors)
    milvus = filled(opened, tmp_path / "milvus", on_milvus(lite, exact_threshold=1), vectors)
    assert milvus.manifest is not None
    assert milvus.manifest.factory == "milvus:HNSW,M=32,efConstruction=80"
    # The graph Milvus built is the one asked for (Lite once built its defaults instead).
    home = milvus_home(milvus)
    collection = home.collection_of("index")
    assert collection is not None
    described = home.client.describe_index(collection, home.client.list_indexes(collection)[0])
    assert described["params"] == {"M": 32, "efConstruction": 80}
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]

    def recall(data: SiloData) -> float:
        found = 0
        for query, truth in zip(queries, exact, strict=True):
            hits = {int(hit.doc_id.removeprefix("doc-")) for hit in data.search(query, 10)}
            found += len(hits & set(truth.tolist()))
        return found / exact.size

    milvus_recall, faiss_recall = recall(milvus), recall(faiss)
    assert milvus_recall >= 0.95
    assert abs(milvus_recall - faiss_recall) <= 0.03


# --------------------------------------------------------------------- live changes


def test_writes_and_deletes_are_searched_at_once_and_compaction_folds_them_in_place(
    tmp_path: Path, lite: Path, opened: list[SiloData]
) -> None:
    vectors = unit(5, 500)
    settings = on_milvus(lite)
    faiss = filled(opened, tmp_path / "faiss", IndexSettings(exact_threshold=EXACT), vectors)
    milvus = filled(opened, tmp_path / "milvus", settings, vectors)
    collection = milvus_home(milvus).collection_of("index")
    added, rewritten = unit(6, 50), unit(7, 20)
    gone = [f"doc-{i}" for i in (3, 60, 499, 510, 545)]
    for data in (faiss, milvus):
        data.write(docs(500, 550), added)
        data.write([Document(f"doc-{i}", f"rewritten {i}", {}) for i in range(20)], rewritten)
        data.delete(gone)
    queries = np.concatenate([added[:10], rewritten[:10], vectors[[3, 60, 100]], unit(8, 10)])
    assert_same_hits(faiss, milvus, queries, 10)
    assert milvus.search(rewritten[4], 1)[0].doc_id == "doc-4"
    assert milvus.search(added[7], 1)[0].doc_id == "doc-507"
    assert all(hit.doc_id not in gone for q in queries for hit in milvus.search(q, 20))
    assert milvus.pending_changes > 0

    milvus.source.compact()
    assert milvus.pending_changes == 0
    assert milvus_home(milvus).collection_of("index") == collection  # folded, not rebuilt
    assert milvus.manifest is not None and milvus.manifest.count == milvus.count() == 545
    assert_same_hits(faiss, milvus, queries, 10)
    # Written after the fold: served beside the collection again, then the restart below.
    faiss.write(docs(550, 551), unit(9, 1))
    milvus.write(docs(550, 551), unit(9, 1))
    assert_same_hits(faiss, milvus, unit(9, 1), 5)
    milvus.close()
    opened.remove(milvus)
    reopened = SiloData.open(tmp_path / "milvus", SPACE, settings)
    opened.append(reopened)
    assert reopened.pending_changes == 1  # the row after the fold, from the docstore
    assert_same_hits(faiss, reopened, np.concatenate([queries, unit(9, 1)]), 10)


def test_a_restarted_silo_serves_its_collection_and_an_outgrown_one_is_rebuilt(
    tmp_path: Path, lite: Path, opened: list[SiloData]
) -> None:
    settings = on_milvus(lite, exact_threshold=400)
    data = filled(opened, tmp_path / "milvus", settings, unit(10, 300))
    home = milvus_home(data)
    first = home.collection_of("index")
    manifest = data.manifest
    data.close()
    opened.remove(data)
    again = SiloData.open(tmp_path / "milvus", SPACE, settings)
    opened.append(again)
    assert again.manifest == manifest and not again.needs_rebuild
    assert again.search(unit(10, 300)[123], 1)[0].doc_id == "doc-123"

    again.write(docs(300, 500), unit(11, 200))
    again.source.compact()  # 500 rows no longer fit the exact index: a new HNSW collection
    assert again.manifest is not None and again.manifest.factory.startswith("milvus:HNSW")
    home = milvus_home(again)
    second = home.collection_of("index")
    assert second is not None and second != first
    listed = set(home.client.list_collections())
    assert second in listed and first not in listed
    assert again.search(unit(11, 200)[42], 1)[0].doc_id == "doc-342"


def test_another_models_collection_is_refused(
    tmp_path: Path, lite: Path, opened: list[SiloData]
) -> None:
    settings = on_milvus(lite)
    filled(opened, tmp_path / "milvus", settings, unit(12, 50)).close()
    opened.clear()
    for stale in (tmp_path / "milvus").glob("docstore.sqlite*"):
        stale.unlink()  # a fresh docstore: only the collection remembers the model
    with pytest.raises(FailedPrecondition, match=r"Milvus collection .* model 'test/random'"):
        SiloData.open(tmp_path / "milvus", OTHER, settings)


def test_a_search_after_another_writer_replaced_the_collection_is_answered(
    tmp_path: Path, lite: Path, opened: list[SiloData]
) -> None:
    """Another process (``silo ingest`` against a Milvus server) rebuilt the slot and dropped
    the collection this silo was searching: the silo loads the new one and answers."""
    settings = on_milvus(lite)
    vectors = unit(13, 200)
    serving = filled(opened, tmp_path / "milvus", settings, vectors)
    searched = milvus_home(serving).collection_of("index")
    other = SiloData.open(tmp_path / "milvus", SPACE, settings)
    opened.append(other)
    other.write(docs(200, 201), unit(14, 1))
    other.rebuild_index()
    assert searched not in milvus_home(other).client.list_collections()
    assert serving.search(vectors[17], 1)[0].doc_id == "doc-17"
    assert serving.search(unit(14, 1)[0], 1)[0].doc_id == "doc-200"


def test_searches_racing_rebuilds_all_succeed(
    tmp_path: Path, lite: Path, opened: list[SiloData]
) -> None:
    vectors = unit(15, 400)
    data = filled(opened, tmp_path / "milvus", on_milvus(lite), vectors)
    failures: list[str] = []
    done = threading.Event()

    def search() -> None:
        for i in itertools.cycle(range(400)):
            if done.is_set():
                return
            try:
                top = data.search(vectors[i], 1)[0].doc_id
                if top != f"doc-{i}":
                    failures.append(top)
            except Exception as error:  # every failure is the test's finding
                failures.append(repr(error))

    threads = [threading.Thread(target=search) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            data.rebuild_index()
    finally:
        done.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert len(milvus_home(data).client.list_collections()) >= 1


# --------------------------------------------------------------------- migration


def test_generations_are_collections_and_the_serving_alias_follows_the_primary(
    tmp_path: Path, lite: Path, opened: list[SiloData]
) -> None:
    settings = on_milvus(lite)
    data = filled(opened, tmp_path / "milvus", settings, unit(16, 60))
    home = milvus_home(data)
    prefix = home.prefix
    source = home.collection_of("index")

    def aliases() -> dict[str, str]:
        return aliases_of(home)

    def squash(old: np.ndarray) -> np.ndarray:
        part = old[:, : NEW.dimension]
        out: np.ndarray = (part / np.linalg.norm(part, axis=1, keepdims=True)).astype(np.float32)
        return out

    assert aliases() == {prefix: source, f"{prefix}__index": source}
    journal.provisional(data.docstore, squash)
    target = data.open_target(NEW)
    nextgen = home.collection_of("index-next")
    assert nextgen is not None and nextgen != source
    assert aliases()[prefix] == source  # before the cut-over the old generation serves
    data.set_primary(target)  # the cut-over: the serving alias swaps
    assert aliases() == {
        prefix: nextgen,
        f"{prefix}__index": source,
        f"{prefix}__index_next": nextgen,
    }

    data.close_target()  # a rollback
    files.remove_target_files(data.data_dir, data.home)
    assert aliases() == {prefix: source, f"{prefix}__index": source}
    assert nextgen not in home.client.list_collections()

    target = data.open_target(NEW)
    rest = journal.pending(data.docstore, -1, 100)
    journal.record(data.docstore, rest, unit(17, len(rest), NEW.dimension))
    data.rebuild_generation(target)
    data.set_primary(target)
    final = home.collection_of("index-next")
    with data.exclusive():  # finish: the docstore's half, then the files' (twice: a crash)
        journal.promote(data.docstore, NEW, "finishing")
        files.promote_files(data.data_dir, data.home)
        files.promote_files(data.data_dir, data.home)
        promoted = data.promote_target(NEW)
    assert aliases() == {prefix: final, f"{prefix}__index": final}
    assert source not in home.client.list_collections()
    native = unit(17, len(rest), NEW.dimension)
    assert data.search_in(promoted, native[5], 1)[0].doc_id == f"doc-{rest[5].text.split()[-1]}"


# --------------------------------------------------------------------- over mTLS


@pytest.mark.integration
def test_a_milvus_silo_answers_over_mtls_exactly_as_a_faiss_one(
    pki: Pki, tmp_path: Path, serve_silo: type[ServerThread]
) -> None:
    """The same docstore (the same stored vectors) served by FAISS and by Milvus Lite: every
    query over mTLS gets the same hits in the same order, so the same recall."""
    kjv_ids = [record.id for record in load_records("kjv")[:CORPUS]]
    faiss_config = write_silo_config(tmp_path / "faiss", pki.silo)
    ingest_kjv(faiss_config, CORPUS)
    milvus_config = write_silo_config(tmp_path / "milvus", pki.silo, extra=index_table("milvus"))
    (tmp_path / "milvus" / "data").mkdir()
    shutil.copy(tmp_path / "faiss" / "data" / "docstore.sqlite", tmp_path / "milvus" / "data")
    faiss = serve_silo(faiss_config)
    built = SiloData.open(
        tmp_path / "milvus" / "data", faiss.service.space, load_silo_config(milvus_config).index
    )
    assert built.rebuild_index().factory == "milvus:FLAT"
    built.close()
    milvus = serve_silo(milvus_config)
    web = load_records("web")[:CORPUS:10]  # 60 queries: one Embed call (max_embed_texts 64)

    async def answers() -> list[list[list[tuple[str, float]]]]:
        async with (
            SiloClient(faiss.target, pki.home_client) as on_faiss,
            SiloClient(milvus.target, pki.home_client) as on_milvus,
        ):
            vectors = await on_faiss.embed([record.text for record in web])
            found: list[list[list[tuple[str, float]]]] = []
            for silo in (on_faiss, on_milvus):
                hits = [await silo.search_vector(vector, 10) for vector in vectors]
                found.append([[(hit.doc_id, hit.score) for hit in row] for row in hits])
            return found

    from_faiss, from_milvus = asyncio.run(answers())
    assert len(from_milvus) == len(web) and all(len(hits) == 10 for hits in from_milvus)
    for mine, theirs in zip(from_milvus, from_faiss, strict=True):
        assert [doc_id for doc_id, _ in mine] == [doc_id for doc_id, _ in theirs]
        assert [score for _, score in mine] == pytest.approx([s for _, s in theirs], abs=1e-5)
    pairs = zip(web, from_milvus, strict=True)
    found = sum(record.id in {doc_id for doc_id, _ in hits} for record, hits in pairs)
    assert found / len(web) >= 0.9  # WEB verses find their KJV verse: a real search, not noise
    assert set(kjv_ids) >= {doc_id for hits in from_milvus for doc_id, _ in hits}


@pytest.mark.integration
def test_a_milvus_silo_migrates_with_one_collection_per_generation(
    pki: Pki, tmp_path: Path, serve_silo: type[ServerThread]
) -> None:
    """start, cut-over and finish over mTLS: the target generation is a collection of its own,
    the cut-over moves the serving alias to it, finish makes it the source and drops the old."""
    config = write_silo_config(tmp_path / "silo", pki.silo, extra=ADMINS + index_table("milvus"))
    ingest_kjv(config, MIGRATED)
    silo = serve_silo(config)
    home = milvus_home(silo.service.data)
    prefix, old = home.prefix, home.collection_of("index")
    assert aliases_of(home) == {prefix: old, f"{prefix}__index": old}

    run_migration(silo, pki, MigrationCommand.START, to_model=NEW_MODEL, sample_size=64)
    wait_until_ready(silo, pki)
    assert aliases_of(home)[prefix] == old  # the old generation still answers by default
    assert home.collection_of("index-next") not in (None, old)
    assert run_migration(silo, pki, MigrationCommand.CUTOVER).state is MigrationState.CUT_OVER
    new = home.collection_of("index-next")
    assert aliases_of(home) == {prefix: new, f"{prefix}__index": old, f"{prefix}__index_next": new}

    verse = load_records("kjv")[7]
    new_space = load_embedder(NEW_MODEL).space
    query = load_embedder(NEW_MODEL).embed([verse.text])[0]
    assert search_in_space(silo, pki, query, new_space.space_id)[0] == verse.id
    assert run_migration(silo, pki, MigrationCommand.FINISH).state is MigrationState.NONE
    assert aliases_of(home) == {prefix: new, f"{prefix}__index": new}
    assert old not in home.client.list_collections()
    assert search_in_space(silo, pki, query, new_space.space_id)[0] == verse.id


# --------------------------------------------------------------------- configuration


def silo_toml(tmp_path: Path, index: str) -> Path:
    path = tmp_path / "silo.toml"
    path.write_text(
        '[silo]\nname = "kjv.west-1"\nmodel = "static-64"\ndata_dir = "data"\n'
        "[server]\ninsecure = true\n"
        f"[index]\n{index}\n"
    )
    return path


def test_milvus_keys_are_read_and_a_lite_path_lies_in_the_data_directory(tmp_path: Path) -> None:
    lite = load_silo_config(silo_toml(tmp_path, 'backend = "milvus"\nuri = "index/milvus.db"'))
    assert lite.index.backend == "milvus"
    assert lite.index.milvus == MilvusSettings(
        str(tmp_path / "data" / "index" / "milvus.db"), "kjv_west_1"
    )
    (tmp_path / "token").write_text("root:Milvus\n")
    server = load_silo_config(
        silo_toml(
            tmp_path,
            'backend = "milvus"\nuri = "https://milvus.example:19530"\ntoken_file = "token"\n'
            'db_name = "silos"\ncollection_prefix = "bible_kjv"',
        )
    )
    assert server.index.milvus == MilvusSettings(
        "https://milvus.example:19530", "bible_kjv", tmp_path / "token", "silos"
    )
    assert load_silo_config(silo_toml(tmp_path, "")).index.backend == "faiss"


@pytest.mark.parametrize(
    ("index", "fragment"),
    [
        ('backend = "milvus"', "needs uri"),
        ('backend = "qdrant"', "choose one of faiss, milvus"),
        ('backend = "milvus"\nuri = "milvus.sqlite"', "path ending in .db"),
        ('backend = "milvus"\nuri = "grpc://milvus:19530"', "path ending in .db"),
        ('uri = "milvus.db"', 'only with backend = "milvus"'),
        ('backend = "milvus"\nuri = "http://m:19530"\ntoken = "root:Milvus"', "token_file"),
        ('backend = "milvus"\nuri = "m.db"\ntoken_file = "t"', "takes no token"),
        ('backend = "milvus"\nuri = "m.db"\ncollection_prefix = "a__b"', "single underscores"),
        ('backend = "milvus"\nuri = "m.db"\ncollection_prefix = "9lives"', "start with a letter"),
        ('backend = "milvus"\nuri = "m.db"\nhnsw_factory = "IVF256,Flat"', "HNSW<M>"),
        ('backend = "milvus"\nuri = "m.db"\nurl = "m.db"', "unknown key(s) in [index]: url"),
    ],
)
def test_bad_milvus_keys_are_refused_with_what_to_write(
    tmp_path: Path, index: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_silo_config(silo_toml(tmp_path, index))
    assert fragment in caught.value.message


def test_an_unreachable_milvus_server_is_a_clear_error(tmp_path: Path) -> None:
    settings = IndexSettings(milvus=MilvusSettings("http://127.0.0.1:9", "kjv"))
    with pytest.raises(Unavailable, match=r"cannot reach the Milvus index at http://127.0.0.1:9"):
        SiloData.open(tmp_path / "data", SPACE, settings)
    assert (tmp_path / "data" / "docstore.sqlite").exists()  # opened, and closed again


def test_a_lite_file_another_process_holds_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pymilvus import MilvusClient; "
            f"MilvusClient({str(path)!r}).list_collections(); print('open', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        settings = IndexSettings(milvus=MilvusSettings(str(path), "kjv"))
        with pytest.raises(FailedPrecondition, match=r"open in another process.*--live"):
            SiloData.open(tmp_path / "data", SPACE, settings)
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(30)
        holder.stdout.close()
    shutil.rmtree(tmp_path / "data")
    data = SiloData.open(tmp_path / "data", SPACE, settings)  # free again once it exits
    data.close()
