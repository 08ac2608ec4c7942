"""Query-embedding encoders side by side: time per query (wall and CPU) and fidelity.

    .venv/bin/python bench/embedding_encoders.py --pairs ../shared/data/cache/qqp_pairs_dev.json

The encoders of ``services.embeddings`` (NumPy reference, ONNX Runtime fp32 and int8)
plus one probe: the NumPy forward with layer 0's weights reused by all six layers
("numpy, one layer's weights x6"). It reads 7 MB of weights per query instead of 42 MB
and does the same arithmetic, so if the single-query forward were bound by streaming
weights from DRAM it would be markedly faster. Every encoder embeds every query, in turn,
on one thread; CPU time (``time.thread_time``) is what the encoder costs, wall time adds
the waiting for a core on a shared machine. Fidelity: cosine of each encoder's embedding
to the NumPy fp32 one over both texts of the first ``--fidelity`` pairs.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from harness import load_average, machine_info, markdown_table, print_json_line

from services.caching.semantic.corpus import load_pairs
from services.embeddings import ENCODER_KINDS, MiniLMEncoder, default_encoder

QUERY_TEMPLATE = "Can someone tell me: {q}"  # as bench/semantic_cache.py --latency


def one_layer_probe() -> MiniLMEncoder:
    """The NumPy encoder with every layer computing with layer 0's weight arrays."""
    probe = MiniLMEncoder()
    weights = probe._w  # a measurement probe, not an API
    for key in [k for k in weights if k.startswith("encoder.layer.0.")]:
        for i in range(1, probe._layers):
            weights[key.replace("layer.0.", f"layer.{i}.", 1)] = weights[key]
    return probe


def timed(encoders: dict[str, Callable[[str], np.ndarray]], queries: Sequence[str],
          ) -> dict[str, dict[str, float]]:
    wall: dict[str, list[float]] = {name: [] for name in encoders}
    cpu: dict[str, list[float]] = {name: [] for name in encoders}
    for text in queries:
        for name, encode in encoders.items():
            a, c = time.perf_counter(), time.thread_time()
            encode(text)
            cpu[name].append((time.thread_time() - c) * 1e3)
            wall[name].append((time.perf_counter() - a) * 1e3)
    return {name: {"wall_p50": float(np.percentile(wall[name], 50)),
                   "wall_p95": float(np.percentile(wall[name], 95)),
                   "cpu_p50": float(np.percentile(cpu[name], 50)),
                   "cpu_p95": float(np.percentile(cpu[name], 95))} for name in encoders}


def main(argv: Sequence[str] | None = None) -> int:
    if os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", required=True, help="QQP-format or GPTCache mock pairs")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--fidelity", type=int, default=2000, help="pairs for the cosines")
    args = parser.parse_args(argv)
    _, pairs = load_pairs(args.pairs)
    encoders = {kind: default_encoder(kind) for kind in ENCODER_KINDS}
    reference = encoders["numpy"]
    texts = [t for p in pairs[: args.fidelity] for t in (p.text_a, p.text_b)]
    ref = reference.encode(texts)
    fidelity = {}
    for kind, encoder in encoders.items():
        cosine = (encoder.encode(texts) * ref).sum(1)
        fidelity[kind] = {"mean": float(cosine.mean()), "min": float(cosine.min()),
                          "p01": float(np.percentile(cosine, 1))}
    step = max(1, len(pairs) // args.queries)
    queries = [QUERY_TEMPLATE.format(q=p.text_b) for p in pairs[::step][: args.queries]]
    calls = {kind: e.encode_one for kind, e in encoders.items()}
    calls["numpy, one layer's weights x6"] = one_layer_probe().encode_one
    for text in queries[:10]:
        for encode in calls.values():
            encode(text)
    load_before = load_average()
    times = timed(calls, queries)
    load_after = load_average()
    base = times["numpy"]["cpu_p50"]
    rows = [[name, t["wall_p50"], t["wall_p95"], t["cpu_p50"], t["cpu_p95"],
             f"{base / t['cpu_p50']:.2f}x",
             *(f"{fidelity[name][k]:.5f}" if name in fidelity else "-" for k in ("mean", "min"))]
            for name, t in times.items()]
    print(f"# {len(queries)} queries, {len(texts)} texts for fidelity, "
          f"load 1-min {load_before:.2f} / {load_after:.2f}")
    print(markdown_table(["encoder", "wall p50 ms", "wall p95 ms", "CPU p50 ms", "CPU p95 ms",
                          "CPU vs numpy", "cosine to fp32: mean", "min"], rows))
    result: dict[str, Any] = {"queries": len(queries), "fidelity_texts": len(texts),
                              "times_ms": times, "fidelity": fidelity,
                              "load_before": load_before, "load_after": load_after,
                              "machine": machine_info()}
    print()
    print_json_line(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
