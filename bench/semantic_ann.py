"""Index designs for the semantic cache, compared on the same vectors and queries.

The app's index is NumPy (``services/caching/semantic/index.py``); this script measures
what the ANN libraries that install from PyPI as wheels would buy instead, so it runs
in a separate environment that has them (they are not app dependencies)::

    python -m venv /tmp/venv-ann
    /tmp/venv-ann/bin/pip install numpy faiss-cpu==1.15.1 usearch==2.26.6 chroma-hnswlib==0.7.6
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/semantic_cache.py --latency \\
        --pairs ../shared/data/cache/qqp_pairs_dev.json --export /tmp/semantic-vectors
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 /tmp/venv-ann/bin/python bench/semantic_ann.py \\
        --vectors /tmp/semantic-vectors --sizes 10000,100000

(hnswlib itself has no wheel, only a source archive that compiles; chroma-hnswlib is its
wheel-built fork.) Every design answers k=4 for one query at a time, on one thread, as
the gateway would; agreement is with the exact top-1 / top-4. The last line is JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
Search = Callable[[np.ndarray], list[int]]


def _our_index() -> Any:
    """The app's index module, loaded by path: this environment lacks the app's deps."""
    path = ROOT / "services" / "caching" / "semantic" / "index.py"
    spec = importlib.util.spec_from_file_location("semantic_index", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def numpy_designs(data: np.ndarray) -> dict[str, tuple[Search, float]]:
    module = _our_index()
    out = {}
    for name, params in {"numpy exact float32": {"exact_limit": 10**9},
                         "numpy PCA-64 + re-rank 256 (ours)": {"exact_limit": 0}}.items():
        index = module.VectorIndex(data.shape[1], **params)
        for i, v in enumerate(data):
            index.add(("s", "s"), str(i), "", v)
        out[name] = ((lambda q, index=index: [int(n.digest) for n in
                                              index.search(("s", "s"), q, k=4)]),
                     index.stats().vector_bytes / 2**20)
    return out


def faiss_designs(data: np.ndarray) -> dict[str, tuple[Search, float]]:
    try:
        import faiss
    except ImportError:
        return {}
    faiss.omp_set_num_threads(1)
    d = data.shape[1]
    built: dict[str, Any] = {
        "faiss flat (exact)": faiss.IndexFlatIP(d),
        "faiss SQ8 flat": faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit,
                                                     faiss.METRIC_INNER_PRODUCT),
        "faiss HNSW32 ef=64": faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT),
        "faiss IVF1024 nprobe=16": faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, 1024,
                                                      faiss.METRIC_INNER_PRODUCT),
    }
    out = {}
    for name, index in built.items():
        if not index.is_trained:
            index.train(data)
        index.add(data)
        if "HNSW" in name:
            index.hnsw.efSearch = 64
        if "IVF" in name:
            index.nprobe = 16
        memory = len(faiss.serialize_index(index)) / 2**20
        out[name] = ((lambda q, index=index: index.search(q[None, :], 4)[1][0].tolist()),
                     memory)
    return out


def usearch_designs(data: np.ndarray) -> dict[str, tuple[Search, float]]:
    try:
        from usearch.index import Index
    except ImportError:
        return {}
    out = {}
    for dtype in ("f32", "i8"):
        index = Index(ndim=data.shape[1], metric="ip", dtype=dtype)
        index.add(np.arange(len(data)), data, threads=1)
        out[f"usearch HNSW {dtype}"] = (
            (lambda q, index=index: [int(k) for k in index.search(q, 4, threads=1).keys]),
            index.memory_usage / 2**20)
    return out


def hnsw_designs(data: np.ndarray) -> dict[str, tuple[Search, float]]:
    try:
        import hnswlib
    except ImportError:
        return {}
    index = hnswlib.Index(space="ip", dim=data.shape[1])
    index.init_index(max_elements=len(data), M=16, ef_construction=100)
    index.set_num_threads(1)
    index.add_items(data, np.arange(len(data)))
    index.set_ef(64)
    memory = len(data) * (data.shape[1] * 4 + 16 * 2 * 4 + 8) / 2**20  # estimate
    return {"chroma-hnswlib M16 ef=64": (
        (lambda q: index.knn_query(q, k=4)[0][0].tolist()), memory)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=Path, required=True)
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    entries = np.load(args.vectors / "entries.npy").astype(np.float32)
    queries = np.load(args.vectors / "queries.npy").astype(np.float32)
    results: dict[str, Any] = {"load": os.getloadavg()[0], "sizes": {}}
    print("| entries | design | build s | p50 ms | p95 ms | top-1 = exact | top-4 = exact "
          "| memory MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in (int(s) for s in args.sizes.split(",")):
        data = entries[:size]
        exact = np.argsort(-(queries @ data.T), axis=1)[:, :4]
        point = results["sizes"][str(size)] = {}
        for family in (numpy_designs, faiss_designs, usearch_designs, hnsw_designs):
            t0 = time.perf_counter()
            designs = family(data)
            build = (time.perf_counter() - t0) / max(len(designs), 1)
            for name, (search, memory) in designs.items():
                for q in queries[:10]:
                    search(q)
                times, top1, top4 = [], 0, 0
                for qi, q in enumerate(queries):
                    a = time.perf_counter()
                    found = search(q)
                    times.append((time.perf_counter() - a) * 1e3)
                    top1 += found[0] == exact[qi, 0]
                    top4 += set(found) == set(exact[qi].tolist())
                row = {"build_s": build, "p50_ms": float(np.percentile(times, 50)),
                       "p95_ms": float(np.percentile(times, 95)),
                       "top1": top1 / len(queries), "top4": top4 / len(queries),
                       "memory_mb": memory}
                point[name] = row
                print(f"| {size:,} | {name} | {build:.1f} | {row['p50_ms']:.2f} | "
                      f"{row['p95_ms']:.2f} | {row['top1']:.3f} | {row['top4']:.3f} | "
                      f"{memory:.0f} |", flush=True)
    results["load_after"] = os.getloadavg()[0]
    print(json.dumps(results, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
