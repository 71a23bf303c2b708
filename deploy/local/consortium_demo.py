"""`make demo`: a three-organization consortium on loopback, end to end, on real models and text.

Organizations and what each runs (every party a separate process, every link mutual TLS):
  bible     silo "kjv"    King James verses (31,095)        minilm-l3-onnx
  pyorg     silo "pydocs" Python documentation paragraphs   minilm-l6        client "alice"
  openbible silo "web"    World English Bible verses        static-64
  consortium coordinator "hub"; client "admin" (trains adapters); client "bob" of bible
Alice asks modern-English questions: her own silo embeds the text (it never leaves pyorg), the
coordinator translates the vector into each silo's space with adapters trained on public anchors,
and merges calibrated hits. Then a retention table for 500 labelled WEB->KJV queries is measured
on the live system, naming the receiving-side steps the KJV silo applied (its audit log says:
hubness correction by default). Then the KJV silo, restarted with alice's model as a local model,
fits its own adapter on its own verses (local fit) and the table is measured again. Re-running
reuses the CA, the indexes, the anchor set, the adapters and the local fit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np
from localnet import ClientSpec, LocalConsortium, SiloSpec, say, step

from silobridge.client.api import FederatedClient
from silobridge.client.config import load_client_config
from silobridge.core.federation import FederatedAnswer
from silobridge.core.vectors import FloatVector
from silobridge.evaluation.corpus import demo_data_dir, load_records
from silobridge.rpc.silo_client import SiloClient

# The demo corpus is repository data; the processes the demo starts inherit where it is.
os.environ.setdefault(
    "SILOBRIDGE_DEMO_DATA", str(Path(__file__).resolve().parents[2] / "data" / "demo")
)

QUESTIONS = (
    "Yahweh is my shepherd; I shall lack nothing.",
    "God so loved the world that he gave his only born Son",
    "Don't be anxious about tomorrow",
)
ANCHOR_SET = "public"
ANCHOR_COUNT = 16_000
# The best generator measured at equal count (BENCHMARKS.md, "anchor generators").
ANCHOR_GENERATOR = "mix"
EVAL_QUERIES = 500
PYDOCS = 5_000
CONCURRENCY = 8
LATENCY_QUERIES = 200
# How long the kjv silo may take to fit its own adapter from alice's model (embedding 4,096 of
# its verses with minilm-l6 on two cores).
LOCAL_FIT_WAIT_S = 600
# Other queries kjv answers before the traffic table, and how many it keeps.
TRAFFIC = 2_000
TRAFFIC_POOL = 4_096
# How long the refinement's background fit on that pool may take.
REFINE_WAIT_S = 120


def prepare_corpora(root: Path) -> dict[str, Path]:
    corpora = root / "corpora"
    corpora.mkdir(parents=True, exist_ok=True)
    docs = corpora / "pydocs.jsonl"
    if not docs.exists():
        with docs.open("w") as handle:
            for record in load_records("pydoc_anchors", limit=PYDOCS):
                row = {"id": record.id, "text": record.text, "metadata": dict(record.metadata)}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    data = demo_data_dir()
    return {"kjv": data / "kjv.jsonl.gz", "pydocs": docs, "web": data / "web.jsonl.gz"}


def consortium_for(root: Path) -> LocalConsortium:
    corpora = prepare_corpora(root)
    silos = [
        SiloSpec("kjv", "bible", "minilm-l3-onnx", corpora["kjv"], ("book",), True),
        SiloSpec("pydocs", "pyorg", "minilm-l6", corpora["pydocs"], ("source",)),
        SiloSpec("web", "openbible", "static-64", corpora["web"], ("book",)),
    ]
    clients = [ClientSpec("alice", "pyorg", "pydocs"), ClientSpec("bob", "bible", "kjv")]
    return LocalConsortium(root, silos, clients, say=say)


def train_adapters(net: LocalConsortium) -> str:
    """Train alice's space -> every other space, unless a current adapter exists."""
    admin = str(net.client_config("admin"))
    silos = json.loads(net.run("silos", "--config", admin, "--json", capture=True))
    space = {s["silo"]: s["space"]["space_id"] for s in silos}
    current = {
        (a["source"]["space_id"], a["target"]["space_id"])
        for a in json.loads(net.run("adapters", "--config", admin, "--json", capture=True))
        if not a["stale"]
    }
    for target in ("kjv", "web"):
        pair = (space["pydocs"], space[target])
        if pair in current:
            say(f"adapter {pair[0]} -> {pair[1]} already trained (reused)")
            continue
        net.run("train", "--config", admin, "--source", pair[0], "--target", pair[1],
                "--anchor-set", ANCHOR_SET)  # fmt: skip
    net.run("adapters", "--config", admin)
    return str(space["pydocs"])


