"""Adapters: unit outputs, exact recovery, dimension changes, determinism, state round trips."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silobridge.adapters import (
    KINDS,
    Adapter,
    FitConfig,
    adapter_from_state,
    fit,
    heldout_ndcg,
)
from silobridge.core.errors import InvalidArgument

FITTED_KINDS = ("procrustes", "affine", "mlp", "local", "auto")
# Small enough that every kind (torch included) fits in well under a second.
FAST = FitConfig(mlp_hidden=16, mlp_epochs=8, mlp_patience=3, mlp_batch=32, local_clusters=3)


def unit(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return out


def related_pair(
    count: int, source_dim: int, target_dim: int, seed: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Anchor pairs whose target is a noisy non-linear function of the source."""
    rng = np.random.default_rng(seed)
    source = unit(rng.standard_normal((count, source_dim)))
    mixing = rng.standard_normal((source_dim, target_dim))
    target = unit(np.tanh(source @ mixing) + 0.05 * rng.standard_normal((count, target_dim)))
    return source, target


def assert_unit_rows(rows: npt.NDArray[np.float32], width: int) -> None:
    assert rows.dtype == np.float32
    assert rows.shape[1] == width
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def random_orthogonal(dim: int, seed: int) -> npt.NDArray[np.float64]:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    out: npt.NDArray[np.float64] = q * np.sign(np.diag(r))
    return out


@settings(max_examples=12, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    source_dim=st.integers(2, 12),
    target_dim=st.integers(2, 12),
    scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**16),
)
def test_every_kind_maps_any_input_to_unit_rows(
    kind: str, source_dim: int, target_dim: int, scale: float, seed: int
) -> None:
    if kind == "identity":
        target_dim = source_dim
    source, target = related_pair(48, source_dim, target_dim, seed)
    adapter = fit(source * scale, target, replace(FAST, kind=kind, seed=seed))
    queries = np.random.default_rng(seed + 1).standard_normal((5, source_dim)) * scale
    assert_unit_rows(adapter.apply(queries), target_dim)
    one = adapter.apply_one(queries[0].astype(np.float32))
    assert one.shape == (target_dim,)
    assert abs(float(np.linalg.norm(one)) - 1.0) < 1e-5


@settings(max_examples=10, deadline=None)
@given(dim=st.integers(2, 24), seed=st.integers(0, 2**16), scaled=st.booleans())
def test_procrustes_recovers_a_known_orthogonal_map(dim: int, seed: int, scaled: bool) -> None:
    rotation = random_orthogonal(dim, seed)
    source = unit(np.random.default_rng(seed + 1).standard_normal((4 * dim + 40, dim)))
    target = source @ rotation  # already unit rows: an orthogonal map keeps norms
    config = FitConfig(kind="procrustes", seed=seed, procrustes_scale=scaled)
    adapter = fit(source, target, config)
    fresh = unit(np.random.default_rng(seed + 2).standard_normal((20, dim)))
    np.testing.assert_allclose(adapter.apply(fresh), fresh @ rotation, atol=2e-5)
    assert adapter.metrics["heldout_ndcg@10"] == pytest.approx(1.0)


@pytest.mark.parametrize("kind", FITTED_KINDS)
@pytest.mark.parametrize(("source_dim", "target_dim"), [(24, 8), (8, 24)])
def test_dimension_changes_in_both_directions(kind: str, source_dim: int, target_dim: int) -> None:
    source, target = related_pair(120, source_dim, target_dim, seed=3)
    adapter = fit(source, target, replace(FAST, kind=kind))
    assert (adapter.source_dim, adapter.target_dim) == (source_dim, target_dim)
    assert_unit_rows(adapter.apply(source[:7]), target_dim)
    # A mapping that learned anything finds most held-out twins; identity-free chance is ~0.1.
    assert adapter.metrics["heldout_ndcg@10"] > 0.5


def test_identity_is_refused_across_dimensions() -> None:
    source, target = related_pair(60, 8, 6, seed=0)
    with pytest.raises(InvalidArgument, match="equal dimensions"):
        fit(source, target, FitConfig(kind="identity"))


def fit_all_kinds(seed: int) -> dict[str, Adapter]:
    source, target = related_pair(90, 10, 7, seed=5)
    kinds = [k for k in KINDS if k != "identity"]
    adapters = {k: fit(source, target, replace(FAST, kind=k, seed=seed)) for k in kinds}
    square_s, square_t = related_pair(60, 6, 6, seed=6)
    adapters["identity"] = fit(square_s, square_t, FitConfig(kind="identity", seed=seed))
    return adapters


