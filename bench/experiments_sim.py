"""Simulated experiments on the real analysis code: false positives under continuous
peeking, power against planted regressions, and the time a canary takes to roll back.

Requests are drawn from real, heavy-tailed data: each request is a row of the Azure LLM
inference trace (code, 2023; ``--trace``), its latency a time to first token drawn from a
log-normal fitted to this repository's measured TTFT (p50 59.4 ms, p95 86.0 ms: the
``prefix_warming`` OFF arm in docs/benchmarks.md) plus the trace's generated tokens
times the tiny model's measured decode time (1000/335 ms per token, DESIGN.md), and its
cost the trace's context and generated tokens at gpt-4o-mini prices. Generated tokens
have p50 13 and p99 251, so latency has the long tail real LLM latency has. Each
request carries its context tokens as ``tokens_in`` (the prompt as the client sent it,
which no config changes): the analysis's CUPED covariate for cost.

Each simulated experiment runs ``--minutes`` looks (the ``experiments`` flow's minute)
with ``--per-minute`` requests per arm per minute. At every look:
- ours: ``services.experiments.analysis.evaluate`` (mSPRT on log latency, winsorised
  CUPED-adjusted cost and error rate, family-wise alpha split over the three
  guardrails), as the flow runs it; a false positive is any guardrail metric
  significant at any look;
- naive: a fixed-horizon Welch t-test per metric (raw values) at alpha 0.05, read at
  every look; a false positive is any metric significant at any look.

Power: the treatment carries one planted regression (latency x1.10, error rate +2
points over a 1% base, cost x1.05); power is the share of experiments whose guardrail
for that metric is breached (the rollback condition) by the last look. The cost case
runs twice, with and without the covariate, to show what CUPED adds.

Rollback: a canary of the +10% latency config at its first step (5% of ``--rps`` total
requests per second); ``rollback_seconds`` is the median time from the canary's start
to the look that breaches its guardrail, plus one gateway refresh interval
(``--refresh-s``, how long replicas take to drop the arm), on the simulated clock.

    .venv/bin/python bench/experiments_sim.py            # 1,000 experiments per case
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.experiments.analysis import ArmData, evaluate
from services.experiments.stats import DEFAULT_GUARDRAILS, sample_size_means, welch_p

ROOT = Path(__file__).resolve().parents[1]
TRACE = next((p / "shared" / "data" / "traces" / "azure_code_2023.csv"
              for p in (ROOT.parent, ROOT.parent.parent)
              if (p / "shared" / "data").is_dir()), Path("azure_code_2023.csv"))
TTFT_P50, TTFT_P95 = 59.4, 86.0
DECODE_MS = 1000 / 335
PRICE_IN, PRICE_OUT = 0.15e-6, 0.60e-6
BASE_ERROR = 0.01


@dataclass
class Population:
    context: np.ndarray
    generated: np.ndarray

    @classmethod
    def load(cls, path: Path) -> Population:
        with path.open() as f:
            rows = list(csv.DictReader(f))
        return cls(np.array([int(r["ContextTokens"]) for r in rows]),
                   np.array([int(r["GeneratedTokens"]) for r in rows]))

    def draw(self, rng: np.random.Generator, n: int, *, latency: float = 1.0,
             cost: float = 1.0, error: float = 0.0, covariate: bool = True) -> ArmData:
        idx = rng.integers(0, len(self.context), n)
        sigma = math.log(TTFT_P95 / TTFT_P50) / 1.645
        ttft = rng.lognormal(math.log(TTFT_P50), sigma, n)
        lat = (ttft + self.generated[idx] * DECODE_MS) * latency
        usd = (self.context[idx] * PRICE_IN + self.generated[idx] * PRICE_OUT) * cost
        errors = rng.random(n) < BASE_ERROR + error
        return ArmData(latency_ms=lat, cost_usd=usd, errors=int(errors.sum()), requests=n,
                       tokens_in=self.context[idx].astype(float) if covariate else np.empty(0))


def run(pop: Population, rng: np.random.Generator, minutes: int, per_minute: tuple[int, int],
        planted: dict[str, float], alpha: float, covariate: bool = True) -> dict[str, object]:
    """One experiment: the looks at which ours / naive first rejected, per metric."""
    control = ArmData.empty()
    treatment = ArmData.empty()
    ours_first: dict[str, int] = {}
    breach_first: dict[str, int] = {}
    naive_first: dict[str, int] = {}
    previous: dict[str, float] = {}
    for minute in range(1, minutes + 1):
        control = control.extend(pop.draw(rng, per_minute[0], covariate=covariate))
        treatment = treatment.extend(pop.draw(rng, per_minute[1], covariate=covariate,
                                              **planted))
        result = evaluate(control, treatment, DEFAULT_GUARDRAILS, alpha=alpha,
                          previous_p=previous)
        for c in result.comparisons:
            previous[c.metric] = c.p_value
            if c.p_value < result.alpha_per_metric:
                ours_first.setdefault(c.metric, minute)
        for metric in result.breached:
            breach_first.setdefault(metric, minute)
        naive = {
            "latency_ms": welch_p(control.latency_ms, treatment.latency_ms),
            "cost_usd": welch_p(control.cost_usd, treatment.cost_usd),
            "error_rate": welch_p(control.error_flags(), treatment.error_flags()),
        }
        for metric, p in naive.items():
            if p < alpha:
                naive_first.setdefault(metric, minute)
    return {"ours": ours_first, "breach": breach_first, "naive": naive_first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--per-minute", type=int, default=200, help="requests per arm")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--rps", type=float, default=20.0, help="canary case: total req/s")
    parser.add_argument("--canary-share", type=float, default=0.05)
    parser.add_argument("--refresh-s", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    pop = Population.load(args.trace)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    n = args.experiments
    both = (args.per_minute, args.per_minute)

    aa = [run(pop, rng, args.minutes, both, {}, args.alpha) for _ in range(n)]
    aa_ours = sum(bool(r["ours"]) for r in aa) / n
    aa_naive = sum(bool(r["naive"]) for r in aa) / n
    per_metric = {m: (sum(m in r["ours"] for r in aa) / n, sum(m in r["naive"] for r in aa) / n)
                  for m in ("latency_ms", "error_rate", "cost_usd")}

    plants = {"latency_ms": {"latency": 1.10}, "error_rate": {"error": 0.02},
              "cost_usd": {"cost": 1.05}}
    power: dict[str, float] = {}
    looks: dict[str, float | None] = {}
    cases = [(m, m, p, True) for m, p in plants.items()]
    cases.append(("cost_usd without CUPED", "cost_usd", plants["cost_usd"], False))
    for case, metric, plant, covariate in cases:
        runs = [run(pop, rng, args.minutes, both, plant, args.alpha, covariate)
                for _ in range(n)]
        hit = [r["breach"][metric] for r in runs if metric in r["breach"]]
        power[case] = len(hit) / n
        looks[case] = float(np.median(hit)) if hit else None

    per_min_total = args.rps * 60
    canary = (round(per_min_total * (1 - args.canary_share)),
              round(per_min_total * args.canary_share))
    rollbacks = []
    for _ in range(n):
        r = run(pop, rng, args.minutes, canary, plants["latency_ms"], args.alpha)
        if "latency_ms" in r["breach"]:
            rollbacks.append(r["breach"]["latency_ms"] * 60 + args.refresh_s)
    rollback_s = float(np.median(rollbacks)) if rollbacks else None

    sample = pop.draw(rng, 20000)
    log_sd = float(np.log(sample.latency_ms).std())
    needed = {f"latency_ms (fixed horizon, log sd {log_sd:.2f})":
              sample_size_means(log_sd, math.log(1.10), alpha=args.alpha)}

    print(f"{n} experiments per case, {args.minutes} looks of {args.per_minute} requests "
          f"per arm ({args.minutes * args.per_minute} per arm at the end), alpha {args.alpha}")
    print("| metric | A/A FPR ours | A/A FPR naive (Welch, every look) | planted | power ours "
          "| median looks to breach | samples per arm at breach |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    labels = {"latency_ms": "latency x1.10", "error_rate": "error +2 pts",
              "cost_usd": "cost x1.05"}
    for case, metric, _, _ in cases:
        ours, naive = per_metric[metric]
        look = looks[case]
        print(f"| {case} | {ours:.3f} | {naive:.3f} | {labels[metric]} | {power[case]:.3f} "
              f"| {look if look is not None else '-'} | "
              f"{int(look * args.per_minute) if look is not None else '-'} |")
    print(f"| any metric | **{aa_ours:.3f}** | **{aa_naive:.3f}** | | | | |")
    print(f"fixed-horizon samples per arm for latency x1.10 at 80% power: {needed}")
    print(f"canary at {args.canary_share:.0%} of {args.rps} req/s, latency x1.10: rolled back "
          f"in {len(rollbacks)}/{n}; median {rollback_s} s (flow every 60 s, refresh "
          f"{args.refresh_s} s)")
    print(f"wall time {time.perf_counter() - started:.1f} s")
    print(json.dumps({
        "aa_false_positive_rate": aa_ours,
        "naive_false_positive_rate": aa_naive,
        "power": {"latency_10pct": power["latency_ms"], "error_rate_2pts": power["error_rate"],
                  "cost_5pct": power["cost_usd"],
                  "cost_5pct_without_cuped": power["cost_usd without CUPED"]},
        "rollback_seconds": rollback_s,
        "experiments": n,
    }))


if __name__ == "__main__":
    main()
