"""A silo migrating to another model answers in more than one space (``also_serves``): routing,
staleness, what the coordinator keeps and shows about it, and reading older state files.

Real state, real signed adapters (fitted on synthetic anchor vectors), real translator; silos
are reached through a small test double of the gateway, since only Describe is exercised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from silobridge.adapters import FitConfig
from silobridge.client.cli import silo_message
from silobridge.coordinator.anchors.manifest import AnchorSetInfo
from silobridge.coordinator.config import CoordinatorPolicy
from silobridge.coordinator.registry import SiloRegistry
from silobridge.coordinator.search.calibration import Calibration, fit_calibration
from silobridge.coordinator.search.fanout import _silo_query
from silobridge.coordinator.search.planner import SearchPlanner
from silobridge.coordinator.search.translation import Translator, staleness
from silobridge.coordinator.state.records import AdapterRecord, SiloRecord
from silobridge.coordinator.state.schema import SCHEMA_VERSION
from silobridge.coordinator.state.store import STATE_FILE, CoordinatorState
from silobridge.coordinator.training.fit import train_adapter
from silobridge.core.errors import FailedPrecondition, NotFound, SiloBridgeError
from silobridge.core.hits import Hit
from silobridge.core.listings import AnchorSetRef, PreferenceRequest, SiloDescription, SiloListing
from silobridge.core.queries import FederatedQuery, SiloBatch, SiloQuery
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor
from silobridge.core.vectors import WireVector
from silobridge.security.identity import PeerIdentity

DIM = 8
# The querying side's space, and a silo moving from OLD to NEW (another model).
OTHER = SpaceDescriptor("other@aaaa0000", "other", DIM, "aaaa000000000000")
OLD = SpaceDescriptor("old@bbbb0000", "old-model", DIM, "bbbb000000000000")
NEW = SpaceDescriptor("new@cccc0000", "new-model", DIM, "cccc000000000000")
# OLD's model at another fingerprint: what an adapter trained before a change of OLD looks like.
OLD_CHANGED = dataclasses.replace(OLD, space_id="old@dddd0000", fingerprint="dddd000000000000")
ANCHORS = 64
SHA = "ab" * 32


def silo(
    space: SpaceDescriptor = OLD, also: Sequence[SpaceDescriptor] = (), name: str = "kjv"
) -> SiloRecord:
    return SiloRecord(
        name=name,
        endpoint=f"{name}:1",
        spiffe_id=f"spiffe://t/silo/{name}",
        org=name,
        space=space,
        document_count=10,
        registered_at=1_700_000_000.0,
        also_serves=tuple(also),
    )


@pytest.fixture
def state(tmp_path: Path) -> Iterator[CoordinatorState]:
    with CoordinatorState.open(tmp_path / "state") as opened:
        yield opened


KEY = Ed25519PrivateKey.generate()


def trained(
    state: CoordinatorState, source: SpaceDescriptor, target: SpaceDescriptor, created_at: float
) -> AdapterRecord:
    """A real signed adapter ``source`` -> ``target``, stored with ``created_at``."""
    rng = np.random.default_rng(7)
    source_vectors: FloatMatrix = rng.standard_normal((ANCHORS, DIM)).astype(np.float32)
    rotation = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]
    target_vectors: FloatMatrix = (source_vectors @ rotation).astype(np.float32)
    info = AnchorSetInfo(
        name="words",
        version="v1",
        sha256=SHA,
        count=ANCHORS,
        created_at="2026-11-26T03:00:00Z",
        source="test",
    )
    record = train_adapter(
        state,
        source=source,
        target=target,
        source_vectors=source_vectors,
        target_vectors=target_vectors,
        anchor_set=info,
        fit_config=FitConfig(kind="procrustes", seed=0),
        signing_key=KEY,
    )
    dated = dataclasses.replace(record, created_at=created_at)
    state.add_adapter(dated)
    return dated


def translator(state: CoordinatorState) -> Translator:
    return Translator(state, KEY.public_key())


# --- routing --------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [OLD, NEW], ids=["own-space", "also-serves"])
def test_a_query_in_any_space_the_silo_serves_goes_without_an_adapter(
    state: CoordinatorState, source: SpaceDescriptor
) -> None:
    # Before cut-over: the silo is registered in OLD and also answers in NEW itself.
    route = translator(state).route(source, silo(OLD, [NEW]))
    assert route.adapter is None and route.adapter_id == ""
    assert route.target == source


# --- calibration of answers in a space the silo serves itself ----------------------------------


def test_a_space_served_through_a_local_fit_is_calibrated_as_the_adapter_into_its_space(
    state: CoordinatorState,
) -> None:
    # The silo fits its own adapter from OTHER (it runs that model too) and lists OTHER, but it
    # never sent anchors in OTHER: its answers are calibrated as the coordinator's adapter's would
    # be, not taken raw (a raw cosine as a z-score loses every merge).
    record = trained(state, OTHER, OLD, created_at=1.0)
    route = translator(state).route(OTHER, silo(OLD, [OTHER]))
    assert route.adapter is None
    assert route.calibration == Calibration.from_metrics(record.metrics)
    assert route.calibration is not None and route.calibration.null_std > 0


def test_without_an_adapter_a_served_space_is_calibrated_as_the_silos_own_space(
    state: CoordinatorState,
) -> None:
    trained(state, OLD, NEW, created_at=1.0)  # any adapter that used the silo's OLD anchors
    vectors = np.random.default_rng(3).standard_normal((ANCHORS, DIM)).astype(np.float32)
    state.upsert_silo(silo(OLD, [OTHER]))
    state.store_anchor_embeddings("kjv", "words", "v1", OLD, vectors)
    route = translator(state).route(OTHER, silo(OLD, [OTHER]))
    assert route.adapter is None
    assert route.calibration == fit_calibration(vectors, vectors)


def test_a_served_space_with_nothing_to_calibrate_on_is_merged_raw(
    state: CoordinatorState,
) -> None:
    assert translator(state).route(OTHER, silo(OLD, [OTHER])).calibration is None


def test_without_also_serves_the_other_space_still_needs_an_adapter(
    state: CoordinatorState,
) -> None:
    with pytest.raises(NotFound, match=r"no adapter from new@cccc0000 to old@bbbb0000 \(silo"):
        translator(state).route(NEW, silo(OLD))


def test_an_adapter_into_the_space_the_silo_moved_from_is_current(
    state: CoordinatorState,
) -> None:
    # After cut-over: the silo's space is NEW, and it still answers in OLD; only OTHER -> OLD
    # was ever trained.
    record = trained(state, OTHER, OLD, created_at=1.0)
    after_cut_over = silo(NEW, [OLD])

    route = translator(state).route(OTHER, after_cut_over)

    assert route.adapter is not None and route.adapter_id == record.adapter_id
    assert route.target == OLD
    assert staleness(record, [after_cut_over]) == ""


def test_an_adapter_into_the_silos_own_space_is_preferred(state: CoordinatorState) -> None:
    into_new = trained(state, OTHER, NEW, created_at=1.0)
    trained(state, OTHER, OLD, created_at=2.0)  # newer, but into the space it also serves

    route = translator(state).route(OTHER, silo(NEW, [OLD]))

    assert route.adapter_id == into_new.adapter_id and route.target == NEW


def test_a_stale_adapter_into_the_own_space_gives_way_to_a_current_one(
    state: CoordinatorState,
) -> None:
    # OLD's model changed fingerprint; an adapter into NEW (which it also serves) is current.
    trained(state, OTHER, OLD_CHANGED, created_at=2.0)
    into_new = trained(state, OTHER, NEW, created_at=1.0)

    route = translator(state).route(OTHER, silo(OLD, [NEW]))

    assert route.adapter_id == into_new.adapter_id and route.target == NEW


def test_a_genuinely_stale_adapter_is_refused_with_both_fingerprints(
    state: CoordinatorState,
) -> None:
    record = trained(state, OTHER, OLD_CHANGED, created_at=1.0)
    migrating = silo(OLD, [NEW])

    with pytest.raises(FailedPrecondition) as caught:
        translator(state).route(OTHER, migrating)

    message = caught.value.message
    assert message.startswith(f"adapter {record.adapter_id} no longer matches: ")
    assert f"target fingerprint {OLD_CHANGED.fingerprint} (trained) vs" in message
    assert f"{OLD.fingerprint} (silo kjv now)" in message
    assert message.endswith("an admin must retrain it (silobridge train)")
    assert OLD.fingerprint in staleness(record, [migrating])


def test_no_adapter_names_every_space_the_silo_answers_in(state: CoordinatorState) -> None:
    with pytest.raises(NotFound) as caught:
        translator(state).route(OTHER, silo(NEW, [OLD]))
    assert "no adapter from other@aaaa0000 to new@cccc0000 or old@bbbb0000" in caught.value.message
    assert "silobridge train" in caught.value.message


# --- staleness ------------------------------------------------------------------------------


def test_staleness_counts_also_served_spaces_of_the_same_model() -> None:
    record = AdapterRecord(
        adapter_id="a",
        kind="procrustes",
        source=OTHER,
        target=OLD,
        anchor_set="words",
        anchor_set_version="v1",
        anchor_set_sha256=SHA,
        metrics={},
        created_at=1.0,
        path=Path("/nonexistent"),
    )
    # The silo moved to OLD's model at another fingerprint and still serves OLD: current.
    assert staleness(record, [silo(OLD_CHANGED, [OLD])]) == ""
    # Once it stops serving OLD, the adapter is stale, as before.
    reason = staleness(record, [silo(OLD_CHANGED)])
    assert reason == (
        f"target model old-model was trained at fingerprint {OLD.fingerprint} "
        f"but silo kjv now has fingerprint {OLD_CHANGED.fingerprint}"
    )


# --- planning and the query sent ------------------------------------------------------------


def test_a_space_a_silo_only_also_serves_is_a_known_source_space(
    state: CoordinatorState,
) -> None:
    state.upsert_silo(silo(OLD, [NEW]))
    planner = SearchPlanner(state, CoordinatorPolicy(), translator(state))
    assert planner.source_space(NEW.space_id) == NEW
    assert planner.source_space(OLD.space_id) == OLD
    with pytest.raises(NotFound, match="known spaces: new@cccc0000, old@bbbb0000"):
        planner.source_space("nope")


def test_an_unsigned_query_tells_the_silo_which_of_its_spaces_it_is_in(
    state: CoordinatorState,
) -> None:
    tr = translator(state)
    vector = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
    query = FederatedQuery(WireVector.of(vector), NEW.space_id, 3)
    migrating = silo(OLD, [NEW])
    assert _silo_query(tr.route(NEW, migrating), query, vector).source_space == NEW.space_id
    # Its own space is named too: a silo that cut over before re-registering reads "" as its
    # new primary space.
    assert _silo_query(tr.route(OLD, migrating), query, vector).source_space == OLD.space_id


# --- what the coordinator keeps -------------------------------------------------------------


def test_also_serves_is_stored_and_survives_a_restart(state: CoordinatorState) -> None:
    record = silo(NEW, [OLD])
    state.upsert_silo(record)
    state.upsert_silo(silo(OTHER, name="web"))
    state.close()
    with CoordinatorState.open(state.state_dir) as reopened:
        assert reopened.silo("kjv") == record
        assert reopened.silo("web").also_serves == ()
        # A re-registration replaces what the silo also serves.
        reopened.upsert_silo(silo(NEW))
        assert reopened.silo("kjv").also_serves == ()


def test_a_probe_updates_also_serves_only_while_the_registered_space_holds(
    state: CoordinatorState,
) -> None:
    state.upsert_silo(silo(OLD))
    assert state.update_also_serves("kjv", OLD, [NEW])
    assert state.silo("kjv").also_serves == (NEW,)
    # A probe that raced a re-registration in another space changes nothing.
    state.upsert_silo(silo(OTHER))
    assert not state.update_also_serves("kjv", OLD, [])
    assert state.silo("kjv") == silo(OTHER)


V1_SCHEMA = """
CREATE TABLE silos (
    name TEXT PRIMARY KEY, endpoint TEXT NOT NULL, spiffe_id TEXT NOT NULL, org TEXT NOT NULL,
    space TEXT NOT NULL, document_count INTEGER NOT NULL, registered_at REAL NOT NULL
);
CREATE TABLE anchor_embeddings (
    silo TEXT NOT NULL REFERENCES silos(name) ON DELETE CASCADE, anchor_set TEXT NOT NULL,
    version TEXT NOT NULL, fingerprint TEXT NOT NULL, space TEXT NOT NULL, dim INTEGER NOT NULL,
    count INTEGER NOT NULL, vectors BLOB NOT NULL, stored_at REAL NOT NULL,
    PRIMARY KEY (silo, anchor_set, version)
);
CREATE INDEX anchor_embeddings_by_space
    ON anchor_embeddings (anchor_set, version, fingerprint, stored_at);