def rank_of(expected: str, doc_ids: Sequence[str]) -> int | None:
    return doc_ids.index(expected) + 1 if expected in doc_ids else None


def row(name: str, ranks: list[int | None], native: float | None, kind: str) -> list[str]:
    ndcg = sum(1 / math.log2(r + 1) for r in ranks if r) / len(ranks)
    recall = sum(1 for r in ranks if r) / len(ranks)
    mrr = sum(1 / r for r in ranks if r) / len(ranks)
    kept = f"{ndcg / native:.3f}" if native else "1.000"
    return [name, f"{ndcg:.3f}", f"{recall:.3f}", f"{mrr:.3f}", kept, kind]


async def limited(count: int, call: Callable[[int], Awaitable[list[str]]]) -> list[list[str]]:
    """``call(i)`` for every i, at most CONCURRENCY at a time, results in order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> list[str]:
        async with gate:
            return await call(i)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def kjv_ranked(result: FederatedAnswer) -> list[str]:
    # Positions in the merged list count every silo's hits; only KJV ids can be relevant.
    # Other silos' hits are kept as "<silo>:" so the table can say how often they ranked.
    return [hit.doc_id if hit.silo == "kjv" else f"{hit.silo}:" for hit in result.hits]


def receiving_steps(net: LocalConsortium, silo: str, since: int) -> str:
    """The receiving-side steps ``silo`` says (in its audit log) it applied to the forwarded
    queries it answered after line ``since``: "hubness", or "none"; with how many queries each
    where they changed meanwhile."""
    log = net.silo_config(silo).parent / "audit" / "audit.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()[since:]]
    steps: collections.Counter[str] = collections.Counter()
    for line in lines:
        # A batch's one line counts for each of its queries.
        forwarded = line.get("rpc") in ("Search", "SearchBatch") and line.get("via")
        if forwarded and not line.get("reranked"):
            steps[line.get("receiving") or "none"] += int(line.get("batch") or 1)
    if len(steps) <= 1:
        return next(iter(steps), "none")
    # The steps changed while the table was measured (e.g. a refinement accepted meanwhile).
    return " / ".join(f"{step} ({n} queries)" for step, n in steps.most_common())


def audit_length(net: LocalConsortium, silo: str) -> int:
    log = net.silo_config(silo).parent / "audit" / "audit.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


async def retention_table(net: LocalConsortium, *, phase: str = "") -> None:
    """The table; ``phase`` "traffic" or "local-fit" measures the adapted rows again only."""
    web, kjv = load_records("web"), load_records("kjv")
    picks = range(0, len(web), len(web) // EVAL_QUERIES)
    pairs = [(web[i].text, kjv[i].id) for i in picks][:EVAL_QUERIES]
    texts = [text for text, _ in pairs]
    alice_cfg = load_client_config(net.client_config("alice"))
    bob_cfg = load_client_config(net.client_config("bob"))
    async with (
        FederatedClient(alice_cfg) as alice,
        FederatedClient(bob_cfg) as bob,
        SiloClient(
            net.endpoints["kjv"], bob_cfg.tls, expect=bob_cfg.expected_home_silo()
        ) as kjv_silo,
    ):
        source: list[FloatVector] = []  # alice's minilm-l6 vectors, from her own silo
        native: list[FloatVector] = []  # the KJV model's own vectors, from bob (org bible)
        for start in range(0, len(texts), 128):
            vectors, space = await alice.embed(texts[start : start + 128])
            source.extend(vectors)
            vectors, _ = await bob.embed(texts[start : start + 128])
            native.extend(vectors)
        kind = next(
            (a.kind for a in await alice.list_adapters()
             if a.source.space_id == space.space_id and a.target.model_id == "minilm-l3-onnx"),
            "?",
        )  # fmt: skip
        if phase == "local-fit":
            kind = "kjv's local fit (affine)"

        async def direct(vector: FloatVector) -> list[str]:
            return [h.doc_id for h in await kjv_silo.search_vector(vector, 10, timeout=30)]

        async def adapted(i: int, *, rerank: bool = False, only_kjv: bool = True) -> list[str]:
            result = await alice.search_vector(
                source[i],
                space.space_id,
                k=10,
                silos=["kjv"] if only_kjv else [],
                rerank_text=texts[i] if rerank else "",
            )
            return kjv_ranked(result)

        async def adapted_batch(*, only_kjv: bool = True) -> list[list[str]]:
            # Every query at once through FederatedSearchBatch: one signature per batch of
            # up to 256, one call per silo, one merge per query.
            answer = await alice.search_vectors(
                np.stack(source), space.space_id, k=10, silos=["kjv"] if only_kjv else []
            )
            return [kjv_ranked(answer.answer(i)) for i in range(len(answer.answers))]

        # Latency, one query at a time: the direct silo search against the same search made
        # through the coordinator (translation, fan-out, merge and the extra hop).
        latency: dict[str, list[float]] = {"direct": [], "federated": []}
        for i in range(LATENCY_QUERIES):
            for name, call in (("direct", direct(source[i])), ("federated", adapted(i))):
                begun = time.perf_counter()
                await call
                latency[name].append(time.perf_counter() - begun)

        started = time.monotonic()
        count = len(texts)
        since = audit_length(net, "kjv")
        if phase:
            label = {
                "traffic": f"adapted, after {TRAFFIC} other queries",
                "local-fit": "adapted, local fit (kjv runs minilm-l6 too)",
            }[phase]
            results = {
                "native (KJV silo embeds the query itself)": await limited(
                    count, lambda i: direct(native[i])
                ),
                label: await adapted_batch(),
                "federated: all three silos, merged top 10": await adapted_batch(only_kjv=False),
            }
        else:
            results = {
                "native (KJV silo embeds the query itself)": await limited(
                    count, lambda i: direct(native[i])
                ),
                "none (minilm-l6 vector searched as is)": await limited(
                    count, lambda i: direct(source[i])
                ),
                "adapted (through the coordinator)": await adapted_batch(),
                "two-stage (adapted top-100, re-ranked by the KJV silo)": await limited(
                    count, lambda i: adapted(i, rerank=True)
                ),
                "federated: all three silos, merged top 10": await adapted_batch(only_kjv=False),
            }
    # What kjv did with the translated queries, as its own audit log says.
    steps = receiving_steps(net, "kjv", since)
    kind = f"{kind}; receiving: {steps}"
    print_table(results, [doc for _, doc in pairs], kind, time.monotonic() - started)
    direct_ms, federated_ms = (statistics.median(latency[n]) * 1000 for n in latency)
    say(
        f"Latency over {LATENCY_QUERIES} sequential queries (median): kjv silo searched directly "
        f"{direct_ms:.2f} ms, through the coordinator {federated_ms:.2f} ms; coordinator "
        f"overhead {federated_ms - direct_ms:.2f} ms per query."
    )
    merged = [doc for ids in results["federated: all three silos, merged top 10"] for doc in ids]
    others = {silo: sum(doc == f"{silo}:" for doc in merged) for silo in ("pydocs", "web")}
    say(
        f"In the merged top-10 lists, {len(merged) - sum(others.values())} of {len(merged)} hits "
        f"came from kjv, {others['pydocs']} from pydocs and {others['web']} from web."
    )


def print_table(
    results: dict[str, list[list[str]]], expected: list[str], kind: str, seconds: float
) -> None:
    table = []
    native_ndcg: float | None = None
    for name, lists in results.items():
        ranks = [rank_of(e, ids) for e, ids in zip(expected, lists, strict=True)]
        uses_adapter = not name.startswith(("native", "none"))
        # A two-stage answer is scored by kjv's own model: no receiving step applies to it.
        base = kind.split(";", maxsplit=1)[0]
        shown = f"{base}; native scores" if name.startswith("two-stage") else kind
        line = row(name, ranks, native_ndcg, shown if uses_adapter else "")
        if native_ndcg is None:
            native_ndcg = float(line[1])
        table.append(line)
    header = ["method", "nDCG@10", "recall@10", "MRR@10", "retention", "adapter; receiving steps"]
    widths = [max(len(r[c]) for r in [header, *table]) for c in range(len(header))]
    say(
        f"{len(expected)} WEB verses as queries, the KJV verse with the same reference as the one "
        f"relevant document; alice's minilm-l6 -> kjv's minilm-l3-onnx; {ANCHOR_COUNT} public "
        f"anchors ({ANCHOR_GENERATOR}); measured just now in {seconds:.0f} s"
    )
    for line in [header, ["-" * w for w in widths], *table]:
        say("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))


def restart_silo(net: LocalConsortium, silo: str, **receiving: object) -> None:
    """Restart ``silo`` with these ``[receiving]`` settings (``SiloSpec`` fields)."""
    spec = next(s for s in net.silos if s.name == silo)
    changed = dataclasses.replace(spec, **receiving)  # type: ignore[arg-type]
    net.silos = [changed if s is spec else s for s in net.silos]
    net.procs[silo].stop()
    net.start_silo(changed)
    net.write_client_configs()  # bob's home silo moved to a new port


def wait_for_local_fit(net: LocalConsortium, silo: str, space: str) -> None:
    admin = str(net.client_config("admin"))
    deadline = time.monotonic() + LOCAL_FIT_WAIT_S
    while time.monotonic() < deadline:
        listed = json.loads(net.run("silos", "--config", admin, "--json", capture=True))
        served = next(s for s in listed if s["silo"] == silo).get("also_serves", [])
        if space in [entry["space_id"] for entry in served]:
            say(f"silo {silo} fitted its own adapter from {space} and now serves that space")
            return
        time.sleep(2)
    raise TimeoutError(f"silo {silo} did not serve {space} within {LOCAL_FIT_WAIT_S} s")


def wait_for_refinement(net: LocalConsortium, silo: str) -> None:
    """Until ``silo`` logged its refinement guard's verdict on the pool (a background fit)."""
    log = net.procs[silo].log
    deadline = time.monotonic() + REFINE_WAIT_S
    while time.monotonic() < deadline:
        lines = [line for line in _read(log).splitlines() if "refinement for adapter" in line]
        if lines:
            verdict = lines[-1].split(": ", 1)[-1]
            say(f"silo {silo}'s refinement guard: {verdict}")
            return
        time.sleep(1)
    say(f"silo {silo} logged no refinement verdict within {REFINE_WAIT_S} s")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


