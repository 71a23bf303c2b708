"""The `silobridge eval` harness on real models and real verses: datasets, anchors, cache, rows."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from silobridge.adapters.anchor_preference import preference_scores
from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor
from silobridge.embedding.embedders import Embedder, load_embedder
from silobridge.evaluation.anchors import file_anchors, public_anchors, resolve_anchor_sources
from silobridge.evaluation.cache import EmbeddingCache, embed_cached
from silobridge.evaluation.cli import eval_command
from silobridge.evaluation.corpus import load_records
from silobridge.evaluation.datasets import load_beir, load_builtin
from silobridge.evaluation.runner import (
    ROW_FIELDS,
    EvalConfig,
    EvalResult,
    EvalSession,
    preferred_pairs,
    run_evaluation,
)

SOURCE = "minilm-l3-onnx"
TARGET = "static-64"


# ---- datasets ---------------------------------------------------------------------------------


def test_bible_subsample_is_reproducible_and_keeps_every_relevant_verse() -> None:
    first = load_builtin("bible-web2kjv", corpus_size=300, queries=50, seed=3)
    again = load_builtin("bible-web2kjv", corpus_size=300, queries=50, seed=3)
    other = load_builtin("bible-web2kjv", corpus_size=300, queries=50, seed=4)
    assert first == again
    assert first.query_ids != other.query_ids
    assert (len(first.query_ids), len(first.corpus_ids)) == (50, 300)
    for query_id, judged in zip(first.query_ids, first.qrels, strict=True):
        # The one relevant document of WEB verse X is KJV verse X, and it is in the corpus.
        assert [first.corpus_ids[doc] for doc in judged] == [query_id]
    web = {r.id: r.text for r in load_records("web")}
    kjv = {r.id: r.text for r in load_records("kjv")}
    held_out = {web[q] for q in first.query_ids} | {kjv[q] for q in first.query_ids}
    assert not held_out & set(first.in_domain_pool)
    pool_head = first.in_domain_pool[:1000]
    assert 400 < sum(text in set(web.values()) for text in pool_head) < 600  # about half WEB


def test_subsample_refuses_a_corpus_smaller_than_its_relevant_documents() -> None:
    with pytest.raises(InvalidArgument, match="--corpus-size"):
        load_builtin("bible-web2kjv", corpus_size=10, queries=50, seed=0)
    with pytest.raises(InvalidArgument, match="unknown dataset"):
        load_builtin("msmarco", corpus_size=None, queries=None, seed=0)


def test_kjv_knn_is_unlabelled_with_disjoint_queries_and_corpus() -> None:
    data = load_builtin("kjv-knn", corpus_size=500, queries=40, seed=1)
    assert not data.labelled
    assert all(not judged for judged in data.qrels)
    assert not set(data.query_ids) & set(data.corpus_ids)
    assert not set(data.query_texts) & set(data.in_domain_pool)


def write_beir(directory: Path, *, docs: int = 160, judged: int = 30, unjudged: int = 10) -> Path:
    """A BEIR directory made of demo verses: WEB verses ask for their KJV twins."""
    kjv = load_records("kjv", limit=docs)
    web = load_records("web", limit=judged + unjudged)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "corpus.jsonl").open("w") as corpus:
        for n, record in enumerate(kjv):
            title = record.metadata["book"] if n % 2 else ""
            corpus.write(json.dumps({"_id": f"d-{record.id}", "title": title, "text": record.text}))
            corpus.write("\n")
    with (directory / "queries.jsonl").open("w") as queries:
        for record in web:
            queries.write(json.dumps({"_id": f"q-{record.id}", "text": record.text}) + "\n")
    (directory / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"q-{r.id}\td-{r.id}\t1" for r in web[:judged]]
    # A zero grade is "judged not relevant"; a judgement of a missing document is skipped.
    lines += [f"q-{web[judged].id}\td-{kjv[0].id}\t0", f"q-{web[0].id}\td-missing\t1"]
    (directory / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return directory


def test_beir_directory_loads_titles_grades_and_an_in_domain_pool(tmp_path: Path) -> None:
    data = load_beir(write_beir(tmp_path / "beir"), corpus_size=None, queries=None, seed=0)
    kjv = load_records("kjv", limit=2)
    assert data.corpus_texts[0] == kjv[0].text  # no title
    assert data.corpus_texts[1] == f"{kjv[1].metadata['book']} {kjv[1].text}"
    assert len(data.query_ids) == 30  # the zero-graded and unjudged queries are not test queries
    assert all(len(judged) == 1 for judged in data.qrels)
    # Pool: 10 unjudged queries + 130 documents nobody asks for.
    assert len(data.in_domain_pool) == 140
    assert not set(data.query_texts) & set(data.in_domain_pool)


def test_beir_errors_name_the_missing_file(tmp_path: Path) -> None:
    directory = write_beir(tmp_path / "beir")
    with pytest.raises(ConfigError, match="dev"):
        load_beir(directory, split="dev", corpus_size=None, queries=None, seed=0)
    (directory / "corpus.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"corpus\.jsonl"):
        load_beir(directory, corpus_size=None, queries=None, seed=0)


# ---- anchors ----------------------------------------------------------------------------------


def test_public_anchors_are_seeded_and_nested_and_bounded() -> None:
    anchors = public_anchors(seed=0)
    assert anchors == public_anchors(seed=0)
    assert anchors.texts[:50] != public_anchors(seed=1).texts[:50]
    assert set(anchors.take(1000)) <= set(anchors.take(4000))
    with pytest.raises(InvalidArgument, match="--anchor-count"):
        anchors.take(len(anchors.texts) + 1)


@given(st.lists(st.text(alphabet="abc xyz", min_size=1).filter(str.strip), max_size=20))
def test_anchor_file_reads_plain_lines_and_jsonl_alike(lines: list[str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        plain, jsonl = Path(tmp) / "a.txt", Path(tmp) / "a.jsonl"
        plain.write_text("\n".join(lines) + "\n")
        jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
        if not lines:
            with pytest.raises(ConfigError, match="no texts"):
                file_anchors(plain, seed=0)
            return
        expected = {t.strip() for t in lines}
        assert set(file_anchors(plain, seed=0).texts) == expected
        assert file_anchors(jsonl, seed=0).texts == file_anchors(plain, seed=0).texts


def test_unknown_anchor_set_is_refused() -> None:
    data = load_builtin("kjv-knn", corpus_size=50, queries=5, seed=0)
    with pytest.raises(InvalidArgument, match="in-domain"):
        resolve_anchor_sources(["private"], [], data, seed=0)


# ---- embedding cache --------------------------------------------------------------------------


class CountingEmbedder:
    """A real embedder that counts the texts it is asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.spec, self.model_id, self.dimension = inner.spec, inner.model_id, inner.dimension
        self.embedded = 0

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> FloatMatrix:
        self.embedded += len(texts)
        return self.inner.embed(texts, batch_size=batch_size)

    @property
    def space(self) -> SpaceDescriptor:
        return self.inner.space


