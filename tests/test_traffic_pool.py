"""The opt-in traffic pool (``silo_agent/receiving/traffic``): bounded in size, per signer and in
time, and used as the hubness reference only once it holds enough queries."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from silobridge.core.documents import Document
from silobridge.core.errors import ConfigError
from silobridge.core.spaces import SpaceDescriptor
from silobridge.silo_agent.config import load_silo_config
from silobridge.silo_agent.receiving.hubness_routes import TRAFFIC, HubnessCorrections
from silobridge.silo_agent.receiving.settings import ReceivingSettings
from silobridge.silo_agent.receiving.traffic import TrafficPool
from silobridge.silo_agent.store.data import SiloData

DIM = 8


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@given(
    capacity=st.integers(1, 50),
    share=st.floats(0.01, 1.0),
    signers=st.lists(st.sampled_from("abcde"), max_size=200),
)
def test_the_pool_never_exceeds_its_size_nor_a_signers_share(
    capacity: int, share: float, signers: list[str]
) -> None:
    pool = TrafficPool(capacity, share, lifetime_s=60.0, clock=Clock())
    for signer in signers:
        pool.add(signer, np.ones(DIM, dtype=np.float32))
        assert len(pool) <= capacity
        assert all(count <= pool.per_signer for count in pool._per_signer.values())
    assert len(pool) == sum(pool._per_signer.values())


def test_one_signer_cannot_fill_the_pool_and_entries_expire() -> None:
    clock = Clock()
    pool = TrafficPool(100, 0.05, lifetime_s=10.0, clock=clock)
    kept = [pool.add("mallory", np.full(DIM, i, dtype=np.float32)) for i in range(50)]
    assert sum(kept) == 5 and len(pool) == 5
    assert pool.add("alice", np.zeros(DIM, dtype=np.float32))
    clock.now = 11.0
    assert len(pool) == 0  # every entry outlived its lifetime
    assert pool.add("mallory", np.zeros(DIM, dtype=np.float32))  # its share freed again


def test_the_pool_becomes_the_reference_once_it_holds_enough(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    space = SpaceDescriptor("s@00000000", "s", DIM, "0" * 16)
    data = SiloData.open(tmp_path / "data", space)
    try:
        data.upsert([Document(f"d{i}", f"text {i}") for i in range(200)], vectors)
        data.rebuild_index()
        settings = ReceivingSettings(traffic_pool=100, traffic_max_share=0.5, traffic_min=20)
        corrections = HubnessCorrections(settings, data)
        anchors = vectors[:50]
        first = corrections.get("adapter-1", "src", anchors, data.primary)
        assert first is not None and first.label != TRAFFIC
        # Every document's penalty is computed in the background, keyed as searches see them.
        for warmer in [t for t in threading.enumerate() if t.name == "hubness-warm"]:
            warmer.join(timeout=30)  # (it may have finished already)
        keys = [key for key, _ in data.primary.search(vectors[0], 200)]
        assert set(keys) <= set(first._penalties)
        for i in range(30):
            corrections.remember("src", space.space_id, f"signer-{i % 3}", vectors[100 + i])
        traffic = corrections.get("adapter-1", "src", anchors, data.primary)
        assert traffic is not None and traffic.label == TRAFFIC
        assert traffic.reference.shape == (30, DIM)
        # Another source space has no pool: its anchors stay the reference.
        other = corrections.get("adapter-2", "other", anchors, data.primary)
        assert other is not None and other.label != TRAFFIC
    finally:
        data.close()


def test_the_pool_is_off_by_default_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "silo.toml"
    base = '[silo]\nname = "kjv"\nmodel = "minilm-l6"\n[server]\ninsecure = true\n'
    path.write_text(base)
    assert load_silo_config(path).receiving.traffic_pool == 0
    for bad in ("traffic_pool = -1", "traffic_max_share = 0.0", "traffic_lifetime_s = 0"):
        path.write_text(base + "[receiving]\n" + bad + "\n")
        with pytest.raises(ConfigError, match="traffic"):
            load_silo_config(path)