@pytest.fixture(scope="module")
def adapters() -> dict[str, Adapter]:
    return fit_all_kinds(seed=11)


def queries_for(adapter: Adapter) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(99)
    return rng.standard_normal((9, adapter.source_dim)).astype(np.float32)


def test_fitting_is_deterministic_for_a_fixed_seed(adapters: dict[str, Adapter]) -> None:
    again = fit_all_kinds(seed=11)
    for kind, adapter in adapters.items():
        queries = queries_for(adapter)
        assert np.array_equal(adapter.apply(queries), again[kind].apply(queries)), kind
        assert adapter.params() == again[kind].params(), kind


def test_state_round_trip_reproduces_apply_bit_exactly(adapters: dict[str, Adapter]) -> None:
    for kind, adapter in adapters.items():
        rebuilt = adapter_from_state(adapter.kind, adapter.params(), adapter.tensors())
        queries = queries_for(adapter)
        assert type(rebuilt) is type(adapter), kind
        assert np.array_equal(rebuilt.apply(queries), adapter.apply(queries)), kind
        assert np.array_equal(rebuilt.apply_one(queries[0]), adapter.apply_one(queries[0])), kind
        for name, array in adapter.tensors().items():
            assert array.dtype == np.float32, (kind, name)


def test_apply_one_equals_apply_on_a_batch_of_one(adapters: dict[str, Adapter]) -> None:
    for kind, adapter in adapters.items():
        for query in queries_for(adapter):
            batch = adapter.apply(query[None, :])[0]
            np.testing.assert_allclose(adapter.apply_one(query), batch, atol=1e-6, err_msg=kind)


def test_auto_keeps_the_best_candidate_and_records_every_score(
    adapters: dict[str, Adapter],
) -> None:
    chosen = adapters["auto"]
    order = list(FAST.auto_candidates)
    scores = {kind: chosen.metrics[f"candidate_{kind}_ndcg@10"] for kind in order}
    assert chosen.kind in order
    assert chosen.metrics["heldout_ndcg@10"] == scores[chosen.kind]
    # No later (more flexible) candidate beat the choice by more than the margin ...
    for kind in order[order.index(chosen.kind) + 1 :]:
        assert scores[kind] <= scores[chosen.kind] + FAST.auto_margin
    # ... and the choice beat every earlier one by more than it.
    for kind in order[: order.index(chosen.kind)]:
        assert scores[chosen.kind] > scores[kind] + FAST.auto_margin


@pytest.mark.parametrize(("margin", "expect_first"), [(0.0, False), (0.99, True)])
def test_auto_margin_decides_between_simple_and_flexible(margin: float, expect_first: bool) -> None:
    rng = np.random.default_rng(5)
    source = unit(rng.standard_normal((300, 12)))
    target = unit(np.tanh(source @ rng.standard_normal((12, 10)) * 2))  # a non-linear relation
    config = replace(FAST, kind="auto", auto_margin=margin, auto_candidates=("procrustes", "mlp"))
    chosen = fit(source, target, config)
    scores = [chosen.metrics[f"candidate_{k}_ndcg@10"] for k in ("procrustes", "mlp")]
    if expect_first:
        assert chosen.kind == "procrustes"  # flexibility never pays a 0.99 margin
    else:
        assert chosen.metrics["heldout_ndcg@10"] == max(scores)


def test_every_adapter_records_heldout_ndcg_and_train_time(adapters: dict[str, Adapter]) -> None:
    for kind, adapter in adapters.items():
        assert 0.0 <= adapter.metrics["heldout_ndcg@10"] <= 1.0, kind
        assert adapter.metrics["train_s"] > 0.0, kind


def test_an_unknown_kind_is_refused(adapters: dict[str, Adapter]) -> None:
    affine = adapters["affine"]
    with pytest.raises(InvalidArgument, match="unknown adapter kind"):
        adapter_from_state("builtins.eval", affine.params(), affine.tensors())
    with pytest.raises(InvalidArgument, match="unknown adapter kind"):
        adapter_from_state("auto", affine.params(), affine.tensors())
    with pytest.raises(InvalidArgument, match="unknown adapter kind"):
        FitConfig(kind="pickle")


def test_state_with_a_misshapen_or_missing_tensor_is_refused(
    adapters: dict[str, Adapter],
) -> None:
    local = adapters["local"]
    tensors = local.tensors()
    tensors["centroids"] = tensors["centroids"][:, :-1]
    with pytest.raises(InvalidArgument, match="centroids"):
        adapter_from_state("local", local.params(), tensors)
    tensors = adapters["mlp"].tensors()
    del tensors["out_weight"]
    with pytest.raises(InvalidArgument, match="out_weight"):
        adapter_from_state("mlp", adapters["mlp"].params(), tensors)
    tensors = adapters["affine"].tensors()
    tensors["weight"] = tensors["weight"].astype(np.float64)
    with pytest.raises(InvalidArgument, match="float32"):
        adapter_from_state("affine", adapters["affine"].params(), tensors)


