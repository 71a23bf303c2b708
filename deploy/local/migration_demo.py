"""`make migration-demo`: the KJV silo moves from minilm-l3-onnx to minilm-l6 while it serves.

One organization (bible) runs silo "kjv" (31,095 verses) beside a coordinator; its client bob
queries the silo continuously (closed loop, paced to QUERY_RATE per second) for the whole run.
The silo's admin plans the migration, starts it (in-domain adapters, new-space queries answered
at once), lets the background re-encode run, cuts over, and rolls back. At each stage nDCG@10 on
500 labelled WEB->KJV queries is measured on the live silo, beside the old model and a full
re-index with the new model. The run ends rolled back, so re-running starts from the same silo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from localnet import ClientSpec, LocalConsortium, SiloSpec, say, step

from silobridge.client.config import load_client_config
from silobridge.core.config import TlsFiles
from silobridge.core.migration import MigrationCommand, MigrationState, MigrationStatus
from silobridge.core.queries import SiloQuery
from silobridge.core.spaces import SpaceDescriptor
from silobridge.core.vectors import WireVector
from silobridge.embedding.embedders import load_embedder
from silobridge.evaluation.cache import EmbeddingCache, default_cache_dir, embed_cached
from silobridge.evaluation.corpus import demo_data_dir, load_records
from silobridge.rpc.silo_client import SiloClient

os.environ.setdefault(
    "SILOBRIDGE_DEMO_DATA", str(Path(__file__).resolve().parents[2] / "data" / "demo")
)

OLD_MODEL, NEW_MODEL = "minilm-l3-onnx", "minilm-l6"
EVAL_QUERIES = 500
QUERY_RATE = 50.0  # the continuous client's queries per second
CLIENT_WORKERS = 4
IDLE_SECONDS = 20.0
CPU_SHARE = 0.9
SAMPLE = 8_192


@dataclass
class Load:
    """The continuous client: latencies per phase, and every failure."""

    tls: TlsFiles | None
    target: str
    vectors: list[tuple[np.ndarray, str]]  # (vector, space id) to cycle through
    phase: str = "idle"
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    async def _main(self) -> None:
        async with SiloClient(self.target, self.tls) as peer:
            await asyncio.gather(*(self._worker(peer, w) for w in range(CLIENT_WORKERS)))

    async def _worker(self, peer: SiloClient, worker: int) -> None:
        interval = CLIENT_WORKERS / QUERY_RATE
        i = worker
        next_at = time.monotonic()
        while not self._stop.is_set():
            vectors = self.vectors
            vector, space = vectors[i % len(vectors)]
            i += CLIENT_WORKERS
            phase = self.phase
            started = time.perf_counter()
            try:
                query = SiloQuery(WireVector.of(vector), k=10, source_space=space)
                hits = await peer.search(query, timeout=10)
                if len(hits) != 10:
                    raise AssertionError(f"{len(hits)} hits")
                self.latencies.setdefault(phase, []).append(time.perf_counter() - started)
            except Exception as error:  # every failure is counted and shown
                self.failures.append(f"[{phase}] {space}: {error!r}")
            self.sent += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def p(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def ndcg_at_10(ranked: list[list[str]], relevant: list[str]) -> float:
    total = 0.0
    for ids, want in zip(ranked, relevant, strict=True):
        if want in ids:
            total += 1 / math.log2(ids.index(want) + 2)
    return total / len(relevant)


async def measure(
    target: str, tls: TlsFiles | None, vectors: np.ndarray, space: str
) -> list[list[str]]:
    async with SiloClient(target, tls) as peer:
        gate = asyncio.Semaphore(4)

        async def one(vector: np.ndarray) -> list[str]:
            async with gate:
                query = SiloQuery(WireVector.of(vector), k=10, source_space=space)
                return [hit.doc_id for hit in await peer.search(query, timeout=30)]

        return list(await asyncio.gather(*(one(v) for v in vectors)))


async def control(
    target: str, tls: TlsFiles | None, command: MigrationCommand, **options: object
) -> MigrationStatus:
    async with SiloClient(target, tls) as peer:
        return await peer.control_migration(command, timeout=3_600, **options)  # type: ignore[arg-type]


class Demo:
    def __init__(self, net: LocalConsortium) -> None:
        self.net = net
        config = load_client_config(net.client_config("bob"))
        self.tls, self.target = config.tls, net.endpoints["kjv"]
        web, kjv = load_records("web"), load_records("kjv")
        picks = range(0, len(web), len(web) // EVAL_QUERIES)
        pairs = [(web[i].text, kjv[i].id) for i in picks][:EVAL_QUERIES]
        self.texts, self.relevant = [t for t, _ in pairs], [d for _, d in pairs]
        self.kjv = kjv
        old, new = load_embedder(OLD_MODEL, threads=1), load_embedder(NEW_MODEL, threads=1)
        self.old_space, self.new_space = old.space, new.space
        self.old_q, self.new_q = old.embed(self.texts), new.embed(self.texts)
        self.rows: list[tuple[str, float]] = []
        self.rates: list[tuple[float, int]] = []

    def cli(self, *args: str) -> str:
        return self.net.run(
            "silo", "migrate", *args, "--client", str(self.net.client_config("bob"))
        )

    def status(self) -> MigrationStatus:
        return asyncio.run(control(self.target, self.tls, MigrationCommand.STATUS))

    def command(self, command: MigrationCommand, **options: object) -> MigrationStatus:
        return asyncio.run(control(self.target, self.tls, command, **options))

    def score(self, name: str, space: SpaceDescriptor) -> float:
        vectors = self.old_q if space == self.old_space else self.new_q
        ranked = asyncio.run(measure(self.target, self.tls, vectors, space.space_id))
        value = ndcg_at_10(ranked, self.relevant)
        self.rows.append((name, value))
        say(f"  {name}: nDCG@10 {value:.3f}")
        return value

    def reencode_until(self, fraction: float, load: Load) -> MigrationStatus:
        """Let the re-encode run (sampling its rate) until ``fraction`` is re-encoded."""
        load.phase = "reencoding"
        last = self.status()
        while last.fraction < fraction and last.state is MigrationState.REENCODING:
            time.sleep(2.0)
            now = self.status()
            self.rates.append((2.0, now.reencoded - last.reencoded))
            say(
                f"  re-encoded {now.reencoded}/{now.documents} ({now.fraction:.0%}), "
                f"{now.documents_per_second:.0f} documents/s"
            )
            last = now
        load.phase = "measuring"
        return last

    def full_reindex(self) -> float:
        """The new model's own quality: the whole corpus embedded from scratch, exact search."""
        model = load_embedder(NEW_MODEL)
        cache = EmbeddingCache(default_cache_dir())
        documents = embed_cached(model, [r.text for r in self.kjv], cache, label="kjv")
        ids = [r.id for r in self.kjv]
        ranked = []
        for scores in self.new_q @ np.asarray(documents).T:
            best = np.argsort(-scores, kind="stable")[:10]
            ranked.append([ids[i] for i in best])
        return ndcg_at_10(ranked, self.relevant)


