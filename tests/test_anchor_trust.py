"""The coordinator does not take a silo's word for another silo's anchors (issue 11, finding 6).

Anchor vectors are kept per silo and checked like query vectors (finite, non-zero, unit norm);
an adapter is fitted on the source and target silos' own submissions only, refused below the
quality floor, and its id carries its weights' hash. Silos are reached through the recording
gateway double of tests/test_coordinator_service.py; state, training and signing are real.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from silobridge.coordinator.anchors.catalogue import AnchorCatalogue
from silobridge.coordinator.anchors.synthetic import random_word_strings
from silobridge.coordinator.config import load_coordinator_config
from silobridge.coordinator.server import open_coordinator
from silobridge.coordinator.service import CoordinatorService
from silobridge.core.errors import ConfigError, FailedPrecondition, InvalidArgument
from silobridge.core.listings import AdapterListing, AnchorVectors
from silobridge.core.spaces import FloatMatrix
from silobridge.embedding.embedders import Embedder, load_embedder
from silobridge.security.identity import PeerIdentity

from .test_coordinator_service import ADMIN, CONFIG, FakeGateway

ANCHORS = 300


def silo(name: str) -> PeerIdentity:
    return PeerIdentity(f"spiffe://t/silo/{name}", "t", "silo", name, name)


@pytest.fixture(scope="module")
def embedders() -> dict[str, Embedder]:
    # pydocs and web run the same model: one space fingerprint, two silos.
    return {
        "pydocs:1": load_embedder("static-64"),
        "kjv:1": load_embedder("minilm-l3-onnx"),
        "web:1": load_embedder("static-64"),
    }


def open_service(root: Path, embedders: dict[str, Embedder], extra: str = "") -> CoordinatorService:
    (root / "coordinator.toml").write_text(CONFIG.replace("[training]\n", f"[training]\n{extra}"))
    config = load_coordinator_config(root / "coordinator.toml")
    gateway = FakeGateway(embedders, {e: e.split(":")[0] for e in embedders})
    service = open_coordinator(config, gateway=gateway)
    # The gateway double embeds anchors from the coordinator's catalogue, as a silo fetches them.
    gateway.catalogue = AnchorCatalogue(config.state_dir / "anchors")
    gateway.catalogue.build(
        "public", random_word_strings(ANCHORS, 0), source=f"synthetic:{ANCHORS}:seed=0"
    )

    async def register() -> None:
        for endpoint in embedders:
            await service.register_silo(silo(endpoint.split(":")[0]), endpoint)

    asyncio.run(register())
    return service


@pytest.fixture
def service(tmp_path: Path, embedders: dict[str, Embedder]) -> Iterator[CoordinatorService]:
    opened = open_service(tmp_path, embedders)
    yield opened
    asyncio.run(opened.close())


def train(service: CoordinatorService) -> AdapterListing:
    source = service.state.silo("pydocs").space.space_id
    target = service.state.silo("kjv").space.space_id

    async def run() -> AdapterListing:
        adapter = None
        async for step in service.train_adapter(
            ADMIN, source_space=source, target_space=target, anchor_set="public"
        ):
            adapter = step.adapter or adapter
        assert adapter is not None
        return adapter

    return asyncio.run(run())


def fit_metrics(adapter: AdapterListing) -> dict[str, float]:
    return {name: value for name, value in adapter.metrics.items() if name != "train_s"}


def submit(service: CoordinatorService, name: str, vectors: FloatMatrix) -> int:
    info = service.anchors.catalogue.info("public")
    space = service.state.silo(name).space

    async def chunks() -> AsyncIterator[AnchorVectors]:
        yield AnchorVectors(info.name, info.version, space, 0, vectors)

    return asyncio.run(service.submit_anchor_embeddings(silo(name), chunks()))


def true_anchors(service: CoordinatorService, embedders: dict[str, Embedder]) -> FloatMatrix:
    return embedders["web:1"].embed(service.anchors.catalogue.get("public").texts)


@pytest.mark.parametrize(
    ("poison", "refusal"),
    [
        ("huge", "norm"),  # 3e38 in every value: finite float32, but no embedding
        ("zero", "zero vector"),
        ("unnormalised", "not 1"),
        ("nan", "non-finite"),
    ],
)
def test_poisoned_anchors_from_a_silo_sharing_the_fingerprint_are_refused_and_change_nothing(
    service: CoordinatorService,
    embedders: dict[str, Embedder],
    poison: str,
    refusal: str,
) -> None:
    before = train(service)  # pydocs -> kjv, on pydocs' and kjv's own vectors
    vectors = true_anchors(service, embedders)
    if poison == "huge":
        vectors = np.full_like(vectors, 3e38)
    elif poison == "zero":
        vectors[7] = 0.0
    elif poison == "unnormalised":
        vectors[3] *= 1.5
    else:
        vectors[0, 0] = np.nan
    with pytest.raises(InvalidArgument, match=refusal):
        submit(service, "web", vectors)
    after = train(service)
    assert after.adapter_id == before.adapter_id
    assert after.metrics["heldout_ndcg@10"] == before.metrics["heldout_ndcg@10"]


def test_one_silos_valid_looking_anchors_never_train_another_silos_adapter(
    service: CoordinatorService, embedders: dict[str, Embedder]
) -> None:
    before = train(service)
    # web (same model as pydocs) sends unit-norm noise: accepted as web's own, used for nobody else.
    noise = np.random.default_rng(1).normal(size=(ANCHORS, 64)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    assert submit(service, "web", noise) == ANCHORS
    after = train(service)
    assert after.adapter_id == before.adapter_id
    # The same fit, on pydocs' own vectors (only the time it took differs).
    assert fit_metrics(after) == fit_metrics(before)


def test_an_adapter_below_the_quality_floor_is_refused_with_the_metric_value_and_key(
    tmp_path: Path, embedders: dict[str, Embedder]
) -> None:
    # The toy static-64 -> minilm pair fits far below 0.5 on synthetic anchors.
    strict = open_service(tmp_path, embedders, extra="min_heldout_ndcg = 0.5\n")
    try:
        with pytest.raises(FailedPrecondition) as refused:
            train(strict)
        message = refused.value.message
        assert re.search(
            r"heldout_ndcg@10 is 0\.[0-4]\d\d, below the quality floor 0\.500", message
        )
        assert "[training] min_heldout_ndcg in coordinator.toml" in message
        assert "not signed" in message
        assert strict.state.adapters() == []  # nothing was signed or stored
        assert not any(strict.state.adapters_dir.iterdir())
    finally:
        asyncio.run(strict.close())


def test_the_default_floor_refuses_an_adapter_no_better_than_nothing(tmp_path: Path) -> None:
    (tmp_path / "coordinator.toml").write_text(CONFIG)
    assert load_coordinator_config(tmp_path / "coordinator.toml").training.min_heldout_ndcg > 0
    (tmp_path / "coordinator.toml").write_text(
        CONFIG.replace("[training]\n", "[training]\nmin_heldout_ndcg = 2.0\n")
    )
    with pytest.raises(ConfigError, match="min_heldout_ndcg must be between 0 and 1"):
        load_coordinator_config(tmp_path / "coordinator.toml")


def test_retraining_on_other_anchors_gives_a_new_adapter_id(
    service: CoordinatorService, embedders: dict[str, Embedder]
) -> None:
    first = train(service)
    # pydocs re-sends its anchors, slightly different (say, after a model patch): new weights.
    vectors = true_anchors(service, embedders)
    vectors += np.random.default_rng(3).normal(scale=0.02, size=vectors.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    submit(service, "pydocs", vectors)
    second = train(service)
    assert second.adapter_id != first.adapter_id
    # Queries now name the new id, so a silo that cached the old one fetches the new artifact.
    routed = service.search.planner.translator.route(
        service.state.silo("pydocs").space, service.state.silo("kjv")
    )
    assert routed.adapter_id == second.adapter_id
