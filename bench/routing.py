"""Complexity router: cost saved at 95% of the strong model's quality, against a random
router and an oracle, and the router's latency per request.

    .venv/bin/python bench/routing.py --data ../shared/data/routing/routellm_mmlu/responses
    .venv/bin/python bench/routing.py --data ../shared/data/routing/routellm_mmlu/responses --cv

Data: every CSV under ``--data`` with a ``prompt`` column and one boolean correctness
column per model (extra columns ignored); the weak and strong models are the least and
most accurate columns unless ``--weak``/``--strong`` name them.

Default mode evaluates the router exactly as shipped (``complexity-router-v1.npz``,
trained only on the dev MMLU data; ``--model`` evaluates another file). ``--cv`` instead
runs the subject-split cross-validation on the data: every prompt is scored by a router
trained (same features, same training code) on other files only, so it is tested on
subjects it never saw.

Cost: each call is priced from the catalog (``--strong-price``, ``--weak-price``: by
default gpt-4-1106-preview and Mixtral-8x7B) on its prompt's tokens (chars / 4) and
``--output-tokens`` answer tokens. Cost saved is against sending everything to the
strong model. The random router sends a random subset of the same size to the strong
model (mean of 20 draws); the oracle sends only the prompts the weak model gets wrong
and the strong one right.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from harness import load_average, machine_info, markdown_table, print_json_line

from services.costs import PriceCatalog
from services.routing.data import RoutingData, load_routing_data
from services.routing.router import SHIPPED_MODEL, ComplexityRouter, relative_cost
from services.routing.train import (
    CurvePoint,
    cheapest_at,
    feature_matrix,
    out_of_fold_scores,
    routing_curve,
)
from services.settings import load_settings

FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
RANDOM_DRAWS = 20


def call_costs(
    data: RoutingData, model: str, catalog: PriceCatalog, output_tokens: int
) -> np.ndarray:
    tokens = np.asarray([max(1, len(p) // 4) for p in data.prompts])
    rates = catalog.price(model)
    return tokens * rates.input_usd_per_token + output_tokens * rates.output_usd_per_token


def at_fraction(points: Sequence[CurvePoint], fraction: float) -> CurvePoint:
    return points[round(fraction * (len(points) - 1))]


def random_curve(
    data: RoutingData, weak: str, strong: str, costs: tuple[np.ndarray, np.ndarray]
) -> list[CurvePoint]:
    """Mean curve of ``RANDOM_DRAWS`` random orders."""
    rng = np.random.default_rng(0)
    curves = [
        routing_curve(rng.random(len(data.prompts)), data.correct[weak], data.correct[strong],
                      *costs)
        for _ in range(RANDOM_DRAWS)
    ]
    return [
        CurvePoint(
            strong_fraction=points[0].strong_fraction,
            accuracy=float(np.mean([p.accuracy for p in points])),
            quality=float(np.mean([p.quality for p in points])),
            cost_saved=float(np.mean([p.cost_saved for p in points])),
            threshold=float("nan"),
        )
        for points in zip(*curves, strict=True)
    ]


def latency_ms(router: ComplexityRouter, prompts: Sequence[str], n: int) -> dict[str, float]:
    sample = [prompts[i] for i in np.random.default_rng(1).permutation(len(prompts))[:n]]
    for prompt in sample[:50]:  # warm up
        router.decide(prompt)
    timings, cpu = [], []
    for prompt in sample:
        started, started_cpu = time.perf_counter(), time.thread_time()
        router.decide(prompt)
        cpu.append((time.thread_time() - started_cpu) * 1000)
        timings.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": float(np.percentile(timings, 50)),
        "p95_ms": float(np.percentile(timings, 95)),
        "p99_ms": float(np.percentile(timings, 99)),
        "cpu_p50_ms": float(np.percentile(cpu, 50)),
        "cpu_p95_ms": float(np.percentile(cpu, 95)),
        "load_average_1m": load_average(),
        "mean_prompt_chars": float(np.mean([len(p) for p in sample])),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="CSV file or folder of CSVs")
    parser.add_argument("--cv", action="store_true", help="subject-split cross-validation")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--weak")
    parser.add_argument("--strong")
    parser.add_argument("--weak-price", default="Mixtral-8x7B")
    parser.add_argument("--strong-price", default="gpt-4-1106-preview")
    parser.add_argument("--output-tokens", type=int, default=1)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--latency-samples", type=int, default=2000)
    args = parser.parse_args(argv)

    data = load_routing_data(args.data)
    weak, strong = data.pick_pair(args.weak, args.strong)
    catalog = PriceCatalog.from_settings(load_settings())
    costs = (
        call_costs(data, args.weak_price, catalog, args.output_tokens),
        call_costs(data, args.strong_price, catalog, args.output_tokens),
    )
    router = ComplexityRouter.load(args.model)
    if args.cv:
        x = feature_matrix(data.prompts)
        p_strong = out_of_fold_scores(data, x, ~data.correct[weak], folds=args.folds,
                                      c=float(router.meta.get("C", 0.5)))
        pad = float(router.meta.get("pad_tokens", 3.0))
        scores = p_strong / np.asarray([relative_cost(len(p), pad) for p in data.prompts])
        mode = f"{args.folds}-fold subject-split CV"
    else:
        scores = np.asarray([router.priority(p)[1] for p in data.prompts])
        mode = f"shipped router {args.model.name}"
    weak_ok, strong_ok = data.correct[weak], data.correct[strong]
    curves = {
        "router": routing_curve(scores, weak_ok, strong_ok, *costs),
        "random": random_curve(data, weak, strong, costs),
        "oracle": routing_curve((strong_ok & ~weak_ok).astype(float), weak_ok, strong_ok,
                                *costs),
    }
    at_target = {name: cheapest_at(points, args.target) for name, points in curves.items()}
    threshold = router.threshold(args.target)
    sent = scores >= threshold
    operating = next(
        p for p in curves["router"] if p.strong_fraction >= sent.mean() - 1e-12
    ) if not args.cv else None
    latency = latency_ms(router, data.prompts, args.latency_samples)

    print(f"# {mode} on {args.data} ({len(data.prompts)} prompts, "
          f"{len(set(data.groups))} files); weak {weak} ({data.accuracy(weak):.3f}), "
          f"strong {strong} ({data.accuracy(strong):.3f})")
    print(f"# prices: weak {args.weak_price}, strong {args.strong_price} "
          f"(weak/strong cost ratio {costs[0].sum() / costs[1].sum():.3f})")
    print(markdown_table(
        [f"router at {args.target:.0%} quality", "strong calls", "accuracy", "quality",
         "cost saved"],
        [[name, f"{p.strong_fraction:.1%}", p.accuracy, f"{p.quality:.1%}",
          f"{p.cost_saved:.1%}"] for name, p in at_target.items()],
    ))
    print()
    print(markdown_table(
        ["strong calls", "router acc", "random acc", "oracle acc", "router saved"],
        [[f"{f:.0%}", at_fraction(curves["router"], f).accuracy,
          at_fraction(curves["random"], f).accuracy, at_fraction(curves["oracle"], f).accuracy,
          f"{at_fraction(curves['router'], f).cost_saved:.1%}"] for f in FRACTIONS],
    ))
    if operating is not None:
        print(f"\nshipped threshold {threshold:.3f}: {operating.strong_fraction:.1%} strong "
              f"calls, quality {operating.quality:.1%}, cost saved {operating.cost_saved:.1%}")
    print(f"router latency: p50 {latency['p50_ms']:.2f} ms, p95 {latency['p95_ms']:.2f} ms "
          f"wall; CPU time p50 {latency['cpu_p50_ms']:.2f} ms, p95 {latency['cpu_p95_ms']:.2f} ms "
          f"(mean prompt {latency['mean_prompt_chars']:.0f} chars, load average "
          f"{latency['load_average_1m']:.1f} on {machine_info()['nproc']} cores)")
    router_saved = at_target["router"].cost_saved
    span = at_target["oracle"].cost_saved - at_target["random"].cost_saved
    print_json_line({
        "benchmark": "routing",
        "mode": "cv" if args.cv else "shipped",
        "data": str(args.data),
        "prompts": len(data.prompts),
        "weak": weak,
        "strong": strong,
        "target_quality": args.target,
        "cost_saved_at_95": router_saved,
        "random_cost_saved_at_95": at_target["random"].cost_saved,
        "oracle_cost_saved_at_95": at_target["oracle"].cost_saved,
        "position_random_to_oracle": (
            (router_saved - at_target["random"].cost_saved) / span if span > 0 else None
        ),
        "strong_fraction_at_95": at_target["router"].strong_fraction,
        "shipped_threshold": threshold,
        "shipped_operating_point": operating.__dict__ if operating else None,
        "curve": [
            {"strong_fraction": f, **{
                f"{name}_accuracy": at_fraction(points, f).accuracy
                for name, points in curves.items()
            }, "router_cost_saved": at_fraction(curves["router"], f).cost_saved}
            for f in FRACTIONS
        ],
        "latency": latency,
        "machine": machine_info(),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
