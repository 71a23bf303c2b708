"""Corpus ingest: JSONL/CSV readers that never stop on a bad line, and the batched ingest loop."""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from silobridge.core.documents import INVISIBLE_TEXT_MESSAGE, Document, has_visible_text
from silobridge.core.errors import ConfigError, FailedPrecondition
from silobridge.silo_agent.store.data import EmbedderLike, SiloData
from silobridge.silo_agent.store.index import space_mismatch_message
from silobridge.silo_agent.store.rows import UpsertCounts, content_hash

MAX_LINE_BYTES = 1 << 20
MAX_ID_CHARS = 512
# The docstore meta key of a migration's record (silo_agent/migration/record.py).
MIGRATION_RECORD = "migration"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
CSV_SUFFIXES = (".csv", ".csv.gz")
_DRAIN_CHUNK = 1 << 16
_BOM = "\ufeff"
# Only what JSON itself calls whitespace makes a line blank; anything else is a (bad) record.
_JSON_WHITESPACE = " \t\r\n"


@dataclass(frozen=True)
class BadLine:
    """A corpus line that was skipped, where it is, and why."""

    path: Path
    line_number: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number}: {self.reason}"


@dataclass(frozen=True)
class IngestSummary:
    """What an ingest run did, for the CLI to report."""

    files: int
    read: int
    inserted: int
    updated: int
    unchanged: int
    bad_lines: list[BadLine] = field(default_factory=list)
    index_rebuilt: bool = False


def read_documents(path: Path | str) -> Iterator[Document | BadLine]:
    """Documents of a ``.jsonl[.gz]``/``.ndjson[.gz]`` or ``.csv[.gz]`` file, with its bad lines.

    JSONL lines are objects ``{"id": str, "text": str, "metadata": {str: str}}`` (metadata
    optional, other fields ignored). CSV needs a header with ``id`` and ``text`` columns; every
    other column becomes metadata. A bad line is yielded as a ``BadLine`` and reading goes on;
    the first occurrence of a duplicated id wins. Only file-level problems (unsupported suffix,
    missing or unreadable file, a CSV without the needed header) raise ``ConfigError``.
    """
    source = Path(path)
    name = source.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        parse: Callable[[Path], Iterator[tuple[int, Document | str]]] = _read_jsonl
    elif name.endswith(CSV_SUFFIXES):
        parse = _read_csv
    else:
        raise ConfigError(
            f"cannot tell the format of {source}: corpus files must end in "
            f"{', '.join(JSONL_SUFFIXES + CSV_SUFFIXES)}"
        )
    if not source.is_file():
        raise ConfigError(f"corpus file {source} does not exist or is not a file")
    return _deduplicated(source, parse(source))


def count_documents(paths: Iterable[Path | str]) -> int:
    """How many documents an ingest of ``paths`` will read: a first pass over the same readers.

    Bad lines and repeated ids are not counted, so the number is the ingest's own ``read``. It
    parses without embedding (0.2 s for the demo's 31,095 verses), and a missing or
    unreadable file fails here, before a model is loaded.
    """
    return sum(
        1 for path in paths for item in read_documents(path) if not isinstance(item, BadLine)
    )


def _deduplicated(
    source: Path, items: Iterator[tuple[int, Document | str]]
) -> Iterator[Document | BadLine]:
    first_line: dict[str, int] = {}
    for number, item in items:
        if isinstance(item, str):
            yield BadLine(source, number, item)
        elif item.doc_id in first_line:
            yield BadLine(
                source,
                number,
                f"duplicate id {item.doc_id!r} within file (first on line "
                f"{first_line[item.doc_id]}); the first one is kept",
            )
        else:
            first_line[item.doc_id] = number
            yield item


def _open_binary(source: Path) -> IO[bytes]:
    try:
        if source.name.lower().endswith(".gz"):
            return cast(IO[bytes], gzip.open(source, "rb"))
        return source.open("rb")
    except OSError as exc:
        raise ConfigError(f"cannot open corpus file {source}: {exc}") from exc