CREATE TABLE adapters (
    adapter_id TEXT PRIMARY KEY, kind TEXT NOT NULL, source TEXT NOT NULL, target TEXT NOT NULL,
    anchor_set TEXT NOT NULL, anchor_set_version TEXT NOT NULL, anchor_set_sha256 TEXT NOT NULL,
    metrics TEXT NOT NULL, created_at REAL NOT NULL, path TEXT NOT NULL
);
PRAGMA user_version = 1;
"""


def test_a_version_1_state_file_is_upgraded_in_place_and_keeps_its_silos(
    tmp_path: Path,
) -> None:
    (tmp_path / "adapters").mkdir()
    conn = sqlite3.connect(tmp_path / STATE_FILE)
    conn.executescript(V1_SCHEMA)
    conn.execute(
        "INSERT INTO silos VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            "kjv",
            "kjv:1",
            "spiffe://t/silo/kjv",
            "kjv",
            '{"dimension":8,"fingerprint":"bbbb000000000000","metric":"cosine",'
            '"model_id":"old-model","space_id":"old@bbbb0000"}',
            10,
            1_700_000_000.0,
        ),
    )
    conn.execute(
        "INSERT INTO anchor_embeddings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ("kjv", "words", "v1", OLD.fingerprint, "{}", 1, 1, b"\0\0\0\0", 1.0),
    )
    conn.commit()
    conn.close()

    with CoordinatorState.open(tmp_path) as opened:
        assert opened.silos() == [silo(OLD)]
        assert opened.anchor_embeddings("words", "v1", OLD.fingerprint, silo="kjv") is not None
        assert opened.update_also_serves("kjv", OLD, [NEW])
    with CoordinatorState.open(tmp_path) as reopened:
        assert reopened.silo("kjv").also_serves == (NEW,)
    check = sqlite3.connect(tmp_path / STATE_FILE)
    try:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        check.close()


def test_a_malformed_also_serves_column_is_a_corrupt_state_file(
    state: CoordinatorState,
) -> None:
    state.upsert_silo(silo(OLD))
    state.close()
    conn = sqlite3.connect(state.state_dir / STATE_FILE)
    conn.execute('UPDATE silos SET also_serves = \'{"not": "a list"}\'')
    conn.commit()
    conn.close()
    with (
        CoordinatorState.open(state.state_dir) as reopened,
        pytest.raises(FailedPrecondition, match="malformed space list"),
    ):
        reopened.silos()


# --- registration, probes and listings ------------------------------------------------------


class DescribeOnly:
    """A gateway whose silos answer Describe with ``descriptions[endpoint]``."""

    def __init__(self) -> None:
        self.descriptions: dict[str, SiloDescription] = {}

    async def describe(self, endpoint: str, *, expect: str = "", timeout: float) -> SiloDescription:
        return self.descriptions[endpoint]

    async def search(
        self, endpoint: str, query: SiloQuery, *, expect: str = "", timeout: float
    ) -> list[Hit]:
        raise AssertionError("not searched here")

    async def search_batch(
        self, endpoint: str, batch: SiloBatch, *, expect: str = "", timeout: float
    ) -> list[list[Hit]]:
        raise AssertionError("not searched here")

    async def search_many(
        self, endpoint: str, queries: list[SiloQuery], *, expect: str = "", timeout: float
    ) -> list[list[Hit] | SiloBridgeError]:
        raise AssertionError("not searched here")

    async def embed_anchors(
        self,
        endpoint: str,
        anchors: AnchorSetRef,
        *,
        expect: str = "",
        timeout: float | None,
    ) -> FloatMatrix:
        raise AssertionError("not asked for anchors here")

    async def prefer_anchors(
        self,
        endpoint: str,
        request: PreferenceRequest,
        *,
        expect: str = "",
        timeout: float | None,
    ) -> list[int]:
        raise AssertionError("not asked for anchor preferences here")

    async def close(self) -> None:
        return None


KJV = PeerIdentity("spiffe://t/silo/kjv", "t", "silo", "kjv", "kjv")


def test_registration_and_probes_follow_what_the_silo_also_serves(
    state: CoordinatorState,
) -> None:
    gateway = DescribeOnly()
    gateway.descriptions["kjv:1"] = SiloDescription("kjv", OLD, 10, 50, also_serves=(NEW,))

    async def run() -> list[list[SiloListing]]:
        with ThreadPoolExecutor(2) as pool:
            # Every listing probes afresh: the test changes what the silo says between them.
            registry = SiloRegistry(state, gateway, pool, probe_cache_seconds=0)
            record = await registry.register(KJV, "kjv:1")
            assert record.also_serves == (NEW,)
            listings = [await registry.list_silos()]
            # Cut-over without re-registering: NEW is its space now, OLD the one it also serves.
            gateway.descriptions["kjv:1"] = SiloDescription("kjv", NEW, 10, 50, also_serves=(OLD,))
            listings.append(await registry.list_silos())
            # Finished and rolled off OLD entirely: the silo must re-register.
            gateway.descriptions["kjv:1"] = SiloDescription("kjv", NEW, 10, 50)
            listings.append(await registry.list_silos())
            return listings

    before, after_cut_over, gone = asyncio.run(run())

    assert before[0].also_serves == (NEW,) and before[0].message == ""
    assert silo_message(before[0]) == "also serves: new@cccc0000"
    # The record stays in the registered space; what else it serves is everything else.
    assert after_cut_over[0].space == OLD and after_cut_over[0].also_serves == (NEW,)
    assert "still answers in the registered space" in after_cut_over[0].message
    assert gone[0].message.endswith("the silo must re-register")
    assert state.silo("kjv").also_serves == (NEW,)  # unchanged once OLD is no longer served


def test_the_silos_table_message_shows_also_serves() -> None:
    listing = SiloListing("kjv", "kjv:1", "kjv", OLD, True, 10, "", 0, also_serves=(NEW, OTHER))
    assert silo_message(listing) == "also serves: new@cccc0000, other@aaaa0000"
    assert silo_message(dataclasses.replace(listing, message="slow")) == (
        "slow; also serves: new@cccc0000, other@aaaa0000"
    )
    assert silo_message(dataclasses.replace(listing, also_serves=())) == ""