async def send_traffic(net: LocalConsortium, count: int) -> None:
    """``count`` other WEB verses (none of the table's queries) from alice, translated to kjv."""
    web = load_records("web")
    step_size = len(web) // EVAL_QUERIES
    others = [r.text for i, r in enumerate(web) if i % step_size][:count]
    async with FederatedClient(load_client_config(net.client_config("alice"))) as alice:
        vectors: list[FloatVector] = []
        for start in range(0, len(others), 128):
            part, space = await alice.embed(others[start : start + 128])
            vectors.extend(part)

        async def one(i: int) -> list[str]:
            await alice.search_vector(vectors[i], space.space_id, k=10, silos=["kjv"])
            return []

        await limited(len(vectors), one)
    say(f"{len(others)} other queries answered by kjv, which kept them as its hubness reference")


def start_all(net: LocalConsortium) -> None:
    """The coordinator, then each silo; the clients' configs; then the preflight."""
    net.start_coordinator()
    for spec in net.silos:
        net.start_silo(spec)
    net.write_client_configs()
    step("3b. preflight: `silobridge doctor` on every party's kit, now that all are up")
    preflight(net)


def preflight(net: LocalConsortium) -> None:
    """``silobridge doctor`` on every party, online: one table shown, every one must pass."""
    net.run("doctor", "--config", str(net.silo_config("kjv")))
    failed = [name for name, passed in net.doctor().items() if not passed]
    if failed:
        raise RuntimeError(f"doctor failed for {', '.join(failed)} (run it on their configs)")
    say(f"doctor passed on all {len(net.doctor_parties())} parties' configs")