def _physical_lines(source: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, decoded line or None, problem or None) for each physical line."""
    with _open_binary(source) as handle:
        number = 0
        while True:
            try:
                raw = handle.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return
                number += 1
                content = raw[:-1] if raw.endswith(b"\n") else raw
                if len(content) > MAX_LINE_BYTES:
                    # Skip the rest of the line without holding it in memory.
                    tail = raw
                    while tail and not tail.endswith(b"\n"):
                        tail = handle.readline(_DRAIN_CHUNK)
                    yield number, None, "line exceeds 1 MiB"
                    continue
            except (OSError, EOFError, zlib.error) as exc:
                raise ConfigError(
                    f"cannot read corpus file {source} after line {number}: {exc}"
                ) from exc
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, f"not valid UTF-8 (byte {exc.start} of the line)"
                continue
            if number == 1 and text.startswith(_BOM):
                text = text[1:]
            yield number, text, None


def _valid_string(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape
        return False
    return True


def checked_document(doc_id: Any, text: Any, metadata: Any) -> Document | str:
    """A validated document, or the reason the fields do not make one."""
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id.strip() or not _valid_string(doc_id):
        return "field 'id' must be a non-empty string"
    if len(doc_id) > MAX_ID_CHARS:
        return f"field 'id' is longer than {MAX_ID_CHARS} characters"
    if not isinstance(text, str) or not text.strip() or not _valid_string(text):
        return "field 'text' must be a non-empty string"
    if not has_visible_text(text):
        return f"field 'text' {INVISIBLE_TEXT_MESSAGE}"
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and _valid_string(k) and _valid_string(v)
        for k, v in metadata.items()
    ):
        return "metadata must be an object of string values"
    return Document(doc_id=doc_id, text=text, metadata=dict(metadata))


def _read_jsonl(source: Path) -> Iterator[tuple[int, Document | str]]:
    for number, line, problem in _physical_lines(source):
        if line is None:
            yield number, problem or "unreadable line"
            continue
        if not line.strip(_JSON_WHITESPACE):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"invalid JSON: {exc.msg} (column {exc.colno})"
            continue
        except RecursionError:
            yield number, "invalid JSON: nested too deeply"
            continue
        if not isinstance(record, dict):
            yield number, f"a line must be a JSON object, not {type(record).__name__}"
            continue
        missing = [name for name in ("id", "text") if name not in record]
        if missing:
            yield number, f"missing field '{missing[0]}'"
            continue
        yield number, checked_document(record["id"], record["text"], record.get("metadata", {}))


def _read_csv(source: Path) -> Iterator[tuple[int, Document | str]]:
    # The csv module's default field limit (128 KiB) is below our line limit; raise it once.
    if csv.field_size_limit() < MAX_LINE_BYTES:
        csv.field_size_limit(MAX_LINE_BYTES)
    problems: dict[int, str] = {}

    def feed() -> Iterator[str]:
        for number, line, problem in _physical_lines(source):
            if line is None:
                problems[number] = problem or "unreadable line"
                yield "\n"  # keeps csv's line count in step with the file's
            else:
                yield line

    reader = csv.reader(feed())
    header: list[str] | None = None
    last_line = 0
    while True:
        start = last_line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            last_line = reader.line_num
            yield start, f"malformed CSV: {exc}"
            continue
        last_line = reader.line_num
        problem = next((problems[n] for n in range(start, last_line + 1) if n in problems), None)
        if header is None:
            if problem is not None:
                raise ConfigError(f"CSV file {source}: header line {start}: {problem}")
            if row:
                header = _csv_header(source, row)
            continue
        if problem is not None:
            yield start, problem
        elif row:
            yield start, _csv_document(header, row)
    if header is None:
        raise ConfigError(f"CSV file {source} is empty: it needs a header with 'id' and 'text'")


def _csv_header(source: Path, row: Sequence[str]) -> list[str]:
    names = [name.strip() for name in row]
    if "id" not in names or "text" not in names:
        raise ConfigError(
            f"CSV file {source} needs a header with 'id' and 'text' columns; found {names}"
        )
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"CSV file {source} repeats header column(s) {duplicated}")
    return names


def _csv_document(header: Sequence[str], row: Sequence[str]) -> Document | str:
    if len(row) != len(header):
        return f"expected {len(header)} fields as in the header, found {len(row)}"
    fields = dict(zip(header, row, strict=True))
    metadata = {name: value for name, value in fields.items() if name not in ("id", "text")}
    return checked_document(fields["id"], fields["text"], metadata)


# Documents read, embedded and made durable together. Within a chunk the embedder sorts texts
# by length before batching: 1,024 short sentences embed about 1.7 times as fast as 64 at a time
# (minilm-l6 and minilm-l3-onnx on Python-doc sentences, 2 cores).
STORE_CHUNK = 1024


def ingest(
    paths: Iterable[Path | str],
    data: SiloData,
    embedder: EmbedderLike,
    *,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
    chunk: int = STORE_CHUNK,
) -> IngestSummary:
    """Read, embed and store every document of ``paths``; rebuild the index once at the end.

    Documents are stored ``chunk`` at a time (at least ``batch_size``), embedded
    ``batch_size`` per model call sorted by length within the chunk, which wastes less on
    padding than 64 at a time. Each chunk is durable once upserted, so an interrupted ingest
    keeps its finished chunks and a rerun embeds only what is new or changed. ``progress``
    receives the number of documents processed so far.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if data.docstore.get_meta(MIGRATION_RECORD) is not None:
        raise FailedPrecondition(
            f"the silo in {data.data_dir} is migrating to another model: an offline ingest "
            "would store documents in one space only. Send them to the running silo with "
            "`silobridge silo ingest --live`, which writes both"
        )
    if embedder.space.fingerprint != data.space.fingerprint:
        raise FailedPrecondition(
            space_mismatch_message(
                f"the data directory {data.data_dir}",
                stored_fingerprint=data.space.fingerprint,
                stored_model_id=data.space.model_id,
                configured_fingerprint=embedder.space.fingerprint,
                configured_model_id=embedder.space.model_id,
            )
        )
    # Open every file first so a typo in the last path fails before anything is written.
    readers = [read_documents(path) for path in paths]
    totals = _Totals()
    batch: list[Document] = []
    chunk = max(batch_size, chunk)
    for reader in readers:
        for item in reader:
            if isinstance(item, BadLine):
                totals.bad_lines.append(item)
                continue
            batch.append(item)
            if len(batch) >= chunk:
                _store_batch(batch, data, embedder, batch_size, totals)
                batch = []
                if progress is not None:
                    progress(totals.read)
    if batch:
        _store_batch(batch, data, embedder, batch_size, totals)
        if progress is not None:
            progress(totals.read)
    rebuilt = totals.inserted + totals.updated > 0 or data.needs_rebuild
    if rebuilt:
        data.rebuild_index()
    return IngestSummary(
        files=len(readers),
        read=totals.read,
        inserted=totals.inserted,
        updated=totals.updated,
        unchanged=totals.unchanged,
        bad_lines=totals.bad_lines,
        index_rebuilt=rebuilt,
    )


