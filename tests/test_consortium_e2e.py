"""The whole system as users run it: a coordinator and three silos with different real models,
each a separate `silobridge` process over mutual TLS on loopback, queried through the client.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from localnet import ClientSpec, LocalConsortium, SiloSpec

from silobridge.adapters.artifact import load_adapter
from silobridge.adapters.hubness import REFERENCE_TENSOR, hubness
from silobridge.client.api import FederatedClient
from silobridge.client.config import load_client_config
from silobridge.coordinator.anchors.catalogue import AnchorCatalogue
from silobridge.coordinator.config import load_coordinator_config
from silobridge.core.errors import FailedPrecondition, PermissionDenied
from silobridge.core.federation import FederatedAnswer
from silobridge.core.listings import SiloListing, TrainProgress
from silobridge.core.vectors import FloatVector
from silobridge.evaluation.corpus import load_records
from silobridge.silo_agent.config import load_silo_config

pytestmark = pytest.mark.integration

QUERY_COUNT = 100
ANCHORS = 4000
POOL = 2000  # public texts the silos rank with train --prefer
PREFERRED = 800


def _write_jsonl(path: Path, records: list[tuple[str, str, dict[str, str]]]) -> Path:
    with path.open("w") as handle:
        for doc_id, text, metadata in records:
            handle.write(json.dumps({"id": doc_id, "text": text, "metadata": metadata}) + "\n")
    return path


@dataclass
class Net:
    consortium: LocalConsortium
    specs: dict[str, SiloSpec]
    queries: list[tuple[str, str]]  # (WEB text, expected KJV id)
    source_space: str
    vectors: dict[str, FloatVector]  # alice's vectors of a few queries, embedded up front


def _query_policy(consortium: str) -> dict[str, list[str]]:
    return {
        "*": ["org:pyorg/client", "org:bible/client"],
        # Only the bible organization may query the web silo: alice (pyorg) gets it "denied".
        "web": ["org:bible/client"],
    }


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("consortium")
    corpora = root / "corpora"
    corpora.mkdir()
    kjv = load_records("kjv")
    web = load_records("web")
    kept = range(0, len(kjv), 10)
    kjv_file = _write_jsonl(
        corpora / "kjv.jsonl", [(kjv[i].id, kjv[i].text, dict(kjv[i].metadata)) for i in kept]
    )
    # The web silo holds other verses than the queries' (offset 5), so it cannot answer them.
    web_file = _write_jsonl(
        corpora / "web.jsonl",
        [(web[i].id, web[i].text, dict(web[i].metadata)) for i in range(5, len(web), 10)],
    )
    docs = load_records("pydoc_anchors", limit=300)
    docs_file = _write_jsonl(
        corpora / "pydocs.jsonl", [(d.id, d.text, dict(d.metadata)) for d in docs]
    )
    queries = [(web[i].text, kjv[i].id) for i in list(kept)[:: len(kept) // QUERY_COUNT]]
    queries = queries[:QUERY_COUNT]
    specs = {
        "kjv": SiloSpec(
            "kjv",
            "bible",
            "minilm-l3-onnx",
            kjv_file,
            ("book",),
            True,
            ("org:bible/client",),
            anchor_preferences=True,
        ),
        "pydocs": SiloSpec(
            "pydocs", "pyorg", "minilm-l6", docs_file, ("source",), anchor_preferences=True
        ),
        # web also runs kjv's model: it fits its own adapter from bob's space (local fit).
        "web": SiloSpec(
            "web", "openbible", "static-64", web_file, ("book",), local_models=("minilm-l3-onnx",)
        ),
    }
    clients = [
        ClientSpec("alice", "pyorg", "pydocs"),
        ClientSpec("bob", "bible", "kjv"),
        ClientSpec("mallory", "elsewhere", "pydocs"),
    ]
    lines: list[str] = []
    consortium = LocalConsortium(
        root, list(specs.values()), clients, query_policy=_query_policy("demo"), say=lines.append
    )
    with consortium:
        consortium.provision()
        for spec in specs.values():
            consortium.ingest(spec)
        consortium.start_coordinator()
        for spec in specs.values():
            consortium.start_silo(spec)
        consortium.write_client_configs()
        admin = str(consortium.client_config("admin"))
        consortium.run("anchors", "build", "--config", str(consortium.coordinator_config),
                       "--name", "public", "--synthetic", str(ANCHORS))  # fmt: skip
        # The web silo pushes its anchor vectors itself; the others are asked when training.
        consortium.run("silo", "push-anchors", "--config", str(consortium.silo_config("web")),
                       "--anchor-set", "public")  # fmt: skip
        silos = json.loads(consortium.run("silos", "--config", admin, "--json", capture=True))
        space = {s["silo"]: s["space"]["space_id"] for s in silos}
        for target, kind in (("kjv", "auto"), ("web", "affine")):
            pair = ("--source", space["pydocs"], "--target", space[target])
            consortium.run("train", "--config", admin, *pair, "--anchor-set", "public",
                           "--kind", kind)  # fmt: skip
        texts = [text for text, _ in queries[:4]]
        vectors = asyncio.run(_embed_as(consortium.client_config("alice"), texts))
        yield Net(
            consortium, specs, queries, space["pydocs"], dict(zip(texts, vectors, strict=True))
        )
        print("\n".join(lines[-40:]))


async def _embed_as(config: Path, texts: list[str]) -> list[FloatVector]:
    async with FederatedClient(load_client_config(config)) as client:
        matrix, _space = await client.embed(texts)
        return list(matrix)


def _client(net: Net, name: str, timeout: float | None = None) -> FederatedClient:
    config = load_client_config(net.consortium.client_config(name))
    if timeout is not None:
        config = type(config)(**{**vars(config), "timeout_seconds": timeout})
    return FederatedClient(config)


def _states(result: FederatedAnswer) -> dict[str, str]:
    return {s.silo: s.state for s in result.statuses}


def test_federated_queries_find_the_kjv_verse(net: Net) -> None:
    async def run() -> tuple[int, int]:
        async with _client(net, "alice") as alice:
            texts = [text for text, _ in net.queries]
            vectors, space = await alice.embed(texts[:64])
            rest, _ = await alice.embed(texts[64:])
            found_all = found_kjv = 0
            for (_text, expected), vector in zip(net.queries, [*vectors, *rest], strict=True):
                merged = await alice.search_vector(vector, space.space_id, k=10)
                assert _states(merged) == {"kjv": "ok", "pydocs": "ok", "web": "denied"}
                found_all += any(h.silo == "kjv" and h.doc_id == expected for h in merged.hits)
                only = await alice.search_vector(vector, space.space_id, k=10, silos=["kjv"])
                found_kjv += any(h.doc_id == expected for h in only.hits)
            return found_all, found_kjv

    found_all, found_kjv = asyncio.run(run())
    print(
        f"\nWEB→KJV through the coordinator (minilm-l6 → minilm-l3-onnx, {ANCHORS} synthetic "
        f"public anchors): expected verse in the merged top 10 for {found_all}/{QUERY_COUNT} "
        f"queries over all silos, {found_kjv}/{QUERY_COUNT} with --silos kjv"
    )
    assert found_all >= 0.8 * QUERY_COUNT
    assert found_kjv >= found_all


def test_query_cli_prints_hits_and_statuses(net: Net) -> None:
    text, expected = net.queries[0]
    out = net.consortium.run(
        "query", "--config", str(net.consortium.client_config("alice")), "--json", text,
        capture=True,
    )  # fmt: skip
    result = json.loads(out)
    assert {s["silo"]: s["state"] for s in result["statuses"]} == {
        "kjv": "ok",
        "pydocs": "ok",
        "web": "denied",
    }
    assert any(h["doc_id"] == expected for h in result["hits"])
    kjv_hits = [h for h in result["hits"] if h["silo"] == "kjv"]
    # Only disclosed fields leave a silo: the KJV silo discloses the book and nothing else.
    assert kjv_hits and all(set(h["fields"]) <= {"book"} for h in kjv_hits)


def test_the_receiving_silo_corrects_the_hubness_of_translated_queries(net: Net) -> None:
    """kjv answers alice's translated queries re-scored against the hubness reference the
    coordinator signed into the adapter artifact, and says so in its audit log."""
    config = load_silo_config(net.consortium.silo_config("kjv"))

    async def ask() -> list[list[str]]:
        async with _client(net, "alice") as alice:
            return [
                [h.doc_id for h in (await alice.search_vector(v, net.source_space, k=10,
                                                              silos=["kjv"])).hits]
                for v in net.vectors.values()
            ]  # fmt: skip

    answers = asyncio.run(ask())
    [artifact] = (config.data_dir / "adapters").iterdir()  # the one the silo verified and uses
    loaded = load_adapter(artifact)
    reference = loaded.receiving[REFERENCE_TENSOR]
    assert reference.shape[1] == loaded.adapter.target_dim
    store = sqlite3.connect(f"file:{config.data_dir / 'docstore.sqlite'}?mode=ro", uri=True)
    with closing(store):
        for vector, ids in zip(net.vectors.values(), answers, strict=True):
            assert ids, "kjv answered nothing"
            marks = ",".join("?" * len(ids))
            rows = dict(store.execute(
                f"SELECT doc_id, vector FROM documents WHERE doc_id IN ({marks})", ids
            ).fetchall())  # fmt: skip
            docs = np.stack([np.frombuffer(rows[i], dtype="<f4") for i in ids])
            query = loaded.adapter.apply_one(np.asarray(vector, dtype=np.float32))
            corrected = docs @ query - 0.5 * hubness(docs, reference)
            # The silo's order is the corrected one (ties aside), not necessarily the cosine's.
            assert np.all(np.diff(corrected) <= 1e-4), (ids, corrected)
    lines = [json.loads(line) for line in (config.source.parent / "audit" / "audit.log")
             .read_text().splitlines()]  # fmt: skip
    searches = [line for line in lines if line.get("rpc") == "Search" and line.get("via")]
    assert searches and all(line.get("receiving") == "hubness" for line in searches[-4:])


def test_a_silo_holding_the_querying_model_fits_its_own_adapter(net: Net) -> None:
    """No coordinator adapter maps bob's space (kjv's model) into web's; web runs that model
    too, fits an adapter on its own documents, lists the space as one it serves, and answers
    bob's queries through it. Its own verses are found; nothing was trained for it."""
    consortium = net.consortium
    bob = str(consortium.client_config("bob"))
    deadline = time.monotonic() + 240
    while True:
        silos = json.loads(consortium.run("silos", "--config", bob, "--json", capture=True))
        listed = {s["silo"]: s for s in silos}
        kjv_space = listed["kjv"]["space"]["space_id"]
        if kjv_space in [a["space_id"] for a in listed["web"].get("also_serves", [])]:
            break
        assert time.monotonic() < deadline, f"web never listed {kjv_space}: {listed['web']}"
        time.sleep(2)
    config = load_silo_config(consortium.silo_config("web"))
    assert (config.data_dir / "local-fit").is_dir()
    web = load_records("web")
    probes = [web[i] for i in range(5, len(web), 10)][::311][:8]  # verses web itself holds

    async def ask(silos: list[str]) -> list[tuple[dict[str, str], list[str]]]:
        async with _client(net, "bob") as client:
            out = []
            for record in probes:
                answer = await client.query(record.text, k=10, silos=silos)
                out.append((_states(answer), [f"{h.silo}/{h.doc_id}" for h in answer.hits]))
            return out

    answers = asyncio.run(ask(["web"]))
    assert all(states == {"web": "ok"} for states, _ in answers), answers
    found = sum(
        f"web/{record.id}" in ids for record, (_s, ids) in zip(probes, answers, strict=True)
    )
    assert found >= 6, (found, answers)
    # Merged with kjv's native answers, web's are calibrated too (not raw cosines taken as
    # z-scores, which lost every merge): its own verses still reach the merged top 10.
    merged = asyncio.run(ask(["web", "kjv"]))
    assert all(states == {"web": "ok", "kjv": "ok"} for states, _ in merged), merged
    kept = sum(f"web/{record.id}" in ids for record, (_s, ids) in zip(probes, merged, strict=True))
    assert kept >= 5, (kept, merged)
    lines = [json.loads(line) for line in (config.source.parent / "audit" / "audit.log")
             .read_text().splitlines()]  # fmt: skip
    served = [line for line in lines if line.get("rpc") == "Search" and line.get("via")]
    assert served and served[-1]["source_space"] == kjv_space
    assert served[-1]["receiving"] == "local-fit+hubness"


