"""FAISS against Milvus (Lite) as a silo's index: search latency, QPS and recall through gRPC.

The same random unit vectors (in the space of ``--model``, so the silo's own model check
passes) go into one docstore per run; each run builds its index (FAISS files, or a Milvus Lite
file in the data directory), starts ``silobridge silo serve`` as a child process over mutual
TLS, and drives it with ``--concurrency`` clients sending ``Search`` (k = 10) for the same query
vectors: a closed loop, every query timed from send to answer. Recall@10 is against exact
inner-product search of the same vectors. Modes: ``exact`` (below the exact threshold: FAISS
``IDMap2,Flat``, Milvus ``FLAT``) and ``hnsw`` (HNSW32, the silo's defaults).

    .venv/bin/python scripts/bench_milvus.py                      # 100,000 vectors, ~3-5 min
    .venv/bin/python scripts/bench_milvus.py --docs 2000 --queries 200 --modes exact  # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from silobridge.core.config import TlsFiles
from silobridge.core.documents import Document
from silobridge.core.spaces import SpaceDescriptor
from silobridge.embedding.embedders import load_embedder
from silobridge.rpc.silo_client import SiloClient
from silobridge.security.pki.ca import init_ca, issue_certificate, load_ca
from silobridge.silo_agent.config import load_silo_config
from silobridge.silo_agent.store.data import SiloData

FloatMatrix = npt.NDArray[np.float32]
K = 10
LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")
PASSPHRASE = b"bench-milvus-passphrase"
WRITE_BATCH = 5_000
# Vectors per index call in the per-call cost probe (after the gRPC runs).
BATCH_PROBE = 50


@dataclass(frozen=True)
class Row:
    backend: str
    mode: str
    documents: int
    build_s: float
    queries: int
    concurrency: int
    qps: float
    p50_ms: float
    p99_ms: float
    recall_at_10: float
    # The index alone, no gRPC: ms per call of one vector, ms per vector in one call of 50.
    call_ms: float = 0.0
    batched_ms_per_vector: float = 0.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--model", default="static-64", help="whose space the vectors are in")
    parser.add_argument("--modes", default="exact,hnsw", help="exact, hnsw or both")
    parser.add_argument("--backends", default="faiss,milvus")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-milvus")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser.parse_args(argv)


def unit_rows(seed: int, count: int, dimension: int) -> FloatMatrix:
    rows = np.random.default_rng(seed).standard_normal((count, dimension)).astype(np.float32)
    out: FloatMatrix = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def exact_top(vectors: FloatMatrix, queries: FloatMatrix) -> list[set[str]]:
    """The ids of each query's exact top ``K`` by inner product (in chunks: bounded memory)."""
    truth: list[set[str]] = []
    for start in range(0, queries.shape[0], 256):
        scores = queries[start : start + 256] @ vectors.T
        best = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        truth.extend({f"doc-{i}" for i in row} for row in best.tolist())
    return truth


def make_pki(root: Path) -> tuple[TlsFiles, TlsFiles]:
    init_ca(root / "ca", "bench", PASSPHRASE)
    ca = load_ca(root / "ca", PASSPHRASE)
    silo = issue_certificate(
        ca, root / "silo", role="silo", name="bench", org="bench", ip_addresses=["127.0.0.1"]
    )
    client = issue_certificate(ca, root / "client", role="client", name="load", org="bench")
    return (
        TlsFiles(cert=silo.cert, key=silo.key, ca=silo.ca_cert),
        TlsFiles(cert=client.cert, key=client.key, ca=client.ca_cert),
    )