def test_cache_embeds_only_missing_texts_and_survives_reopening(tmp_path: Path) -> None:
    model = CountingEmbedder(load_embedder("static-64"))
    texts = [r.text for r in load_records("kjv", limit=30)]
    cache = EmbeddingCache(tmp_path)
    first = embed_cached(model, [*texts[:20], texts[0]], cache, label="t")
    assert model.embedded == 20  # the repeated text is embedded once
    cache.close()
    reopened = EmbeddingCache(tmp_path)
    second = embed_cached(model, texts, reopened, label="t")
    assert model.embedded == 30
    np.testing.assert_array_equal(second[:20], first[:20])
    np.testing.assert_allclose(second, model.inner.embed(texts), atol=1e-6)
    reopened.close()
    assert (tmp_path / "embeddings.sqlite").stat().st_size > 30 * 64 * 4


# ---- the evaluation matrix on real models -----------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvalResult]:
    config = EvalConfig(
        source_model=SOURCE,
        target_model=TARGET,
        dataset="bible-web2kjv",
        corpus_size=300,
        queries=50,
        anchors=("public",),
        anchor_counts=(500,),
        adapters=("procrustes", "affine"),
    )
    session = EvalSession(cache_dir=tmp_path_factory.mktemp("cache"))
    yield run_evaluation(config, session)
    session.close()


def test_rows_carry_the_schema_fields(small_run: EvalResult) -> None:
    rows = [row.to_json() for row in small_run.rows]
    assert [(r["method"], r["kind"], r["receiving"]) for r in rows] == [
        ("native", None, ""),
        ("source-native", None, ""),  # no "none": 384 and 64 dimensions cannot be compared
        ("adapter", "procrustes", ""),
        ("adapter", "procrustes", "hubness(anchors)"),
        ("two-stage", "procrustes", ""),
        ("adapter", "affine", ""),
        # The receiving silo running the source model: fitted on its own documents.
        ("adapter", "affine", "local-fit"),
        ("adapter", "affine", "local-fit+hubness(own)"),
    ]
    for row in rows:
        assert set(ROW_FIELDS) <= set(row)
        assert json.loads(json.dumps(row)) == row
    native = rows[0]
    assert (native["anchors"], native["anchor_count"], native["train_s"]) == (None, None, None)
    assert native["arr@10"] == 1.0 and native["retention_ndcg@10"] == 1.0
    source_native = rows[1]
    assert (source_native["anchors"], source_native["train_s"]) == (None, None)
    for row in rows[2:6]:
        assert (row["anchors"], row["anchor_count"]) == ("public", 500)
        assert row["train_s"] > 0
    for row in rows[6:]:
        assert (row["anchors"], row["anchor_count"]) == ("own-documents", 300)
    assert all(
        row["apply_us"] > 0 for row in rows if row["method"] == "adapter" and not row["receiving"]
    )


