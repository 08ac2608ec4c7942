"""Predictive autoscaling against a fixed fleet and a reactive autoscaler, on a trace.

    .venv/bin/python bench/autoscale_sim.py --trace ../shared/data/traces/azure_code_2023.csv

Trace: Azure CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``) or JSONL (``timestamp`` in
ms, ``input_length``, ``output_length``). Load = prompt + output tokens.

1. Forecast error: a rolling-origin backtest of every shipped forecaster on the 10-s token
   series, WAPE and sMAPE (and interval coverage) at 10 s (1 step) and 5 min (30 steps).
2. Fleet simulation (``services.forecasting.simulation``, one-second steps): one worker
   serves C = p99 of the 10-s token load / 8 per 10 s; cold start 60 s, paid from the
   request; a violation second whenever the backlog exceeds 2 s of the ready fleet's
   capacity. Policies, side by side on the same trace:
   - ``static``: ceil(p99 10-s load / C) = 8 workers all the time (sized with hindsight);
   - ``reactive``: KEDA-like, every 30 s, demand over the last 30 s at an 80% target,
     scale down after 5 minutes under 30%;
   - ``ours``: the shipped ``HybridPolicy`` with its default ``PolicyConfig`` every
     ``--period`` s (the ``demand_forecasting`` flow's interval), fed the forecaster the
     backtest picked at the 5-minute horizon, refit at every decision.
   ``static_N`` (context): a fixed fleet of ours' average size, i.e. the same cost.
   Reactive and ours start from the static fleet (a fleet handed over, not a cold start
   from one worker: both would otherwise pay the same warm-up violations).

The last line printed is one JSON object: ``policies`` (replica_seconds,
violation_seconds per policy), ``forecast`` (per forecaster and horizon), the config.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from harness import machine_info, markdown_table, print_json_line

from services.forecasting import PolicyConfig, all_forecasters, backtest, by_name, demand_series
from services.forecasting.series import load_trace
from services.forecasting.simulation import (
    hybrid_controller,
    per_second,
    reactive_controller,
    simulate,
    static_controller,
)
from services.settings import load_settings

HORIZONS = {"10s": 1, "5min": 30}


def main() -> None:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, required=True)
    parser.add_argument("--period", type=int, default=int(settings.scaling_interval_s),
                        help="seconds between decisions of ours")
    parser.add_argument("--stride", type=int, default=3, help="backtest: bins between origins")
    parser.add_argument("--forecaster", default=None,
                        help="use this forecaster for ours instead of the backtest's pick")
    args = parser.parse_args()

    events = load_trace(args.trace)
    series = demand_series(events, "10s")["tokens"]
    p99 = float(np.percentile(series, 99))
    capacity_10s = p99 / 8
    capacity_s = capacity_10s / 10
    static_n = math.ceil(p99 / capacity_10s)
    print(f"trace {args.trace}: {len(events)} requests over {len(series) * 10} s, "
          f"{float((series == 0).mean()):.0%} of 10-s bins empty; C = {capacity_10s:,.0f} "
          f"tokens per 10 s per worker")

    started = time.perf_counter()
    result = backtest(series, all_forecasters(), list(HORIZONS.values()), min_train=60,
                      stride=args.stride)
    backtest_s = time.perf_counter() - started
    forecast: dict[str, dict[str, dict[str, float]]] = {}
    rows = []
    for score in result.scores:
        label = next(k for k, v in HORIZONS.items() if v == score.horizon)
        forecast.setdefault(score.forecaster, {})[label] = {
            "wape": round(score.wape, 4), "smape": round(score.smape, 4),
            "coverage": round(score.coverage, 3), "origins": score.origins}
        rows.append([score.forecaster, label, f"{score.wape:.3f}", f"{score.smape:.3f}",
                     f"{score.coverage:.0%}", score.origins])
    print(markdown_table(["forecaster", "horizon", "WAPE", "sMAPE", "90% PI coverage",
                          "origins"], rows))
    best = result.best(HORIZONS["5min"])
    chosen = args.forecaster or (best.forecaster if best else "last_value")
    print(f"backtest {backtest_s:.0f} s; ours uses {chosen}")

    tokens, requests = per_second(events)
    config = PolicyConfig(min_replicas=1, max_replicas=4 * static_n)
    runs = {
        "static": simulate(tokens, requests, static_controller(static_n),
                           capacity_tokens_s=capacity_s, period_s=30, initial=static_n),
        "reactive": simulate(tokens, requests,
                             reactive_controller(config, capacity_s, 30),
                             capacity_tokens_s=capacity_s, period_s=30, initial=static_n),
    }
    started = time.perf_counter()
    runs["ours"] = simulate(tokens, requests,
                            hybrid_controller("trace", config, by_name(chosen), capacity_s,
                                              args.period),
                            capacity_tokens_s=capacity_s, period_s=args.period,
                            initial=static_n)
    ours_s = time.perf_counter() - started
    # context, not a baseline of the issue: a fixed fleet costing what ours cost
    same_cost = max(1, round(runs["ours"].replica_seconds / len(tokens)))
    runs[f"static_{same_cost}"] = simulate(tokens, requests, static_controller(same_cost),
                                           capacity_tokens_s=capacity_s, period_s=30,
                                           initial=same_cost)
    print(markdown_table(
        ["policy", "replica-seconds", "violation-seconds", "max replicas"],
        [[name, f"{r.replica_seconds:,}", r.violation_seconds, r.max_replicas]
         for name, r in runs.items()]))
    print(f"ours simulated in {ours_s:.0f} s ({len(tokens) // args.period} decisions)")
    print_json_line({
        "bench": "autoscale_sim",
        "trace": str(args.trace),
        "requests": len(events),
        "seconds": len(tokens),
        "capacity_tokens_per_10s": round(capacity_10s, 1),
        "static_replicas": static_n,
        "period_s": args.period,
        "forecaster": chosen,
        "policy_config": config.__dict__,
        "policies": {name: r.summary() for name, r in runs.items()},
        "forecast": forecast,
        "machine": machine_info(),
    })


if __name__ == "__main__":
    main()