def write_config(directory: Path, tls: TlsFiles, model: str, backend: str, mode: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    index = f"exact_threshold = {1_000_000_000 if mode == 'exact' else 1}\n"
    if backend == "milvus":
        index += 'backend = "milvus"\nuri = "milvus.db"\n'
    config = directory / "silo.toml"
    config.write_text(
        f"""[silo]
name = "bench"
data_dir = "data"
model = "{model}"

[server]
listen = "127.0.0.1:0"
workers = 4

[tls]
cert = "{tls.cert}"
key = "{tls.key}"
ca = "{tls.ca}"

[limits]
rate_per_second = 1000000.0
burst = 1000000
peer_rate_per_second = 1000000.0
peer_burst = 1000000

[access]
describe = ["org:bench"]
search = ["org:bench/client"]
query = ["org:bench"]

[index]
{index}"""
    )
    return config


def fill(config: Path, space: SpaceDescriptor, vectors: FloatMatrix) -> float:
    """Store the vectors and build the index as `silo ingest` would; the build's seconds."""
    settings = load_silo_config(config)
    data = SiloData.open(settings.data_dir, space, settings.index)
    try:
        for start in range(0, vectors.shape[0], WRITE_BATCH):
            stop = min(start + WRITE_BATCH, vectors.shape[0])
            docs = [Document(f"doc-{i}", f"document {i}", {}) for i in range(start, stop)]
            data.upsert(docs, vectors[start:stop])
        began = time.perf_counter()
        data.rebuild_index()
        return time.perf_counter() - began
    finally:
        data.close()


def call_costs(config: Path, space: SpaceDescriptor, queries: FloatMatrix) -> tuple[float, float]:
    """(ms per index call with one vector, ms per vector in calls of ``BATCH_PROBE`` vectors),
    timed on the silo's own index object in this process after its server stopped."""
    settings = load_silo_config(config)
    data = SiloData.open(settings.data_dir, space, settings.index)
    try:
        index, _ = data.primary.state()
        assert index is not None
        index.search(queries[:1], K)  # warm
        began = time.perf_counter()
        for row in range(BATCH_PROBE):
            index.search(queries[row : row + 1], K)
        single = (time.perf_counter() - began) * 1000.0 / BATCH_PROBE
        began = time.perf_counter()
        index.search(queries[:BATCH_PROBE], K)
        batched = (time.perf_counter() - began) * 1000.0 / BATCH_PROBE
        return round(single, 2), round(batched, 3)
    finally:
        data.close()


def serve(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    handle = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "silobridge.cli", "silo", "serve", "--config", str(config)],
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return proc, f"{match.group(1)}:{match.group(2)}"
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the silo did not start; its log:\n{log.read_text(errors='replace')}")


async def drive(
    endpoint: str, tls: TlsFiles, queries: FloatMatrix, concurrency: int
) -> tuple[list[float], list[set[str]], float]:
    """Every query once over ``concurrency`` closed loops: latencies, hit ids, wall seconds."""
    latencies = [0.0] * queries.shape[0]
    found: list[set[str]] = [set() for _ in range(queries.shape[0])]
    async with SiloClient(endpoint, tls) as silo:
        for vector in queries[: min(50, queries.shape[0])]:  # warm-up, unmeasured
            await silo.search_vector(vector, K, timeout=30)
        cursor = iter(range(queries.shape[0]))

        async def loop() -> None:
            for i in cursor:
                sent = time.perf_counter()
                hits = await silo.search_vector(queries[i], K, timeout=30)
                latencies[i] = time.perf_counter() - sent
                found[i] = {hit.doc_id for hit in hits}

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return latencies, found, time.perf_counter() - began


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    root: Path = args.dir
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    silo_tls, client_tls = make_pki(root / "pki")
    space = load_embedder(args.model).space
    vectors = unit_rows(1, args.docs, space.dimension)
    queries = unit_rows(2, args.queries, space.dimension)
    truth = exact_top(vectors, queries)
    rows: list[Row] = []
    for mode in args.modes.split(","):
        for backend in args.backends.split(","):
            run = root / f"{backend}-{mode}"
            config = write_config(run, silo_tls, args.model, backend, mode)
            build = fill(config, space, vectors)
            proc, endpoint = serve(config, run / "silo.log")
            try:
                latencies, found, wall = asyncio.run(
                    drive(endpoint, client_tls, queries, args.concurrency)
                )
            finally:
                proc.terminate()
                proc.wait(60)
            recall = sum(len(f & t) for f, t in zip(found, truth, strict=True)) / (K * len(truth))
            single, batched = call_costs(config, space, queries)
            milliseconds = np.asarray(latencies) * 1000.0
            row = Row(
                backend=backend,
                mode=mode,
                documents=args.docs,
                build_s=round(build, 2),
                queries=len(latencies),
                concurrency=args.concurrency,
                qps=round(len(latencies) / wall, 1),
                p50_ms=round(float(np.percentile(milliseconds, 50)), 2),
                p99_ms=round(float(np.percentile(milliseconds, 99)), 2),
                recall_at_10=round(recall, 4),
                call_ms=single,
                batched_ms_per_vector=batched,
            )
            rows.append(row)
            print(json.dumps(asdict(row)), flush=True)
    print()
    print(
        "| backend | mode | documents | build s | QPS | p50 ms | p99 ms | recall@10 | index call "
        f"ms (1 vector) | ms per vector ({BATCH_PROBE} per call) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.backend} | {row.mode} | {row.documents:,} | {row.build_s} | {row.qps} | "
            f"{row.p50_ms} | {row.p99_ms} | {row.recall_at_10} | {row.call_ms} | "
            f"{row.batched_ms_per_vector} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