@dataclass
class _Totals:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)


def _store_batch(
    batch: Sequence[Document],
    data: SiloData,
    embedder: EmbedderLike,
    batch_size: int,
    totals: _Totals,
) -> None:
    counts = store_documents(batch, data, embedder, batch_size=batch_size, live=False)
    totals.read += len(batch)
    totals.inserted += counts.inserted
    totals.updated += counts.updated
    totals.unchanged += counts.unchanged


def store_documents(
    batch: Sequence[Document],
    data: SiloData,
    embedder: EmbedderLike,
    *,
    batch_size: int = 64,
    live: bool,
) -> UpsertCounts:
    """Embed what is new or changed in ``batch`` and store it (durable on return).

    Unchanged documents (same content hash) are not embedded again. ``live`` makes the write
    visible to the next search of a serving ``SiloData`` at once; an offline ingest rebuilds
    the index at the end instead.
    """
    stored = data.stored_hashes(doc.doc_id for doc in batch)
    changed = [doc for doc in batch if stored.get(doc.doc_id) != content_hash(doc)]
    skipped = len(batch) - len(changed)
    if not changed:
        return UpsertCounts(unchanged=skipped)
    vectors = embedder.embed([doc.text for doc in changed], batch_size=batch_size)
    counts = data.write(changed, vectors) if live else data.upsert(changed, vectors)
    return UpsertCounts(counts.inserted, counts.updated, counts.unchanged + skipped)