def test_retention_is_the_ratio_of_the_reported_scores(small_run: EvalResult) -> None:
    native = small_run.rows[0]
    assert native.ndcg is not None and native.recall is not None and native.ndcg > 0
    for row in small_run.rows:
        assert row.ndcg is not None and row.recall is not None
        assert row.retention_ndcg == pytest.approx(row.ndcg / native.ndcg)
        assert row.retention_recall == pytest.approx(row.recall / native.recall)
        # Whichever side is better is reported as measured, not clipped to native.
        assert (row.retention_ndcg is not None) and (row.retention_ndcg <= 1.0) == (
            row.ndcg <= native.ndcg
        )
        assert row.arr is not None and 0.0 <= row.arr <= 1.0


def test_retention_of_achievable_is_measured_against_the_weaker_native(
    small_run: EvalResult,
) -> None:
    native, source_native = small_run.rows[0], small_run.rows[1]
    assert source_native.method == "source-native"
    assert native.ndcg is not None and source_native.ndcg is not None
    achievable = min(native.ndcg, source_native.ndcg)
    for row in small_run.rows:
        assert row.source_native_ndcg == pytest.approx(source_native.ndcg)
        assert row.ndcg is not None
        assert row.retention_achievable_ndcg == pytest.approx(row.ndcg / achievable)
        assert row.to_json()["retention_achievable_ndcg@10"] == row.retention_achievable_ndcg


def test_the_identity_protocol_reports_r1_and_mrr_beside_the_labelled_rows(
    tmp_path: Path,
) -> None:
    config = EvalConfig(
        source_model="static-64",
        target_model="static-64",
        dataset="bible-web2kjv",
        corpus_size=200,
        queries=20,
        anchors=("public",),
        anchor_counts=(300,),
        adapters=("procrustes",),
        two_stage=False,
        protocol="identity",
        identity_docs=50,
    )
    session = EvalSession(cache_dir=tmp_path)
    try:
        result = run_evaluation(config, session)
    finally:
        session.close()
    by_method = {row.method: row for row in result.rows if not row.receiving}
    # The same model on both sides: a document's own vector finds it (unless a duplicate text
    # ties), with or without the (near-identity) adapter.
    for method in ("native", "none", "adapter"):
        row = by_method[method]
        assert row.identity_r1 is not None and row.identity_mrr is not None
        assert 0.9 <= row.identity_r1 <= row.identity_mrr <= 1.0, method
        assert row.ndcg is not None  # the labelled metrics stay beside it
    assert by_method["source-native"].identity_r1 is None
    assert by_method["adapter"].to_json()["identity_r@1"] == by_method["adapter"].identity_r1


def test_traffic_is_disjoint_from_the_test_queries_and_adds_its_hubness_row(
    tmp_path: Path,
) -> None:
    data = load_builtin("bible-web2kjv", corpus_size=200, queries=20, seed=0)
    assert len(data.traffic_pool) > 1000
    assert not set(data.traffic_pool) & set(data.query_texts)
    config = EvalConfig(
        source_model="static-64",
        target_model="static-64",
        dataset="bible-web2kjv",
        corpus_size=200,
        queries=20,
        anchors=("public",),
        anchor_counts=(300,),
        adapters=("procrustes",),
        two_stage=False,
        traffic=200,
        local_fit=0,
    )
    session = EvalSession(cache_dir=tmp_path)
    try:
        result = run_evaluation(config, session)
        adapted = [row for row in result.rows if row.method == "adapter"]
        receiving = [row.receiving for row in adapted]
        assert receiving == [
            "",
            "hubness(anchors)",
            "hubness(traffic)",
            "refine(traffic)",
            "refine(traffic)+hubness(traffic)",
        ]
        # A refinement row says what the label-free guard decided; the others say nothing.
        assert all(row.guard.startswith(("accepted", "refused: ")) for row in adapted[3:])
        assert all(row.guard == "" for row in adapted[:3])
        assert adapted[3].to_json()["guard"] == adapted[3].guard
        too_many = EvalConfig(**{**config.__dict__, "traffic": 10**6})
        with pytest.raises(InvalidArgument, match="--traffic"):
            run_evaluation(too_many, session)
    finally:
        session.close()


def test_the_labelled_protocol_alone_reports_no_identity_figures(small_run: EvalResult) -> None:
    assert all(row.identity_r1 is None and row.identity_mrr is None for row in small_run.rows)


