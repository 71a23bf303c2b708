"""Hubness correction (``silobridge.adapters.hubness``): its invariants, its place in the signed
artifact, and the silo's ``[receiving]`` settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from silobridge.adapters import FitConfig, fit
from silobridge.adapters.artifact import WEIGHTS_FILE, load_adapter, save_adapter
from silobridge.adapters.hubness import (
    MAX_REFERENCE_BYTES,
    REFERENCE_TENSOR,
    HubnessCorrection,
    hubness,
    reference_from_translated,
)
from silobridge.adapters.signing import SignatureInvalid
from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.core.spaces import SpaceDescriptor
from silobridge.silo_agent.config import load_silo_config

DIM = 16


def unit(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return out


def random_unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    return unit(rng.standard_normal((n, dim)))


@given(seed=st.integers(0, 2**31), n=st.integers(1, 60), k=st.integers(1, 12))
def test_the_corrected_order_is_csls_and_scores_stay_centred(seed: int, n: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    docs, reference, query = random_unit(rng, n), random_unit(rng, 40), random_unit(rng, 1)[0]
    ids = [f"d{i}" for i in range(n)]
    correction = HubnessCorrection.for_documents(reference, docs, k)
    raw = docs @ query
    scores = correction.rescore(ids, docs, raw)
    penalty = hubness(docs, reference, k)
    # CSLS orders by 2 cos - r(d); the silo returns cos - (r(d) - mean r) / 2, the same order.
    assert np.allclose(2 * scores, 2 * raw - penalty + penalty.mean(), atol=1e-5)
    # Centred on the documents it was built from: on average the correction moves no score.
    assert abs(float((scores - raw).mean())) < 1e-5


def test_a_hub_document_is_pushed_down() -> None:
    rng = np.random.default_rng(3)
    reference = random_unit(rng, 200)
    hub = unit(reference.mean(axis=0, keepdims=True))[0]  # near every reference vector
    docs = np.vstack([hub, random_unit(rng, 30)])
    query = unit((hub + docs[5])[None, :])[0]  # between the hub and document 5
    raw = docs @ query
    assert int(np.argmax(raw)) in (0, 5)
    scores = HubnessCorrection.for_documents(reference, docs).rescore(
        [str(i) for i in range(len(docs))], docs, raw
    )
    assert scores[0] - raw[0] < scores[5] - raw[5]


def test_a_rewritten_document_gets_a_new_penalty() -> None:
    rng = np.random.default_rng(4)
    reference = random_unit(rng, 50)
    correction = HubnessCorrection(reference, mean_hubness=0.0)
    before, after = random_unit(rng, 2)
    first = correction.penalties(["a"], before[None, :])
    second = correction.penalties(["a"], after[None, :])
    assert first[0] == pytest.approx(float(hubness(before[None, :], reference)[0]))
    assert second[0] == pytest.approx(float(hubness(after[None, :], reference)[0]))


def test_rescore_refuses_mismatched_inputs() -> None:
    correction = HubnessCorrection(np.eye(DIM, dtype=np.float32), mean_hubness=0.0)
    with pytest.raises(InvalidArgument):
        correction.rescore(["a", "b"], np.eye(DIM, dtype=np.float32)[:1], [0.5, 0.4])


@given(rows=st.integers(1, 3000), dim=st.sampled_from([8, 384, 1024]))
def test_the_reference_is_unit_float16_within_its_budget(rows: int, dim: int) -> None:
    rng = np.random.default_rng(rows)
    reference = reference_from_translated(rng.standard_normal((rows, dim)) * 3.0, seed=1)
    assert reference.dtype == np.float16
    assert reference.nbytes <= MAX_REFERENCE_BYTES
    assert reference.shape[1] == dim
    assert np.allclose(np.linalg.norm(reference.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_the_reference_refuses_zero_and_non_finite_rows() -> None:
    for bad in (np.zeros((3, DIM)), np.full((3, DIM), np.nan), np.zeros((0, DIM))):
        with pytest.raises(InvalidArgument):
            reference_from_translated(bad)


SOURCE = SpaceDescriptor("src@aaaa0000", "src", DIM, "aaaa000000000000")
TARGET = SpaceDescriptor("tgt@bbbb0000", "tgt", DIM, "bbbb000000000000")


def _artifact(tmp_path: Path, key: Ed25519PrivateKey) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(5)
    x = random_unit(rng, 120)
    y = unit(x @ np.linalg.qr(rng.standard_normal((DIM, DIM)))[0])
    adapter = fit(x, y, FitConfig(kind="procrustes", seed=0))
    reference = reference_from_translated(adapter.apply(x))
    directory = tmp_path / "artifact"
    save_adapter(
        directory,
        adapter,
        source=SOURCE,
        target=TARGET,
        anchor_set_sha256="ab" * 32,
        signing_key=key,
        receiving={REFERENCE_TENSOR: reference},
    )
    return directory, reference


def test_the_reference_travels_signed_in_the_artifact(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    directory, reference = _artifact(tmp_path, key)
    loaded = load_adapter(directory, verify_key=key.public_key())
    assert np.array_equal(loaded.receiving[REFERENCE_TENSOR], reference)
    assert loaded.adapter.tensors().keys().isdisjoint(loaded.receiving)
    # Changing one byte of the weights file (the reference is in it) breaks the signature.
    weights = directory / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(SignatureInvalid):
        load_adapter(directory, verify_key=key.public_key())


def test_receiving_tensors_must_carry_the_prefix(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    x = random_unit(rng, 60)
    adapter = fit(x, x, FitConfig(kind="procrustes", seed=0))
    with pytest.raises(InvalidArgument, match="receiving"):
        save_adapter(
            tmp_path / "a",
            adapter,
            source=SOURCE,
            target=TARGET,
            anchor_set_sha256="ab" * 32,
            receiving={"hubness_reference": np.eye(DIM, dtype=np.float16)},
        )


MINIMAL = """
[silo]
name = "kjv"
model = "minilm-l6"
[server]
insecure = true
"""


def test_receiving_settings_default_on_and_per_source_space(tmp_path: Path) -> None:
    path = tmp_path / "silo.toml"
    path.write_text(MINIMAL)
    assert load_silo_config(path).receiving.hubness_for("anything")
    path.write_text(MINIMAL + '[receiving]\nhubness_off_for = ["old@1"]\nhubness_k = 5\n')
    settings = load_silo_config(path).receiving
    assert not settings.hubness_for("old@1")
    assert settings.hubness_for("new@2")
    assert settings.hubness_k == 5
    path.write_text(MINIMAL + "[receiving]\nhubness = false\n")
    assert not load_silo_config(path).receiving.hubness_for("new@2")


@pytest.mark.parametrize(
    "table", ["hubness_depth = 5000", "hubness_k = 0", "hubnes = true", 'hubness = "yes"']
)
def test_bad_receiving_settings_name_the_key(tmp_path: Path, table: str) -> None:
    path = tmp_path / "silo.toml"
    path.write_text(MINIMAL + "[receiving]\n" + table + "\n")
    with pytest.raises(ConfigError, match="receiving"):
        load_silo_config(path)