def test_caller_allowed_no_silo_is_refused_and_non_admin_cannot_train(net: Net) -> None:
    async def run() -> None:
        async with _client(net, "mallory") as mallory, _client(net, "alice") as alice:
            vectors, space = await alice.embed(["The Lord is my shepherd"])
            with pytest.raises(PermissionDenied, match="coordinator at") as refused:
                await mallory.search_vector(vectors[0], space.space_id, k=5)
            assert refused.value.status_name == "PERMISSION_DENIED"
            with pytest.raises(PermissionDenied, match="coordinator at") as train:
                async for _ in alice.train(space.space_id, space.space_id, "public"):
                    pass
            assert train.value.status_name == "PERMISSION_DENIED"

    asyncio.run(run())


def test_an_admin_trains_on_the_pool_texts_both_silos_prefer(net: Net) -> None:
    """kjv and pydocs answer anchor preferences; web does not, so a run naming it is refused."""
    consortium = net.consortium
    consortium.run("anchors", "build", "--config", str(consortium.coordinator_config),
                   "--name", "pool", "--synthetic", str(POOL), "--generator", "mix")  # fmt: skip

    async def listed() -> list[SiloListing]:
        async with _client(net, "admin") as client:
            return await client.list_silos()

    silos = asyncio.run(listed())
    space = {s.silo: s.space.space_id for s in silos if s.space is not None}
    # Each silo's own policy says whether it answers (ListSilos, and so the boundary report).
    policies = {s.silo: s.policy.anchor_preferences for s in silos if s.policy is not None}
    assert policies == {"kjv": True, "pydocs": True, "web": False}

    async def train(source: str, target: str) -> list[TrainProgress]:
        async with _client(net, "admin") as client:
            steps = client.train(space[source], space[target], "pool", kind="procrustes",
                                 prefer=PREFERRED)  # fmt: skip
            return [step async for step in steps]

    # The reverse pair of alice's: no query of the other tests is routed through this adapter.
    steps = asyncio.run(train("kjv", "pydocs"))
    adapter = steps[-1].adapter
    assert adapter is not None and adapter.anchor_set.startswith("pool-pref-")
    stages = [step.stage for step in steps]
    assert stages.count("prefer anchors") == 3 and stages.index("prefer anchors") == 0
    assert any(adapter.anchor_set in step.message for step in steps if step.stage != "done")
    state_dir = load_coordinator_config(consortium.coordinator_config).state_dir
    derived = AnchorCatalogue(state_dir / "anchors").get(adapter.anchor_set, adapter.version)
    assert derived.info.count == PREFERRED == len(set(derived.texts))
    assert derived.info.source == f"preferred:pool@v1:kjv+pydocs:{PREFERRED}"
    pool = AnchorCatalogue(state_dir / "anchors").get("pool", "v1")
    assert set(derived.texts) <= set(pool.texts)
    # Both silos embedded the derived set from the pool vectors they kept: nothing twice.
    for name in ("kjv", "pydocs"):
        audit = load_silo_config(consortium.silo_config(name)).audit
        assert audit is not None
        lines = [json.loads(line) for line in audit.log.read_text().splitlines()]
        served = [line for line in lines if line.get("rpc") == "EmbedAnchors"
                  and line.get("anchor_set") == adapter.anchor_set]  # fmt: skip
        assert served and served[-1]["reused"] == PREFERRED
    with pytest.raises(FailedPrecondition, match="anchor_preferences"):
        asyncio.run(train("web", "kjv"))


