"""Domain-aware public anchors: a silo's preferred texts of a public pool (scoring, the silo's
ranking on its own stored vectors, the coordinator's interleaving) and how the boundary report
and the silo's policy show them."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from silobridge.adapters.anchor_preference import (
    interleave_preferences,
    preference_scores,
    preferred,
    spread_sample,
)
from silobridge.audit.boundary_report import boundary_report, report_to_dict
from silobridge.coordinator.anchors.catalogue import AnchorCatalogue
from silobridge.coordinator.silo_gateway import SiloGateway
from silobridge.coordinator.state.records import SiloRecord
from silobridge.coordinator.training.preferred import PreferredAnchors
from silobridge.core.disclosure import DisclosurePolicy
from silobridge.core.documents import Document
from silobridge.core.errors import FailedPrecondition, InvalidArgument
from silobridge.core.listings import PreferenceRequest, SiloListing, TrainProgress
from silobridge.core.spaces import SpaceDescriptor
from silobridge.rpc import convert
from silobridge.silo_agent.receiving.preferences import rank_pool
from silobridge.silo_agent.store.data import SiloData

DIM = 16


def _unit(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    unit: npt.NDArray[np.float32] = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(
        np.float32
    )
    return unit


# --- the scoring and the interleaving --------------------------------------------------------


def test_pool_texts_near_the_documents_score_higher() -> None:
    rng = np.random.default_rng(1)
    centre = _unit(rng.standard_normal((1, DIM)))
    documents = _unit(centre + 0.1 * rng.standard_normal((50, DIM)))
    near = _unit(centre + 0.1 * rng.standard_normal((5, DIM)))
    far = _unit(-centre + 0.1 * rng.standard_normal((5, DIM)))
    pool = np.concatenate([far, near])
    scores = preference_scores(pool, documents, k=5)
    assert scores.shape == (10,)
    assert set(preferred(scores, 5)) == {5, 6, 7, 8, 9}


def test_scores_do_not_depend_on_the_rows_norms() -> None:
    rng = np.random.default_rng(2)
    pool, documents = rng.standard_normal((8, DIM)), rng.standard_normal((20, DIM))
    np.testing.assert_allclose(
        preference_scores(pool, documents), preference_scores(3 * pool, 0.5 * documents), rtol=1e-5
    )


def test_scoring_refuses_mismatched_or_broken_input() -> None:
    with pytest.raises(InvalidArgument, match="dimensions"):
        preference_scores(np.ones((2, 4)), np.ones((3, 5)))
    with pytest.raises(InvalidArgument, match="non-finite"):
        preference_scores(np.full((2, 4), np.nan), np.ones((3, 4)))
    with pytest.raises(InvalidArgument, match="at least 1"):
        preferred([0.1, 0.2], 0)


def test_preferred_is_best_first_and_breaks_ties_by_position() -> None:
    assert preferred([0.1, 0.9, 0.5, 0.9], 3) == [1, 3, 2]


position_lists = st.lists(
    st.lists(st.integers(0, 59), unique=True, max_size=40), min_size=1, max_size=4
)


@given(lists=position_lists, count=st.integers(1, 80))
def test_interleaving_keeps_distinct_pool_positions_and_every_first_choice(
    lists: list[list[int]], count: int
) -> None:
    chosen = interleave_preferences(lists, count, 60)
    union = {p for positions in lists for p in positions}
    assert len(chosen) == len(set(chosen)) == min(count, len(union))
    assert set(chosen) <= union
    assert all(0 <= p < 60 for p in chosen)
    if count >= len(lists):
        assert all(positions[0] in chosen for positions in lists if positions)


def test_interleaving_takes_turns_and_refuses_bad_lists() -> None:
    assert interleave_preferences([[1, 2, 3], [1, 4, 5]], 4, 10) == [1, 4, 2, 5]
    with pytest.raises(InvalidArgument, match="repeats"):
        interleave_preferences([[1, 1]], 2, 10)
    with pytest.raises(InvalidArgument, match="outside the pool"):
        interleave_preferences([[3, 10]], 2, 10)


@given(count=st.integers(0, 5000), size=st.integers(1, 300))
def test_a_spread_sample_is_sorted_distinct_and_in_range(count: int, size: int) -> None:
    picks = spread_sample(count, size)
    if count <= size:
        assert picks.tolist() == list(range(count))
    else:
        assert 1 <= len(picks) <= size
    assert picks.tolist() == sorted(set(picks.tolist()))
    assert all(0 <= p < count for p in picks)
    if count and size >= 2:
        assert picks[0] == 0 and picks[-1] == count - 1  # spread from end to end


# --- the silo ranks a pool against its own stored vectors -----------------------------------


def test_a_silo_prefers_the_pool_texts_near_its_own_documents(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    topic, other = _unit(rng.standard_normal((2, DIM)))
    vectors = _unit(topic + 0.2 * rng.standard_normal((300, DIM)))
    space = SpaceDescriptor("s@00000000", "s", DIM, "0" * 16)
    data = SiloData.open(tmp_path / "data", space)
    try:
        with pytest.raises(FailedPrecondition, match="no documents"):
            rank_pool(data, data.primary, vectors[:3], 1, silo="empty")
        data.upsert([Document(f"d{i}", f"text {i}") for i in range(300)], vectors)
        data.rebuild_index()
        near = _unit(topic + 0.2 * rng.standard_normal((20, DIM)))
        far = _unit(other + 0.2 * rng.standard_normal((80, DIM)))
        order = rng.permutation(100)
        pool = np.concatenate([near, far])[order]
        near_positions = {int(p) for p in np.flatnonzero(order < 20)}
        chosen = rank_pool(data, data.primary, pool, 20, silo="s")
        assert len(set(chosen)) == 20
        assert len(near_positions & set(chosen)) >= 18
        with pytest.raises(InvalidArgument, match="between 1 and the 100"):
            rank_pool(data, data.primary, pool, 101, silo="s")
    finally:
        data.close()


def test_a_preference_request_and_its_answer_survive_the_wire() -> None:
    request = PreferenceRequest("mix", "v2", "a" * 64, 500)
    assert convert.preference_request_from_proto(convert.preference_request_to_proto(request)) == (
        request
    )
    assert convert.positions_from_proto(convert.positions_to_proto([7, 0, 3])) == [7, 0, 3]


def test_the_receiving_side_of_a_policy_survives_the_wire() -> None:
    policy = DisclosurePolicy(
        ("book",), False, ("*",), 50, True, 5000, 600.0, 0.1, True, ("minilm-l3-onnx",)
    )
    assert convert.disclosure_from_proto(convert.disclosure_to_proto(policy)) == policy


# --- the boundary report ---------------------------------------------------------------------


def _view(silo: str, policy: DisclosurePolicy | None) -> SiloListing:
    return SiloListing(silo, f"h:{silo}", f"org-{silo}", None, True, 0, "", 0, policy=policy)


def test_the_report_names_the_silos_answering_preferences_and_keeping_traffic() -> None:
    quiet = DisclosurePolicy((), False, ("*",), 50)
    keeping = DisclosurePolicy(
        (), False, ("*",), 50, anchor_preferences=True, traffic_pool=2000,
        traffic_lifetime_s=900.0, traffic_max_share=0.05, refine=True,
    )  # fmt: skip
    report = report_to_dict(
        boundary_report(
            [_view("pydocs", quiet), _view("kjv", keeping)],
            client="c",
            home_endpoint="h:pydocs",
            coordinator="h:9",
        )
    )
    flows = {row["flow"]: row for row in report["flows"]}
    preferences = flows["anchor preferences"]
    assert preferences["path"].startswith("kjv ->") and "pydocs" not in preferences["path"]
    assert preferences["surprising"] and "scores" in preferences["never"]
    kept = flows["translated queries kept by a silo"]
    assert "kjv: up to 2000 for 900 s" in kept["content"] and "5% per signer" in kept["content"]
    assert "refits" in kept["content"] and "pydocs" not in kept["content"]
    assert "in memory only" in kept["never"] and kept["surprising"]
    kjv = next(row for row in report["parties"] if "kjv" in row["party"])
    assert "answers anchor preferences" in kjv["sees"]


def test_a_consortium_without_them_reports_neither_as_surprising() -> None:
    quiet = DisclosurePolicy((), False, ("*",), 50)
    report = boundary_report([_view("a", quiet)], client="c", home_endpoint="h:a", coordinator="x")
    flows = {row.columns[0]: row for row in report.flows}
    assert flows["anchor preferences"].columns[1].startswith("no silo")
    assert "no silo keeps" in flows["translated queries kept by a silo"].columns[2]
    assert not flows["anchor preferences"].surprising
    assert not flows["translated queries kept by a silo"].surprising


# --- the coordinator builds a pair's anchor set from both lists -----------------------------


class Answers:
    """Each silo's answer by endpoint (the real gateway is in tests/test_consortium_e2e.py)."""

    def __init__(self, positions: dict[str, list[int]]) -> None:
        self.positions = positions
        self.asked: list[tuple[str, PreferenceRequest]] = []

    async def prefer_anchors(
        self, endpoint: str, request: PreferenceRequest, *, expect: str, timeout: float | None
    ) -> list[int]:
        self.asked.append((endpoint, request))
        return self.positions[endpoint]


