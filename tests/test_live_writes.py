"""Live changes to a serving silo: its admins add, update and delete documents over mTLS.

Real servers (in-process and as child processes), real mTLS, a real model (minilm-l3-onnx).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from silobridge.core.config import TlsFiles
from silobridge.core.documents import Document, WriteReceipt
from silobridge.core.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from silobridge.core.hits import Hit
from silobridge.evaluation.corpus import load_records
from silobridge.rpc.silo_client import SiloClient

from .conftest import (
    INDEX_BACKENDS,
    Pki,
    ServerThread,
    SiloProcess,
    index_table,
    ingest_kjv,
    run_cli,
    write_client_config,
    write_silo_config,
)

pytestmark = pytest.mark.integration

ADMINS = 'admin = ["org:bible/client"]'


async def _batches(*batches: Sequence[Document]) -> AsyncIterator[Sequence[Document]]:
    for batch in batches:
        yield batch


async def _write(silo: SiloClient, *batches: Sequence[Document]) -> list[WriteReceipt]:
    return [receipt async for receipt in silo.write_documents(_batches(*batches))]


async def _search_text(silo: SiloClient, text: str, k: int = 5) -> list[Hit]:
    vectors = await silo.embed([text])
    return await silo.search_vector(vectors[0], k)


@pytest.mark.parametrize("backend", INDEX_BACKENDS)
def test_live_add_update_and_delete_are_seen_by_the_next_search(
    pki: Pki, tmp_path: Path, serve_silo: type[ServerThread], backend: str
) -> None:
    config = write_silo_config(tmp_path / "silo", pki.silo, extra=ADMINS + index_table(backend))
    ingest_kjv(config, 120)
    server = serve_silo(config)
    web, kjv = load_records("web"), load_records("kjv")
    added = Document("live-1", web[5000].text, {"book": "live"})
    rewritten = Document(kjv[0].id, web[7000].text)

    async def run() -> None:
        async with SiloClient(server.target, pki.home_client) as silo:
            before = (await silo.describe()).document_count
            [receipt] = await _write(silo, [added])
            assert (receipt.inserted, receipt.document_count) == (1, before + 1)
            hits = await _search_text(silo, web[5000].text)
            assert hits[0].doc_id == "live-1"

            # The same document again changes nothing; a file can be sent twice.
            [again] = await _write(silo, [added])
            assert (again.unchanged, again.inserted, again.document_count) == (1, 0, before + 1)

            # An update is found by its new text; its old text no longer finds it first.
            [update] = await _write(silo, [rewritten])
            assert update.updated == 1
            assert (await _search_text(silo, web[7000].text))[0].doc_id == kjv[0].id
            assert (await _search_text(silo, kjv[0].text))[0].doc_id != kjv[0].id

            deleted = await silo.delete_documents(["live-1", "no-such-doc"])
            assert (deleted.deleted, deleted.missing) == (1, ("no-such-doc",))
            assert deleted.document_count == before
            ids = {hit.doc_id for hit in await _search_text(silo, web[5000].text, k=20)}
            assert "live-1" not in ids
            assert (await silo.describe()).document_count == before

    asyncio.run(run())


@pytest.mark.parametrize(
    ("who", "extra"),
    [
        ("other_client", ADMINS),  # another organization
        ("coordinator", ADMINS),  # the coordinator is no admin of the silo
        ("home_client", ""),  # the silo's own organization, but no [access] admin rule
    ],
)
def test_a_caller_who_is_not_an_admin_is_refused_and_nothing_changes(
    pki: Pki, tmp_path: Path, serve_silo: type[ServerThread], who: str, extra: str
) -> None:
    config = write_silo_config(tmp_path / "silo", pki.silo, extra=extra)
    ingest_kjv(config, 30)
    server = serve_silo(config)
    tls: TlsFiles = getattr(pki, who)

    async def run() -> None:
        async with SiloClient(server.target, tls) as silo:
            with pytest.raises(PermissionDenied, match="admin"):
                await silo.delete_documents([load_records("kjv")[0].id])
            with pytest.raises(PermissionDenied, match="admin"):
                await _write(silo, [Document("intruder", "should never be stored")])

    asyncio.run(run())
    assert server.service.data.count() == 30
    assert server.service.data.texts(["intruder"]) == {}


def _client_toml(directory: Path, tls: TlsFiles, silo: str) -> Path:
    return write_client_config(directory / "client.toml", tls, home_silo=silo)


@pytest.mark.parametrize("backend", INDEX_BACKENDS)
def test_acknowledged_live_writes_survive_kill_9(
    pki: Pki, tmp_path: Path, processes: list[SiloProcess], backend: str
) -> None:
    config = write_silo_config(tmp_path / "silo", pki.silo, extra=ADMINS + index_table(backend))
    ingest_kjv(config, 40)
    web = load_records("web")
    corpus = tmp_path / "new.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": f"new-{i}", "text": web[6000 + i].text}) + "\n" for i in range(10)
        )
        + "not json at all\n"
    )

    first = SiloProcess(config)
    processes.append(first)
    client = _client_toml(tmp_path / "alice", pki.home_client, first.endpoint)
    sent = run_cli("silo", "ingest", "--live", "--client", str(client), str(corpus))
    assert sent.returncode == 0, sent.stderr
    assert "ingested 10 documents" in sent.stdout and "10 new" in sent.stdout
    assert "1 bad line(s) skipped" in sent.stdout
    assert "new.jsonl:11" in sent.stderr
    gone = run_cli("silo", "delete", "--client", str(client), "new-9", "nothing-here")
    assert gone.returncode == 0, gone.stderr
    assert "deleted 1 document(s)" in gone.stdout and "not held: nothing-here" in gone.stdout
    first.proc.kill()  # no shutdown, no flush: what was acknowledged must already be on disk
    first.proc.wait()

    second = SiloProcess(config)
    processes.append(second)

    async def search_all() -> tuple[int, list[str]]:
        async with SiloClient(second.endpoint, pki.home_client) as silo:
            count = (await silo.describe()).document_count
            top = [(await _search_text(silo, web[6000 + i].text, k=1))[0].doc_id for i in range(10)]
            return count, top

    count, top = asyncio.run(search_all())
    assert count == 40 + 9
    assert top[:9] == [f"new-{i}" for i in range(9)]
    assert top[9] != "new-9"
    # Sending the file again changes nothing but the deleted document, which comes back.
    again = run_cli(
        "silo", "ingest", "--live", "--client", str(client), "--silo", second.endpoint, str(corpus)
    )
    assert "1 new, 0 updated, 9 unchanged" in again.stdout, again.stdout + again.stderr
    assert second.terminate() == 0


def test_a_bad_batch_is_refused_whole_with_the_document_named(
    pki: Pki, tmp_path: Path, serve_silo: type[ServerThread]
) -> None:
    config = write_silo_config(tmp_path / "silo", pki.silo, extra=ADMINS)
    ingest_kjv(config, 20)
    server = serve_silo(config)
    good = Document("fine", "a perfectly good document")

    async def run() -> None:
        async with SiloClient(server.target, pki.home_client) as silo:
            with pytest.raises(InvalidArgument, match=r"document #1 \('blank'\).*text"):
                await _write(silo, [good, Document("blank", "   ")])
            with pytest.raises(InvalidArgument, match="appears twice"):
                await _write(silo, [good, good])
            too_many = [Document(f"d{i}", f"text {i}") for i in range(65)]  # max_embed_texts=64
            with pytest.raises(ResourceExhausted, match="at most 64"):
                await _write(silo, too_many)
            bulky = Document("bulky", "short text", {"k": "v" * 3_000})  # max_text_chars=2000
            with pytest.raises(ResourceExhausted, match="of metadata"):
                await _write(silo, [bulky])
            with pytest.raises(InvalidArgument, match="no document ids"):
                await silo.delete_documents([])

    asyncio.run(run())
    assert server.service.data.count() == 20
    assert server.service.data.texts(["fine", "blank", "d0", "bulky"]) == {}