def consortium_for(root: Path) -> LocalConsortium:
    corpus = demo_data_dir() / "kjv.jsonl.gz"
    spec = SiloSpec("kjv", "bible", OLD_MODEL, corpus, ("book",), admins=("org:bible/client",))
    return LocalConsortium(root, [spec], [ClientSpec("bob", "bible", "kjv")], say=say)


def set_up(net: LocalConsortium) -> Demo:
    step("1. the KJV silo (minilm-l3-onnx), a coordinator, and bob of bible as admin")
    net.provision()
    net.ingest(net.silos[0])
    net.start_coordinator()
    net.start_silo(net.silos[0])
    net.write_client_configs()
    demo = Demo(net)
    if demo.status().state is not MigrationState.NONE:  # an earlier run was interrupted
        demo.command(MigrationCommand.ROLLBACK)
    return demo


def run(net: LocalConsortium) -> None:
    demo = set_up(net)

    step("2. plan: the new model timed on the silo's own texts (changes nothing)")
    plan = json.loads(
        net.run("silo", "migrate", "plan", "--to", NEW_MODEL, "--sample", "1024",
                "--client", str(net.client_config("bob")), "--json", capture=True)
    )  # fmt: skip
    raw_rate = float(plan["documents_per_second"])
    say(f"  {plan['documents']} documents, {raw_rate:.0f} documents/s on the idle silo")

    step(f"3. bob queries the silo continuously, {QUERY_RATE:.0f}/s, for the whole run")
    load = Load(demo.tls, demo.target, [(v, demo.old_space.space_id) for v in demo.old_q[:50]])
    thread = load.run()
    try:
        demo.score("old model (minilm-l3-onnx, native)", demo.old_space)
        load.phase = "idle"
        time.sleep(IDLE_SECONDS)

        step("4. start: in-domain adapters, then new-space queries are answered at once")
        load.phase = "measuring"
        demo.cli("start", "--to", NEW_MODEL, "--sample", str(SAMPLE),
                 "--cpu-share", str(CPU_SHARE))  # fmt: skip
        demo.command(MigrationCommand.PAUSE)
        load.vectors = [
            *((v, demo.new_space.space_id) for v in demo.new_q[:50]),
            *((v, demo.old_space.space_id) for v in demo.old_q[:50]),
        ]
        demo.score("0% re-encoded (all through the adapter)", demo.new_space)
        demo.command(MigrationCommand.RESUME)

        step("5. re-encode in the background; measured again at about half")
        half = demo.reencode_until(0.5, load)
        demo.command(MigrationCommand.PAUSE)
        demo.score(f"{half.fraction:.0%} re-encoded (mixed)", demo.new_space)
        demo.command(MigrationCommand.RESUME)
        demo.reencode_until(1.0, load)
        ready = demo.status()
        demo.cli("status")
        demo.score("100% re-encoded, before cut-over", demo.new_space)

        step("6. cut-over: the new space is primary; the silo re-registers")
        demo.cli("cutover")
        demo.score("after cut-over (minilm-l6)", demo.new_space)
        demo.score("after cut-over, old-space queries", demo.old_space)
        net.run("silos", "--config", str(net.client_config("bob")))

        step("7. rollback: back to minilm-l3-onnx, the old index as it was")
        load.vectors = [(v, demo.old_space.space_id) for v in demo.old_q[:50]]
        time.sleep(1.0)  # let the new-space queries in flight drain
        demo.cli("rollback")
        demo.score("after rollback (minilm-l3-onnx)", demo.old_space)
    finally:
        load.stop()
        thread.join(30)
    net.stop_all()

    report(demo, load, raw_rate, ready)