def audit_logs(net: LocalConsortium) -> list[tuple[Path, Path]]:
    """Each server's audit log and the public half of its key (``keys/`` beside its config)."""
    coordinator = net.coordinator_config.parent
    logs = [(coordinator / "state" / "audit" / "audit.log", coordinator / "keys" / "audit.key.pub")]
    for spec in net.silos:
        silo = net.silo_config(spec.name).parent
        logs.append((silo / "audit" / "audit.log", silo / "keys" / "audit.key.pub"))
    return logs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("demo-run"), help="where everything goes")
    args = parser.parse_args()
    # Ctrl-C and SIGTERM (e.g. from a CI runner) unwind the same way, so every process is
    # stopped. Set explicitly: a shell starting us in the background would have SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    net = consortium_for(args.dir)
    try:
        with net:
            step("1. consortium CA and a startup kit per party (kit new, pki approve, kit install)")
            net.provision()
            step("2. each organization ingests its corpus with its own model")
            for spec in net.silos:
                net.ingest(spec)
            step("3. start the coordinator and the three silo agents (they register themselves)")
            start_all(net)
            net.run("silos", "--config", str(net.client_config("admin")))
            step("4. the public anchor set: word strings, public sentences and a word chain")
            net.run("anchors", "build", "--config", str(net.coordinator_config),
                    "--name", ANCHOR_SET, "--synthetic", str(ANCHOR_COUNT),
                    "--generator", ANCHOR_GENERATOR)  # fmt: skip
            step("5. train adapters (the coordinator asks each silo to embed the anchors)")
            alice_space = train_adapters(net)
            step("6. alice (pyorg) asks modern-English questions; her text stays in pyorg")
            for question in QUESTIONS:
                net.run("query", "--config", str(net.client_config("alice")), "--k", "5", question)
            step(f"7. retention on {EVAL_QUERIES} labelled WEB->KJV queries, live")
            asyncio.run(retention_table(net))
            step(
                f"7b. kjv keeps the translated queries it answers (in memory, at most "
                f"{TRAFFIC_POOL}) as its hubness reference and refines the adapter's output on "
                f"them (behind a label-free guard); after {TRAFFIC} other queries"
            )
            # One querying client here, so its share is not capped (the default keeps any one
            # signer to 5% of the pool, so that no caller alone steers the reference).
            restart_silo(net, "kjv", traffic_pool=TRAFFIC_POOL, traffic_max_share=1.0, refine=True)
            asyncio.run(send_traffic(net, TRAFFIC))
            wait_for_refinement(net, "kjv")
            asyncio.run(retention_table(net, phase="traffic"))
            step("7c. kjv also runs alice's model (minilm-l6): it fits its own adapter on its own "
                 "verses, nothing leaves it, and is asked again")  # fmt: skip
            restart_silo(net, "kjv", traffic_pool=0, refine=False, local_models=("minilm-l6",))
            wait_for_local_fit(net, "kjv", alice_space)
            asyncio.run(retention_table(net, phase="local-fit"))
            step("8. the data boundary: what each party can see, from the live policies")
            net.run("audit", "boundary", "--config", str(net.client_config("alice")))
            # The kjv silo's checkpoint heads, as the coordinator recorded them: an auditor
            # keeps these outside the silo's host.
            heads = net.root / "kjv-audit-heads.json"
            admin = str(net.client_config("admin"))
            heads.write_text(net.run("audit", "heads", "kjv", "--config", admin, capture=True))
        step("9. every process stopped; verify the tamper-evident audit logs")
        for log, key in audit_logs(net):
            anchored = ("--heads", str(heads)) if log.parent.parent.name == "kjv" else ()
            net.run("audit", "verify", str(log), "--key", str(key), *anchored)
        step("done")
    except KeyboardInterrupt:
        say("\ninterrupted: every process the demo started has been stopped")
        return 130
    except Exception as error:
        say(f"\ndemo failed: {error}\nlogs: {net.logs}")
        return 1
    say(
        f"in {time.monotonic() - started:.0f} s. Everything is under {net.root}: ca/, one "
        f"startup kit per party (coordinator/ with state/, silos/<name>/ with data/, "
        f"clients/<name>/), logs/. All processes stopped."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
