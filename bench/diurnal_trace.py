"""A synthetic diurnal trace built from a real one, for bench/autoscale_sim.py.

    .venv/bin/python bench/diurnal_trace.py --source ../shared/data/traces/azure_code_2023.csv \
        --out data/traces/diurnal_6h.jsonl

Recipe (seeded, so the same arguments write the same file):

1. The source trace is cut into ``--block-s`` blocks (5 minutes); blocks are drawn with
   replacement and laid end to end until ``--hours`` are covered. Inside a block the
   requests keep their offsets and token counts, so the bursts and the prompt/output
   token distribution are the source's.
2. One day is compressed into ``--hours``: a request at second ``t`` is kept with
   probability ``night + (1 - night) * (1 - cos(2 pi t / day)) / 2``, so the trace starts
   at midnight (``--night`` of the source's rate), peaks at the source's rate half way
   and falls back. Thinning keeps the arrival pattern of what remains: at night the
   bursts are fewer and smaller, not moved.

Output: JSONL, one request a line, ``timestamp`` (ms from the start), ``input_length``,
``output_length`` (the loader's Mooncake-style format).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from services.forecasting.series import load_trace


def diurnal(events: pd.DataFrame, *, hours: float, night: float, block_s: int,
            seed: int) -> pd.DataFrame:
    """Requests (``offset_s``, ``prompt_tokens``, ``output_tokens``) of the recipe above."""
    if not 0 <= night <= 1:
        raise ValueError("night must be in [0, 1]")
    if hours <= 0 or block_s <= 0:
        raise ValueError("hours and block_s must be positive")
    offsets = (events["timestamp"] - events["timestamp"].iloc[0]).dt.total_seconds()
    block = (offsets // block_s).astype(int)
    whole = int(offsets.iloc[-1] // block_s)  # the last, partial block is left out
    if whole < 1:
        raise ValueError(f"the source trace is shorter than one {block_s}-s block")
    rng = np.random.default_rng(seed)
    day_s = hours * 3600
    parts = []
    for slot in range(int(np.ceil(day_s / block_s))):
        drawn = int(rng.integers(whole))
        chosen = block == drawn
        parts.append(pd.DataFrame({
            "offset_s": offsets[chosen].to_numpy() - drawn * block_s + slot * block_s,
            "prompt_tokens": events["prompt_tokens"][chosen].to_numpy(),
            "output_tokens": events["output_tokens"][chosen].to_numpy()}))
    trace = pd.concat(parts, ignore_index=True)
    trace = trace[trace["offset_s"] < day_s]
    keep = night + (1 - night) * (1 - np.cos(2 * np.pi * trace["offset_s"] / day_s)) / 2
    return trace[rng.random(len(trace)) < keep].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hours", type=float, default=6.0, help="one compressed day")
    parser.add_argument("--night", type=float, default=0.1,
                        help="the quietest rate as a share of the source's")
    parser.add_argument("--block-s", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    trace = diurnal(load_trace(args.source), hours=args.hours, night=args.night,
                    block_s=args.block_s, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as out:
        for row in trace.itertuples(index=False):
            out.write(json.dumps({"timestamp": round(row.offset_s * 1000),
                                  "input_length": int(row.prompt_tokens),
                                  "output_length": int(row.output_tokens)}) + "\n")
    print(f"wrote {len(trace)} requests over {args.hours:g} h to {args.out}")


if __name__ == "__main__":
    main()