def test_full_shrinkage_makes_local_the_global_affine_map() -> None:
    source, target = related_pair(150, 12, 9, seed=8)
    config = replace(FAST, local_shrinkage=1.0, ridge_lambdas=(0.1,))
    local = fit(source, target, replace(config, kind="local"))
    affine = fit(source, target, replace(config, kind="affine"))
    queries = unit(np.random.default_rng(1).standard_normal((10, 12)))
    np.testing.assert_allclose(local.apply(queries), affine.apply(queries), atol=1e-5)


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        (np.ones((40, 4)), np.ones((39, 4)), "40 anchors but target has 39"),
        (np.ones((12, 4)), np.ones((12, 4)), "too few"),
        (np.full((40, 4), np.nan), np.ones((40, 4)), "NaN"),
        (np.zeros((40, 4)), np.ones((40, 4)), "zero norm"),
        (np.ones(40), np.ones(40), "2-D"),
    ],
)
def test_bad_anchor_pairs_are_refused(
    source: npt.NDArray[np.float64], target: npt.NDArray[np.float64], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        fit(source, target, FitConfig(kind="affine"))


def test_bad_queries_are_refused(adapters: dict[str, Adapter]) -> None:
    for kind, adapter in adapters.items():
        dim = adapter.source_dim
        with pytest.raises(InvalidArgument, match="shape"):
            adapter.apply_one(np.ones(dim + 1, dtype=np.float32))
        with pytest.raises(InvalidArgument, match="norm"):
            adapter.apply_one(np.zeros(dim, dtype=np.float32))
        with pytest.raises(InvalidArgument, match="norm"):
            adapter.apply_one(np.full(dim, np.nan, dtype=np.float32))
        with pytest.raises(InvalidArgument, match="NaN"):
            adapter.apply(np.full((2, dim), np.inf))
        with pytest.raises(InvalidArgument, match="shape"):
            adapter.apply(np.ones((2, dim + 1)))
        assert adapter.apply(np.ones((0, dim))).shape == (0, adapter.target_dim), kind


@settings(max_examples=20, deadline=None)
@given(
    kind=st.sampled_from(["kind", "seed", "holdout_fraction", "ridge_lambdas", "mlp_loss"]),
    data=st.data(),
)
def test_fit_config_refuses_nonsense(kind: str, data: st.DataObject) -> None:
    bad: dict[str, object] = {
        "kind": data.draw(st.text().filter(lambda s: s not in KINDS)),
        "seed": 0,
        "holdout_fraction": data.draw(st.floats(allow_nan=True).filter(lambda f: not 0 < f <= 0.3)),
        "ridge_lambdas": (data.draw(st.floats(max_value=0.0)),),
        "mlp_loss": data.draw(st.text(max_size=8)),
    }
    if kind == "seed":
        FitConfig(seed=data.draw(st.integers(0, 2**31)))  # any seed is fine
        return
    with pytest.raises(InvalidArgument):
        FitConfig(**{kind: bad[kind]})  # type: ignore[arg-type]


def test_heldout_ndcg_counts_ties_against_the_adapter(adapters: dict[str, Adapter]) -> None:
    identity = adapters["identity"]
    target = unit(np.random.default_rng(0).standard_normal((30, identity.target_dim)))
    assert heldout_ndcg(identity, target, target) == 1.0
    collapsed = np.tile(target[:1], (30, 1))  # every candidate the same: all tie
    assert heldout_ndcg(identity, target, collapsed) == 0.0
    distractors = np.tile(target, (2, 1))  # an exact copy of every twin ties with it
    assert heldout_ndcg(identity, target, target, distractors=distractors) < 1.0


def test_applying_a_rebuilt_mlp_never_imports_torch(adapters: dict[str, Adapter]) -> None:
    mlp = adapters["mlp"]
    arrays = {name: array.tolist() for name, array in mlp.tensors().items()}
    script = (
        "import sys, numpy as np\n"
        "from silobridge.adapters import adapter_from_state\n"
        f"tensors = {{k: np.asarray(v, dtype=np.float32) for k, v in {arrays!r}.items()}}\n"
        f"adapter = adapter_from_state('mlp', {mlp.params()!r}, tensors)\n"
        f"adapter.apply_one(np.ones({mlp.source_dim}, dtype=np.float32))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
