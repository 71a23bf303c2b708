"""`silo ingest --live` and `silo delete`: send a corpus file's documents to a serving silo.

The same readers as the offline ingest (bad lines reported, never fatal; the first of a repeated
id wins), in batches the silo acknowledges once durable; sending a file twice changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path

from silobridge.core.documents import DeleteReceipt, Document
from silobridge.core.errors import ConfigError
from silobridge.rpc.silo_client import SiloClient
from silobridge.silo_agent.ingest import BadLine, IngestSummary, read_documents


async def ingest_live(
    paths: Sequence[Path],
    silo: SiloClient,
    *,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Stream every document of ``paths`` to ``silo``; totals from the silo's own receipts."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    # Open every file first so a typo in the last path fails before anything is sent.
    readers = [read_documents(path) for path in paths]
    bad_lines: list[BadLine] = []
    read = inserted = updated = unchanged = 0

    async def batches() -> AsyncIterator[list[Document]]:
        batch: list[Document] = []
        for item in _documents(readers, bad_lines):
            batch.append(item)
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    async for receipt in silo.write_documents(batches()):
        inserted += receipt.inserted
        updated += receipt.updated
        unchanged += receipt.unchanged
        read = inserted + updated + unchanged
        if progress is not None:
            progress(read)
    return IngestSummary(
        files=len(readers),
        read=read,
        inserted=inserted,
        updated=updated,
        unchanged=unchanged,
        bad_lines=bad_lines,
    )


def _documents(
    readers: Iterable[Iterable[Document | BadLine]], bad_lines: list[BadLine]
) -> Iterable[Document]:
    for reader in readers:
        for item in reader:
            if isinstance(item, BadLine):
                bad_lines.append(item)
            else:
                yield item


async def delete_live(doc_ids: Sequence[str], silo: SiloClient) -> DeleteReceipt:
    """Remove documents from a serving silo; ids it does not hold come back as missing."""
    return await silo.delete_documents(doc_ids)