def test_two_stage_reranking_needs_the_silos_consent(net: Net) -> None:
    async def run() -> FederatedAnswer:
        async with _client(net, "alice") as alice:
            return await alice.query(net.queries[1][0], k=5, silos=["kjv", "pydocs"], rerank=True)

    result = asyncio.run(run())
    # kjv accepts query text and re-ranks; pydocs' policy does not, so it refuses the call.
    assert _states(result) == {"kjv": "ok", "pydocs": "denied"}
    assert result.hits[0].doc_id == net.queries[1][1]


# Named, not "every silo": listing them would probe the stopped silo too, and that probe's own
# timeout is not what these tests measure.
ALL_SILOS = ["kjv", "pydocs", "web"]


def _ask_alice(net: Net, text: str, timeout: float = 3.0) -> tuple[FederatedAnswer, float]:
    async def ask() -> tuple[FederatedAnswer, float]:
        async with _client(net, "alice", timeout=timeout) as alice:
            started = time.monotonic()
            result = await alice.search_vector(
                net.vectors[text], net.source_space, k=5, silos=ALL_SILOS
            )
            return result, time.monotonic() - started

    return asyncio.run(ask())


def test_slow_silo_times_out_and_dead_silo_is_unavailable(net: Net) -> None:
    consortium = net.consortium
    text = net.queries[2][0]
    # A silo that stops answering (SIGSTOP: the socket accepts, nothing replies) times out.
    kjv = consortium.procs["kjv"]
    kjv.popen.send_signal(signal.SIGSTOP)
    try:
        result, elapsed = _ask_alice(net, text)
    finally:
        kjv.popen.send_signal(signal.SIGCONT)
    assert _states(result) == {"kjv": "timeout", "pydocs": "ok", "web": "denied"}
    assert elapsed < 3.0
    assert result.hits and {h.silo for h in result.hits} == {"pydocs"}

    # A silo killed outright is "unavailable"; the others still answer within the deadline.
    consortium.procs["pydocs"].stop(signal.SIGKILL)
    result, elapsed = _ask_alice(net, text)
    assert _states(result) == {"kjv": "ok", "pydocs": "unavailable", "web": "denied"}
    assert elapsed < 3.0
    assert any(h.silo == "kjv" and h.doc_id == net.queries[2][1] for h in result.hits)


