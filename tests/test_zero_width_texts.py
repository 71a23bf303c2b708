"""Issue 11, finding 12: text made only of zero-width or other invisible characters is refused at
ingest, in live writes and by Embed, and no zero vector ever enters a silo's store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from silobridge.core.documents import Document
from silobridge.core.errors import InvalidArgument
from silobridge.embedding.embedders import load_embedder
from silobridge.rpc.silo_client import SiloClient
from silobridge.silo_agent.config import load_silo_config
from silobridge.silo_agent.ingest import ingest
from silobridge.silo_agent.store.data import SiloData

from .conftest import CONSORTIUM, Pki, ServerThread, ingest_kjv, write_silo_config

pytestmark = pytest.mark.integration
SILO_ID = f"spiffe://{CONSORTIUM}/silo/kjv"
# Zero-width space, non-joiner, joiner, word joiner, BOM, soft hyphen, with ordinary spaces.
INVISIBLE = ["\u200b", "\u200b\u200c\u200d", " \u2060\ufeff ", "\u00ad\u200b", "\u200b\n\u200b"]


def test_the_model_really_embeds_invisible_text_to_a_zero_vector() -> None:
    # Why this matters: a zero vector matches nothing and breaks cosine scores.
    vectors = load_embedder("static-64").embed(["\u200b\u200b"], batch_size=1)
    assert float(np.linalg.norm(vectors[0])) == 0.0


def test_ingest_refuses_invisible_texts_as_bad_lines(pki: Pki, tmp_path: Path) -> None:
    config_path = write_silo_config(tmp_path / "silo", pki.silo, model="static-64")
    corpus = tmp_path / "corpus.jsonl"
    lines = [{"id": "good", "text": "In the beginning God created the heaven and the earth."}]
    lines += [{"id": f"zw-{i}", "text": text} for i, text in enumerate(INVISIBLE)]
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = load_silo_config(config_path)
    embedder = load_embedder(config.model)
    data = SiloData.open(config.data_dir, embedder.space, config.index)
    try:
        summary = ingest([corpus], data, embedder)
        assert data.count() == 1
        assert len(summary.bad_lines) == len(INVISIBLE)
        assert all("visible" in str(bad) for bad in summary.bad_lines)
    finally:
        data.close()


def test_a_zero_vector_never_enters_the_store(pki: Pki, tmp_path: Path) -> None:
    config = load_silo_config(write_silo_config(tmp_path / "silo", pki.silo, model="static-64"))
    embedder = load_embedder(config.model)
    data = SiloData.open(config.data_dir, embedder.space, config.index)
    try:
        vectors = np.zeros((1, embedder.space.dimension), dtype=np.float32)
        with pytest.raises(InvalidArgument, match="zero vector"):
            data.upsert([Document("d", "some text the model could not see")], vectors)
        assert data.count() == 0
    finally:
        data.close()


async def _batches(*batches: Sequence[Document]) -> AsyncIterator[Sequence[Document]]:
    for batch in batches:
        yield batch


@pytest.mark.parametrize("text", INVISIBLE)
def test_live_writes_and_embed_refuse_invisible_texts(
    pki: Pki, tmp_path: Path, serve_silo: type[ServerThread], text: str
) -> None:
    config = write_silo_config(
        tmp_path / "silo", pki.silo, model="static-64", extra='admin = ["org:bible/client"]'
    )
    ingest_kjv(config, 5)
    server = serve_silo(config)

    async def run() -> None:
        async with SiloClient(server.target, pki.home_client, expect=SILO_ID) as silo:
            before = (await silo.describe()).document_count
            with pytest.raises(InvalidArgument, match=r"document #0 \('zw'\).*visible"):
                writes = silo.write_documents(_batches([Document("zw", text)]))
                [receipt async for receipt in writes]
            assert (await silo.describe()).document_count == before
            with pytest.raises(InvalidArgument, match=r"text #1 .*visible"):
                await silo.embed(["let there be light", text])

    asyncio.run(run())