def test_native_scores_match_a_hand_computed_search(small_run: EvalResult) -> None:
    data = load_builtin("bible-web2kjv", corpus_size=300, queries=50, seed=0)
    target = load_embedder(TARGET)
    scores = target.embed(list(data.query_texts)) @ target.embed(list(data.corpus_texts)).T
    ndcg, hits, reciprocal = [], 0, []
    for row, judged in zip(scores, data.qrels, strict=True):
        (relevant,) = judged
        rank = 1 + int(np.sum(row > row[relevant]))  # 1-based rank of the one relevant verse
        ndcg.append(1 / math.log2(rank + 1) if rank <= 10 else 0.0)
        reciprocal.append(1 / rank if rank <= 10 else 0.0)
        hits += rank <= 10
    native = small_run.rows[0]
    assert native.ndcg == pytest.approx(float(np.mean(ndcg)), abs=1e-6)
    assert native.mrr == pytest.approx(float(np.mean(reciprocal)), abs=1e-6)
    assert native.recall == pytest.approx(hits / 50)


# ---- the command line, end to end on a BEIR directory -----------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(eval_command)

    @app.callback()
    def root() -> None:
        """Mounts `eval` as a sub-command, as the silobridge entry point does."""

    return app


def test_cli_runs_a_beir_directory_to_json_and_plot(tmp_path: Path) -> None:
    directory = write_beir(tmp_path / "beir")
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    anchor_file = tmp_path / "anchors.txt"
    anchor_file.write_text("\n".join(r.text for r in load_records("pydoc_anchors", limit=300)))
    args = ["eval", "--dataset-dir", str(directory), "--source-model", "static-64"]
    args += ["--target-model", "static-64", "--anchors", "in-domain", "--anchor-file"]
    args += [str(anchor_file), "--anchor-count", "60", "--anchor-count", "120"]
    args += ["--adapters", "procrustes,affine", "--seed", "2", "--cache-dir", str(tmp_path)]
    args += ["--json", str(out_json), "--plot", str(out_png)]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert "two-stage" in result.output
    report = json.loads(out_json.read_text())
    rows = report["rows"]
    assert {"config", "date", "machine"} <= set(report)
    # native, source-native, none, then 2 anchor sets x 2 counts x (procrustes, its hubness
    # correction, its two-stage, affine).
    assert len(rows) == 3 + 2 * 2 * 4 + 2  # + the two local-fit rows
    assert rows[1]["method"] == "source-native"
    none = rows[2]
    # The same model on both sides: the untranslated vector is the native one.
    assert none["method"] == "none" and none["arr@10"] == 1.0
    assert {r["anchors"] for r in rows[3:-2]} == {"in-domain", "file:anchors.txt"}
    assert {r["anchor_count"] for r in rows[3:-2]} == {60, 120}
    assert [r["receiving"] for r in rows[-2:]] == ["local-fit", "local-fit+hubness(own)"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out_png.stat().st_size > 10_000


def test_cli_reports_a_user_error_without_a_traceback(tmp_path: Path) -> None:
    args = ["eval", "--source-model", "static-64", "--target-model", "static-64"]
    args += ["--dataset-dir", str(tmp_path / "absent"), "--no-cache"]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert "Traceback" not in result.output


def test_preferred_anchors_are_the_silos_interleaved_choices_of_the_public_pool(
    tmp_path: Path,
) -> None:
    config = EvalConfig(
        source_model="static-64",
        target_model="static-64",
        dataset="bible-web2kjv",
        corpus_size=300,
        queries=20,
        anchors=("preferred",),
        anchor_counts=(100, 400),
        adapters=("procrustes",),
        two_stage=False,
        local_fit=0,
    )
    session = EvalSession(cache_dir=tmp_path)
    try:
        result = run_evaluation(config, session)
    finally:
        session.close()
    rows = [row for row in result.rows if row.anchors == "preferred" and not row.receiving]
    assert [row.anchor_count for row in rows] == [100, 400]
    # The pool is public text; the chosen prefix lies nearer the corpus than the pool at large.
    dataset = load_builtin("bible-web2kjv", corpus_size=300, queries=20, seed=0)
    model = load_embedder("static-64")
    pool = resolve_anchor_sources(["preferred"], [], dataset, 0)[0].texts
    corpus = model.embed(list(dataset.corpus_texts))
    vectors = model.embed(list(pool[:20_000]))
    both = preferred_pairs(vectors, vectors, corpus, corpus, 400)
    assert both[0].shape == (400, 64)
    scores = preference_scores(vectors, corpus)
    chosen = preference_scores(both[1], corpus)
    assert float(chosen.mean()) > float(np.quantile(scores, 0.9))