def report(demo: Demo, load: Load, raw_rate: float, ready: MigrationStatus) -> None:
    step("8. the full re-index with the new model (exact search, for reference)")
    reindex = demo.full_reindex()
    scores = dict(demo.rows)
    at_zero = scores["0% re-encoded (all through the adapter)"]
    at_half = next(v for k, v in demo.rows if k.endswith("re-encoded (mixed)"))
    at_full = scores["100% re-encoded, before cut-over"]
    after_cut = scores["after cut-over (minilm-l6)"]
    old_after_cut = scores["after cut-over, old-space queries"]
    after_rollback = scores["after rollback (minilm-l3-onnx)"]
    old = demo.rows[0][1]
    reencode_rate = sum(n for _, n in demo.rates) / max(sum(t for t, _ in demo.rates), 1e-9)
    idle, busy = load.latencies.get("idle", []), load.latencies.get("reencoding", [])
    table = [
        ("full re-index (minilm-l6, native)", reindex),
        *demo.rows,
    ]
    say("\n| stage | nDCG@10 | of the full re-index |\n|---|---|---|")
    for name, value in table:
        say(f"| {name} | {value:.3f} | {value / reindex:.3f} |")
    say(
        f"\nold model {old:.3f}; after rollback {after_rollback:.3f} (the same index). "
        f"Adapters on {ready.anchors} in-domain anchors: new->old held-out nDCG@10 "
        f"{ready.forward_ndcg:.3f}, old->new {ready.backward_ndcg:.3f}.\n"
        f"Targets: 0% {at_zero / reindex:.3f} (>= 0.95), ~50% {at_half / reindex:.3f} "
        f"(>= 0.97), 100% {at_full / reindex:.3f}, after cut-over {after_cut / reindex:.3f} "
        f"(= 1); old-space queries after cut-over {old_after_cut:.3f}.\n"
        f"Continuous client: {load.sent} queries at {QUERY_RATE:.0f}/s, "
        f"{len(load.failures)} failed.\n"
        f"Re-encode: {reencode_rate:.0f} documents/s at CPU share {CPU_SHARE:g} under that load, "
        f"{reencode_rate / raw_rate:.2f} of the idle silo's {raw_rate:.0f} documents/s "
        f"(target >= 0.80).\n"
        f"Serving latency: idle p50 {p(idle, 0.5):.1f} ms p99 {p(idle, 0.99):.1f} ms "
        f"({len(idle)} queries); during re-encode p50 {p(busy, 0.5):.1f} ms p99 "
        f"{p(busy, 0.99):.1f} ms ({len(busy)} queries): p99 ratio "
        f"{p(busy, 0.99) / max(p(idle, 0.99), 1e-9):.2f} (target <= 2)."
    )
    for failure in load.failures[:10]:
        say(f"  failed: {failure}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=Path("demo-run/migration"), help="where everything goes"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    net = consortium_for(args.dir)
    try:
        with net:
            run(net)
    except KeyboardInterrupt:
        say("\ninterrupted: every process the demo started has been stopped")
        return 130
    except Exception as error:
        say(f"\nmigration demo failed: {error}\nlogs: {net.logs}")
        return 1
    say(f"\nin {time.monotonic() - started:.0f} s; everything is under {net.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
