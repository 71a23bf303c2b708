"""Retrieval test sets: BEIR directories, the built-in demo sets, reproducible subsamples."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.evaluation.corpus import DemoRecord, load_records

BIBLE_WEB2KJV = "bible-web2kjv"
KJV_KNN = "kjv-knn"
# Asymmetric: a Python-documentation section heading is the query, its first paragraph the answer.
PYDOC_HEADINGS = "pydoc-heading2para"
BUILTIN_DATASETS: tuple[str, ...] = (BIBLE_WEB2KJV, KJV_KNN, PYDOC_HEADINGS)
# The anchor kind whose texts are Python-documentation paragraphs (evaluation/anchors.py).
PUBLIC_ANCHOR_KIND = "public"
# An unlabelled set has no judgements to subsample by, so it holds out this many queries unless
# the caller asks for another number.
KJV_KNN_DEFAULT_QUERIES = 1000

# Builds an in-domain anchor pool from (test query ids, their relevant document ids).
_PoolBuilder = Callable[[set[str], set[str]], list[str]]


@dataclass(frozen=True)
class RetrievalDataset:
    """Queries, a corpus, and (when labelled) graded judgements, plus an in-domain anchor pool.

    ``qrels[i]`` maps corpus positions to grades (> 0) for query ``i``; it is empty for every
    query of an unlabelled set. ``in_domain_pool`` holds texts of the same distribution that are
    neither test queries nor their relevant documents, already in a seeded order so that any
    prefix is a reproducible sample.
    """

    name: str
    query_ids: tuple[str, ...]
    query_texts: tuple[str, ...]
    corpus_ids: tuple[str, ...]
    corpus_texts: tuple[str, ...]
    qrels: tuple[Mapping[int, float], ...]
    labelled: bool
    in_domain_pool: tuple[str, ...]
    # Unlabelled queries of the same source, disjoint from the test queries (seeded order): the
    # "traffic" a receiving silo sees besides them (``--traffic``).
    traffic_pool: tuple[str, ...] = ()
    # True when the corpus is drawn from the public anchor texts themselves: fitting on them
    # would put the test documents into the anchors.
    excludes_public_anchors: bool = False

    def describe(self) -> dict[str, object]:
        """A JSON-able summary for result files."""
        return {
            "name": self.name,
            "queries": len(self.query_ids),
            "corpus": len(self.corpus_ids),
            "labelled": self.labelled,
        }


def load_builtin(
    name: str, *, corpus_size: int | None, queries: int | None, seed: int
) -> RetrievalDataset:
    """One of ``BUILTIN_DATASETS``, subsampled reproducibly with ``seed``."""
    if name == BIBLE_WEB2KJV:
        web = load_records("web")
        kjv = load_records("kjv")
        kjv_by_id = {r.id: r.text for r in kjv}
        # Each WEB verse is a query; its one relevant document is the KJV verse with its id.
        pairs = [(r.id, r.text) for r in web if r.id in kjv_by_id]
        qrels = {qid: {qid: 1.0} for qid, _ in pairs}
        return _subsample_labelled(
            name,
            query_ids=[qid for qid, _ in pairs],
            query_texts=[text for _, text in pairs],
            corpus_ids=[r.id for r in kjv],
            corpus_texts=[r.text for r in kjv],
            qrels=qrels,
            corpus_size=corpus_size,
            queries=queries,
            seed=seed,
            pool_builder=lambda test_ids, _docs: _interleave(
                _shuffled([r.text for r in web if r.id not in test_ids], seed, salt=1),
                _shuffled([r.text for r in kjv if r.id not in test_ids], seed, salt=2),
            ),
        )
    if name == KJV_KNN:
        return _kjv_knn(load_records("kjv"), corpus_size=corpus_size, queries=queries, seed=seed)
    if name == PYDOC_HEADINGS:
        return _pydoc_headings(corpus_size=corpus_size, queries=queries, seed=seed)
    raise InvalidArgument(
        f"unknown dataset {name!r}; built-ins are {', '.join(BUILTIN_DATASETS)} "
        "(or give a BEIR-format directory with --dataset-dir)"
    )


def check_anchor_source(dataset: RetrievalDataset, name: str) -> None:
    """Refuse an anchor kind that would leak the dataset's own documents into the fit."""
    if name == PUBLIC_ANCHOR_KIND and dataset.excludes_public_anchors:
        raise InvalidArgument(
            f"the {PUBLIC_ANCHOR_KIND!r} anchors are Python-documentation paragraphs, the same "
            f"texts as the {dataset.name} corpus, so they cannot fit an adapter evaluated on it; "
            "use --anchors synthetic or in-domain, or an --anchor-file"
        )


