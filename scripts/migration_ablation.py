"""Which adapter route serves a migrating silo best: an offline ablation on the demo's KJV pair.

A silo moving from minilm-l3-onnx to minilm-l6 must answer new-space queries before its
documents are re-encoded. Two routes through in-domain adapters fitted on a spread sample of its
own documents: translate each *query* back into the old space (new->old) and search the old
vectors, or translate each *document* forward (old->new, "provisional vectors") and search in the
new space. Also: mixing re-encoded (native) documents with provisional ones, re-encoded in key
order as the silo does. nDCG@10 over every KJV verse for the demo's 500 WEB queries, exact
search, as a share of the new model's native nDCG@10.

    .venv/bin/python scripts/migration_ablation.py [--anchors 4096 8192]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from silobridge.adapters import FitConfig, fit
from silobridge.embedding.embedders import load_embedder
from silobridge.evaluation.cache import EmbeddingCache, default_cache_dir, embed_cached
from silobridge.evaluation.corpus import load_records

os.environ.setdefault(
    "SILOBRIDGE_DEMO_DATA", str(Path(__file__).resolve().parents[1] / "data/demo")
)
Matrix = npt.NDArray[np.float32]
QUERIES = 500


def ndcg(scores: Matrix, relevant: npt.NDArray[np.int64]) -> float:
    own = scores[np.arange(relevant.shape[0]), relevant]
    ranks = (scores > own[:, None]).sum(axis=1)
    return float(np.where(ranks < 10, 1 / np.log2(ranks + 2), 0.0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, nargs="+", default=[4096, 8192])
    args = parser.parse_args()
    web, kjv = load_records("web"), load_records("kjv")
    picks = list(range(0, len(web), len(web) // QUERIES))[:QUERIES]  # as make migration-demo
    position = {record.id: i for i, record in enumerate(kjv)}
    relevant = np.asarray([position[kjv[i].id] for i in picks], dtype=np.int64)
    cache = EmbeddingCache(default_cache_dir())
    old, new = load_embedder("minilm-l3-onnx"), load_embedder("minilm-l6")
    texts = [record.text for record in kjv]
    d_old = embed_cached(old, texts, cache, label="kjv old")
    d_new = embed_cached(new, texts, cache, label="kjv new")
    q_old = old.embed([web[i].text for i in picks])
    q_new = new.embed([web[i].text for i in picks])
    native = ndcg(q_new @ d_new.T, relevant)
    print(
        f"native minilm-l6 {native:.3f}; old minilm-l3-onnx {ndcg(q_old @ d_old.T, relevant):.3f}"
    )
    print("| anchors | kind | query back (new->old) | documents forward (old->new) | 50% mixed |")
    print("|---|---|---|---|---|")
    count = d_old.shape[0]
    for anchors in args.anchors:
        sample = np.unique(np.linspace(0, count - 1, anchors).round().astype(np.int64))
        for kind in ("procrustes", "affine"):
            back = fit(d_new[sample], d_old[sample], FitConfig(kind=kind))
            forward = fit(d_old[sample], d_new[sample], FitConfig(kind=kind))
            by_query = ndcg(back.apply(q_new) @ d_old.T, relevant)
            provisional = q_new @ forward.apply(d_old).T
            by_document = ndcg(provisional, relevant)
            half = np.arange(count) < count // 2  # re-encoded in key order
            mixed = ndcg(np.where(half[None, :], q_new @ d_new.T, provisional), relevant)
            print(
                f"| {anchors} | {kind} | {by_query / native:.3f} | {by_document / native:.3f} "
                f"| {mixed / native:.3f} |"
            )


if __name__ == "__main__":
    main()