def _silo(name: str, fingerprint: str) -> SiloRecord:
    space = SpaceDescriptor(f"{name}@{fingerprint[:8]}", name, DIM, fingerprint)
    return SiloRecord(name, f"{name}:1", f"spiffe://t/silo/{name}", name, space, 10, 0.0)


def _build(
    tmp_path: Path, answers: Answers, count: int
) -> tuple[PreferredAnchors, list[TrainProgress]]:
    catalogue = AnchorCatalogue(tmp_path / "anchors")
    catalogue.build("pool", [f"public text {i}" for i in range(10)], source="test")
    pool = catalogue.get("pool", "v1")
    a, b = _silo("a", "1" * 16), _silo("b", "2" * 16)
    with ThreadPoolExecutor(1) as executor:
        chooser = PreferredAnchors(catalogue, cast(SiloGateway, answers), executor)

        async def run() -> list[TrainProgress]:
            return [step async for step in chooser.build(pool, a, b, count)]

        return chooser, asyncio.run(run())


def test_the_pair_trains_on_both_silos_choices_interleaved(tmp_path: Path) -> None:
    answers = Answers({"a:1": [3, 1, 4], "b:1": [1, 5, 9]})
    chooser, steps = _build(tmp_path, answers, 3)
    anchors = chooser.result()
    assert anchors.texts == ("public text 3", "public text 1", "public text 4")
    assert anchors.info.name.startswith("pool-pref-") and len(anchors.info.name) == 18
    assert anchors.info.source == "preferred:pool@v1:a+b:3"
    assert [endpoint for endpoint, _ in answers.asked] == ["a:1", "b:1"]
    assert all(request.count == 3 for _, request in answers.asked)
    assert anchors.info.name in steps[-1].message and "1 preferred by both" in steps[-1].message


def test_a_silo_answering_outside_the_pool_or_too_big_a_request_is_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(FailedPrecondition, match=r"silo b: .*outside the pool"):
        _build(tmp_path, Answers({"a:1": [1], "b:1": [10]}), 1)
    with pytest.raises(InvalidArgument, match="between 1 and the 10 texts"):
        _build(tmp_path, Answers({}), 11)