def test_restarted_coordinator_keeps_silos_and_adapters(net: Net) -> None:
    consortium = net.consortium
    consortium.procs["coordinator"].stop()
    consortium.start_coordinator()  # a new port: rewrite the client configs
    consortium.write_client_configs()
    admin = str(consortium.client_config("admin"))
    silos = json.loads(consortium.run("silos", "--config", admin, "--json", capture=True))
    assert {s["silo"] for s in silos} == {"kjv", "pydocs", "web"}
    health = {s["silo"]: s["healthy"] for s in silos}
    assert health == {"kjv": True, "pydocs": False, "web": True}  # pydocs was killed above
    adapters = json.loads(consortium.run("adapters", "--config", admin, "--json", capture=True))
    # Alice's two pairs, and the one trained on preferred anchors.
    assert len(adapters) == 3 and not any(a["stale"] for a in adapters)

    text, expected = net.queries[3]
    result, _elapsed = _ask_alice(net, text, timeout=10.0)
    assert _states(result) == {"kjv": "ok", "pydocs": "unavailable", "web": "denied"}
    assert any(h.silo == "kjv" and h.doc_id == expected for h in result.hits)


def test_a_silo_that_cut_over_to_another_model_still_answers_adapter_routed_queries(
    net: Net,
) -> None:
    """Alice's minilm-l6 queries reach kjv through the coordinator's adapter into kjv's old
    space; after kjv cuts over to static-64 they are still answered, from its old generation."""
    consortium = net.consortium
    bob = str(consortium.client_config("bob"))  # an admin of kjv (org bible)

    def migrate(*args: str) -> dict[str, object]:
        shown = consortium.run("silo", "migrate", *args, "--client", bob, "--json", capture=True)
        body: dict[str, object] = json.loads(shown)
        return body

    text, expected = net.queries[2]  # one of the queries embedded up front
    before, _ = _ask_alice(net, text, timeout=10.0)
    kjv_before = [h.doc_id for h in before.hits if h.silo == "kjv"]
    assert _states(before)["kjv"] == "ok" and expected in kjv_before
    migrate("start", "--to", "static-64", "--cpu-share", "1")
    deadline = time.monotonic() + 120
    while migrate("status")["state"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert migrate("cutover")["state"] == "cut_over"
    try:
        after, _ = _ask_alice(net, text, timeout=10.0)
        assert _states(after)["kjv"] == "ok"
        assert [h.doc_id for h in after.hits if h.silo == "kjv"] == kjv_before
    finally:
        assert migrate("rollback")["state"] == "none"
    again, _ = _ask_alice(net, text, timeout=10.0)
    assert [h.doc_id for h in again.hits if h.silo == "kjv"] == kjv_before