def _pydoc_headings(*, corpus_size: int | None, queries: int | None, seed: int) -> RetrievalDataset:
    sections = load_records("pydoc_sections")
    headings = [r.metadata["heading"] for r in sections]
    ids = [r.id for r in sections]
    paragraphs = [r.text for r in sections]
    # The heading and the paragraph of a record share its id: one relevant document per query.
    dataset = _subsample_labelled(
        PYDOC_HEADINGS,
        query_ids=ids,
        query_texts=headings,
        corpus_ids=ids,
        corpus_texts=paragraphs,
        qrels={rid: {rid: 1.0} for rid in ids},
        corpus_size=corpus_size,
        queries=queries,
        seed=seed,
        pool_builder=lambda test_ids, _docs: _interleave(
            _shuffled(
                [r.metadata["heading"] for r in sections if r.id not in test_ids], seed, salt=1
            ),
            _shuffled([r.text for r in sections if r.id not in test_ids], seed, salt=2),
        ),
    )
    return replace(dataset, excludes_public_anchors=True)


def load_beir(
    directory: Path,
    *,
    split: str | None = None,
    corpus_size: int | None,
    queries: int | None,
    seed: int,
) -> RetrievalDataset:
    """A BEIR-format directory: corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""
    if not directory.is_dir():
        raise ConfigError(f"dataset directory {directory} does not exist")
    corpus = dict(_read_jsonl(directory / "corpus.jsonl", with_title=True))
    query_texts = dict(_read_jsonl(directory / "queries.jsonl", with_title=False))
    qrels_file = _qrels_file(directory, split)
    judged: dict[str, dict[str, float]] = {}
    for query_id, doc_id, grade in _read_qrels(qrels_file):
        # Judgements naming a query or document the files lack happen in published sets; they
        # cannot be evaluated, so they are skipped rather than failing the whole run.
        if grade > 0 and query_id in query_texts and doc_id in corpus:
            judged.setdefault(query_id, {})[doc_id] = grade
    if not judged:
        raise ConfigError(
            f"{qrels_file} has no positive judgement linking a query of queries.jsonl "
            "to a document of corpus.jsonl"
        )
    test_ids = [qid for qid in query_texts if qid in judged]
    return _subsample_labelled(
        directory.name,
        query_ids=test_ids,
        query_texts=[query_texts[qid] for qid in test_ids],
        corpus_ids=list(corpus),
        corpus_texts=list(corpus.values()),
        qrels=judged,
        corpus_size=corpus_size,
        queries=queries,
        seed=seed,
        pool_builder=lambda test, relevant: _interleave(
            _shuffled([t for q, t in query_texts.items() if q not in test], seed, salt=1),
            _shuffled([t for d, t in corpus.items() if d not in relevant], seed, salt=2),
        ),
    )


def _subsample_labelled(
    name: str,
    *,
    query_ids: Sequence[str],
    query_texts: Sequence[str],
    corpus_ids: Sequence[str],
    corpus_texts: Sequence[str],
    qrels: Mapping[str, Mapping[str, float]],
    corpus_size: int | None,
    queries: int | None,
    seed: int,
    pool_builder: _PoolBuilder,
) -> RetrievalDataset:
    _check_size("--queries", queries)
    _check_size("--corpus-size", corpus_size)
    rng = np.random.default_rng(seed)
    picked: list[int] = list(range(len(query_ids)))
    if queries is not None:
        if queries > len(query_ids):
            raise InvalidArgument(
                f"--queries {queries} exceeds the {len(query_ids)} judged queries of {name}"
            )
        # Sorted so the kept queries stay in file order whatever the seed.
        picked = sorted(rng.choice(len(query_ids), size=queries, replace=False).tolist())
    test_ids = [query_ids[i] for i in picked]
    relevant = {doc for qid in test_ids for doc in qrels[qid]}
    position = {doc: i for i, doc in enumerate(corpus_ids)}
    keep = sorted(position[doc] for doc in relevant)
    if corpus_size is not None:
        if corpus_size < len(keep):
            raise InvalidArgument(
                f"--corpus-size {corpus_size} is smaller than the {len(keep)} documents "
                "relevant to the sampled queries; raise it or lower --queries"
            )
        others = np.array([i for i in range(len(corpus_ids)) if corpus_ids[i] not in relevant])
        fill = min(corpus_size - len(keep), len(others))
        extra = rng.choice(others, size=fill, replace=False).tolist() if fill else []
        keep = sorted([*keep, *extra])
    else:
        keep = list(range(len(corpus_ids)))
    kept_position = {corpus_ids[i]: n for n, i in enumerate(keep)}
    # Some texts recur under other ids (repeated verses); such a twin must not be an anchor.
    held_out = {query_texts[i] for i in picked} | {corpus_texts[position[d]] for d in relevant}
    chosen = set(picked)
    untested = [text for i, text in enumerate(query_texts) if i not in chosen]
    return RetrievalDataset(
        name=name,
        query_ids=tuple(test_ids),
        query_texts=tuple(query_texts[i] for i in picked),
        corpus_ids=tuple(corpus_ids[i] for i in keep),
        corpus_texts=tuple(corpus_texts[i] for i in keep),
        qrels=tuple(
            {kept_position[doc]: grade for doc, grade in qrels[qid].items()} for qid in test_ids
        ),
        labelled=True,
        in_domain_pool=_without(pool_builder(set(test_ids), relevant), held_out),
        traffic_pool=_without(_shuffled(untested, seed, salt=3), held_out),
    )


def _kjv_knn(
    records: Sequence[DemoRecord], *, corpus_size: int | None, queries: int | None, seed: int
) -> RetrievalDataset:
    _check_size("--queries", queries)
    _check_size("--corpus-size", corpus_size)
    n_queries = KJV_KNN_DEFAULT_QUERIES if queries is None else queries
    n_corpus = len(records) - n_queries if corpus_size is None else corpus_size
    if n_queries + n_corpus > len(records):
        raise InvalidArgument(
            f"{KJV_KNN} has {len(records)} verses; --queries {n_queries} plus "
            f"--corpus-size {n_corpus} is more than that"
        )
    order = np.random.default_rng(seed).permutation(len(records)).tolist()
    query_rows = sorted(order[:n_queries])
    corpus_rows = sorted(order[n_queries : n_queries + n_corpus])
    # Verses outside both the queries and the sampled corpus come first, so small anchor sets
    # never contain the very documents being ranked.
    outside = [records[i].text for i in order[n_queries + n_corpus :]]
    inside = [records[i].text for i in order[n_queries : n_queries + n_corpus]]
    return RetrievalDataset(
        name=KJV_KNN,
        query_ids=tuple(records[i].id for i in query_rows),
        query_texts=tuple(records[i].text for i in query_rows),
        corpus_ids=tuple(records[i].id for i in corpus_rows),
        corpus_texts=tuple(records[i].text for i in corpus_rows),
        qrels=tuple({} for _ in query_rows),
        labelled=False,
        in_domain_pool=_without(outside + inside, {records[i].text for i in query_rows}),
    )


def _without(texts: list[str], held_out: set[str]) -> tuple[str, ...]:
    return tuple(text for text in texts if text not in held_out)


def _check_size(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InvalidArgument(f"{option} must be at least 1, got {value}")


def _shuffled(texts: list[str], seed: int, *, salt: int) -> list[str]:
    order = np.random.default_rng([seed, salt]).permutation(len(texts))
    return [texts[i] for i in order]


def _interleave(first: list[str], second: list[str]) -> list[str]:
    """Alternate two lists, so every prefix mixes both kinds of text about evenly."""
    mixed: list[str] = []
    for a, b in zip(first, second, strict=False):
        mixed.extend((a, b))
    shorter = min(len(first), len(second))
    mixed.extend(first[shorter:])
    mixed.extend(second[shorter:])
    return mixed


def _read_jsonl(path: Path, *, with_title: bool) -> Iterator[tuple[str, str]]:
    if not path.is_file():
        raise ConfigError(f"BEIR dataset file {path} is missing")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                doc_id, text = str(obj["_id"]), str(obj["text"])
                title = str(obj.get("title") or "") if with_title else ""
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    f"{path}:{number} is not a BEIR record with _id and text ({exc})"
                ) from exc
            yield doc_id, f"{title} {text}" if title.strip() else text


def _qrels_file(directory: Path, split: str | None) -> Path:
    qrels_dir = directory / "qrels"
    if split is not None:
        path = qrels_dir / f"{split}.tsv"
        if not path.is_file():
            raise ConfigError(f"qrels file {path} for split {split!r} is missing")
        return path
    if (qrels_dir / "test.tsv").is_file():
        return qrels_dir / "test.tsv"
    candidates = sorted(qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConfigError(f"{qrels_dir} holds no .tsv judgements file")
    names = ", ".join(p.stem for p in candidates)
    raise ConfigError(f"{qrels_dir} holds several splits ({names}) and no test.tsv; pick --split")


def _read_qrels(path: Path) -> Iterator[tuple[str, str, float]]:
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not row or (number == 1 and row[0].strip().lower() in {"query-id", "query_id"}):
                continue
            try:
                query_id, doc_id, grade = row[0], row[1], float(row[2])
            except (IndexError, ValueError) as exc:
                raise ConfigError(
                    f"{path}:{number} is not 'query-id<TAB>corpus-id<TAB>score' ({exc})"
                ) from exc
            yield query_id, doc_id, grade
