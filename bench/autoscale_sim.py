"""Predictive autoscaling against a fixed fleet and a reactive autoscaler, on a trace.

    .venv/bin/python bench/autoscale_sim.py --trace ../shared/data/traces/azure_code_2023.csv

Trace: Azure CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``) or JSONL (``timestamp`` in
ms, ``input_length``, ``output_length``). Load = prompt + output tokens.

1. Forecast error: a rolling-origin backtest of every shipped forecaster on the 10-s token
   series, WAPE and sMAPE (and interval coverage) at 10 s (1 step) and 5 min (30 steps);
   and on the same tokens summed per minute, at 1 and 5 minutes ahead.
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
   ``--window START:END`` also counts these runs on those seconds only (the controllers
   still see everything before them as history).
   Reactive and ours start from the static fleet (a fleet handed over, not a cold start
   from one worker: both would otherwise pay the same warm-up violations).

3. ``--tune-on first|second``: an out-of-sample check. The trace is cut in two halves;
   on the tuning half the backtest picks the forecaster and a grid of ours' knobs (safety
   margin = ``predictive_utilisation``, scale-down ``stabilisation_s``, burst memory off
   or on) is simulated; three rules each pick a setting from those runs alone (``select``:
   ``p99``, the cheapest with no more violation-seconds than the half's p99 fleet;
   ``frontier``, the one furthest inside the half's static curve; ``robust``, the same on
   the worst of three sub-windows). Every policy then runs over the whole trace (ours
   sees the tuning half only as history) and is judged on the other half only: static
   sized at that half's p99 (hindsight), reactive, ours as each rule chose it, with the
   target's two tests, and the trade-off curve
   (static 3-10 workers, reactive at several targets, ours' whole grid).

The last line printed is one JSON object: ``policies`` (replica_seconds,
violation_seconds per policy), ``forecast`` (per forecaster and horizon), the config.
"""

from __future__ import annotations

import argparse
import dataclasses
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
MINUTE_HORIZONS = {"1min": 1, "5min": 5}
MARGINS = (1.0, 0.85, 0.7, 0.55)  # predictive_utilisation: the forecast's bound / this
STABILISATION_S = (60.0, 300.0, 600.0)
BURST_HALF_LIVES = (None, 600.0)  # burst memory off, or a 10-minute half-life
STATIC_CURVE = range(3, 11)
REACTIVE_TARGETS = (0.8, 0.5, 0.3, 0.2)
RULES = ("p99", "frontier", "robust")
ROBUST_WINDOWS = 3


def main() -> None:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, required=True)
    parser.add_argument("--period", type=int, default=int(settings.scaling_interval_s),
                        help="seconds between decisions of ours")
    parser.add_argument("--stride", type=int, default=3, help="backtest: bins between origins")
    parser.add_argument("--forecaster", default=None,
                        help="use this forecaster for ours instead of the backtest's pick")
    parser.add_argument("--tune-on", choices=["first", "second"], default=None,
                        help="tune ours on this half of the trace, judge on the other")
    parser.add_argument("--window", type=window_arg, default=None, metavar="START:END",
                        help="also count the whole-trace runs on seconds START to END only")
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
    result, forecast = forecast_errors(series, HORIZONS, min_train=60, stride=args.stride)
    backtest_s = time.perf_counter() - started
    # the same series summed per minute: the grain at which bursts average out
    per_minute = demand_series(events, "1min")["tokens"]
    _, forecast_minute = forecast_errors(per_minute, MINUTE_HORIZONS, min_train=30, stride=1)
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
    episodes = backlog_episodes(tokens, static_n * capacity_s)
    print(f"backlog episodes under the static fleet of {static_n}: {len(episodes)}, "
          f"median {np.median(episodes):.0f} s, longest {episodes.max()} s, "
          f"{int((episodes > config.cold_start_s).sum())} longer than the "
          f"{config.cold_start_s:.0f}-s cold start")
    window = None
    if args.window:
        start, end = args.window
        if end > len(tokens):
            parser.error(f"--window ends at {end} s, after the trace's {len(tokens)} s")
        window = {name: r.summary(start, end) for name, r in runs.items()}
        verdicts = verdict(window["ours"], window["static"], window["reactive"])
        print(f"seconds {start}-{end} of the same runs (static {static_n}); ours beats static "
              f"on both axes: {verdicts[0]}; dominates reactive: {verdicts[1]}")
        print(markdown_table(["policy", "replica-seconds", "violation-seconds"],
                             [[name, f"{r['replica_seconds']:,}", r["violation_seconds"]]
                              for name, r in window.items()]))
    held_out = None
    if args.tune_on:
        held_out = tune_and_judge(series, tokens, requests, capacity_s, config, args)
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
        "forecast_per_minute": forecast_minute,
        "backlog_episodes_s": {"count": len(episodes), "median": float(np.median(episodes)),
                               "max": int(episodes.max())},
        "window": None if window is None else {"seconds": list(args.window), **window},
        "held_out": held_out,
        "machine": machine_info(),
    })


def backlog_episodes(tokens: np.ndarray, capacity_s: float) -> np.ndarray:
    """Lengths (s) of the runs of seconds with work waiting, for a fixed fleet serving
    ``capacity_s`` tokens/s: a worker asked for when a backlog appears is ready only
    after the cold start, so capacity added for a backlog helps only the longer ones."""
    backlog, run, lengths = 0.0, 0, []
    for arrived in tokens:
        backlog = max(0.0, backlog + arrived - capacity_s)
        if backlog > 0:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return np.array(lengths + ([run] if run else []) or [0])


def window_arg(text: str) -> tuple[int, int]:
    """``START:END`` in whole seconds from the trace's start, START < END."""
    try:
        start, end = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:END in seconds, got {text!r}") \
            from None
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError(f"need 0 <= START < END, got {text!r}")
    return start, end


def forecast_errors(series, horizons: dict[str, int], *, min_train: int, stride: int):
    """Rolling-origin backtest of every forecaster on ``series`` at ``horizons`` (label ->
    steps), printed as a table; the result and its JSON form."""
    result = backtest(series, all_forecasters(), list(horizons.values()),
                      min_train=min_train, stride=stride)
    forecast: dict[str, dict[str, dict[str, float]]] = {}
    rows = []
    for score in result.scores:
        label = next(k for k, v in horizons.items() if v == score.horizon)
        forecast.setdefault(score.forecaster, {})[label] = {
            "wape": round(score.wape, 4), "smape": round(score.smape, 4),
            "coverage": round(score.coverage, 3), "origins": score.origins}
        rows.append([score.forecaster, label, f"{score.wape:.3f}", f"{score.smape:.3f}",
                     f"{score.coverage:.0%}", score.origins])
    print(markdown_table(["forecaster", "horizon", "WAPE", "sMAPE", "90% PI coverage",
                          "origins"], rows))
    return result, forecast


def setting(config: PolicyConfig) -> str:
    burst = "-" if config.burst_half_life_s is None else f"{config.burst_half_life_s:.0f}"
    return f"{config.predictive_utilisation}/{config.stabilisation_s:.0f}/{burst}"


def static_cost(static: list[dict[str, int]], violations: float) -> float:
    """Replica-seconds a fixed fleet needs for ``violations`` violation-seconds: the
    static curve (one summary per fleet size) interpolated, clamped at its ends."""
    best: dict[int, int] = {}
    for point in static:
        v = point["violation_seconds"]
        best[v] = min(best.get(v, point["replica_seconds"]), point["replica_seconds"])
    xs = sorted(best)
    return float(np.interp(violations, xs, [best[x] for x in xs]))


def select(rule: str, tried, static_runs: dict[int, object], tune: tuple[int, int],
           p99_fleet: int):
    """The setting a rule picks from the tuning half's runs (``tried``: config, SimResult).

    - ``p99``: the cheapest with no more violation-seconds than the half's p99 fleet
      (else the fewest violation-seconds);
    - ``frontier``: the one furthest inside the half's static curve: least
      replica-seconds over what a fixed fleet with as many violation-seconds costs;
    - ``robust``: ``frontier`` scored on each of ``ROBUST_WINDOWS`` equal sub-windows of
      the half, the one whose worst sub-window is best.
    """
    def summary(result, window):
        return result.summary(*window)

    if rule == "p99":
        bar = summary(static_runs[p99_fleet], tune)["violation_seconds"]
        scored = [(c, summary(r, tune)) for c, r in tried]
        feasible = [t for t in scored if t[1]["violation_seconds"] <= bar]
        return (min(feasible, key=lambda t: t[1]["replica_seconds"]) if feasible else
                min(scored, key=lambda t: (t[1]["violation_seconds"],
                                           t[1]["replica_seconds"])))[0]
    parts = 1 if rule == "frontier" else ROBUST_WINDOWS
    edges = np.linspace(tune[0], tune[1], parts + 1).astype(int)
    windows = list(zip(edges[:-1], edges[1:], strict=True))

    def score(result) -> float:
        ratios = []
        for window in windows:
            own = summary(result, window)
            cost = static_cost([summary(r, window) for r in static_runs.values()],
                               own["violation_seconds"])
            ratios.append(own["replica_seconds"] / cost if cost else math.inf)
        return max(ratios)

    return min(tried, key=lambda t: (score(t[1]), summary(t[1], tune)["replica_seconds"]))[0]


def tune_and_judge(series, tokens: np.ndarray, requests: np.ndarray, capacity_s: float,
                   base: PolicyConfig, args: argparse.Namespace) -> dict[str, object]:
    """Tune ours on one half of the trace, judge every policy on the other (see 3. above)."""
    split = len(tokens) // 2 // 10 * 10  # on a 10-s bin boundary
    tune, judge = ((0, split), (split, len(tokens))) if args.tune_on == "first" else \
        ((split, len(tokens)), (0, split))
    whole = (0, len(tokens))

    def bins(part):
        return series.iloc[part[0] // 10: part[1] // 10]

    def fleet(part):  # the p99 fleet of a part, sized with hindsight
        return math.ceil(float(np.percentile(bins(part), 99)) / (capacity_s * 10))

    def run(controller, part, period, initial):
        return simulate(tokens[part[0]:part[1]], requests[part[0]:part[1]], controller,
                        capacity_tokens_s=capacity_s, period_s=period, initial=initial)

    def ours(config, part, initial):
        return run(hybrid_controller("trace", config, forecaster, capacity_s, args.period),
                   part, args.period, initial)

    picked = backtest(bins(tune), all_forecasters(), [HORIZONS["5min"]], min_train=60,
                      stride=args.stride).best(HORIZONS["5min"])
    forecaster = by_name(args.forecaster or (picked.forecaster if picked else "last_value"))
    grid = [dataclasses.replace(base, predictive_utilisation=m, stabilisation_s=st,
                                burst_half_life_s=half_life)
            for half_life in BURST_HALF_LIVES for m in MARGINS for st in STABILISATION_S]
    tune_static = fleet(tune)
    # the static curve over the whole trace, summarised on either half (a fixed fleet
    # has no state, so this equals running it on the half alone)
    static_runs = {n: run(static_controller(n), whole, 30, n)
                   for n in range(1, 2 * max(tune_static, fleet(judge)) + 1)}
    # ours on the tuning half only (it has no other history while tuned)
    tried = [(config, ours(config, tune, tune_static)) for config in grid]
    chosen = {rule: select(rule, tried, {n: _shift(r, tune) for n, r in static_runs.items()},
                           (0, tune[1] - tune[0]), tune_static) for rule in RULES}
    print(f"tuned on the {args.tune_on} half with {forecaster.name}: p99 fleet "
          f"{tune_static} = {static_runs[tune_static].summary(*tune)}; chosen "
          + ", ".join(f"{rule} {setting(c)}" for rule, c in chosen.items()))
    print(markdown_table(["margin/stabilisation/burst half-life", "replica-seconds",
                          "violation-seconds"],
                         [[setting(c), f"{r.replica_seconds:,}", r.violation_seconds]
                          for c, r in tried]))

    judge_static = fleet(judge)

    def judged(result):
        return result.summary(*judge)

    curve: list[dict[str, object]] = []
    for n in STATIC_CURVE:
        curve.append({"policy": "static", "setting": n, **judged(static_runs[n])})
    for target in REACTIVE_TARGETS:
        config = dataclasses.replace(base, target_utilisation=target)
        curve.append({"policy": "reactive", "setting": target, **judged(run(
            reactive_controller(config, capacity_s, 30), whole, 30, judge_static))})
    for config in grid:
        curve.append({"policy": "ours", "setting": setting(config),
                      **judged(ours(config, whole, judge_static))})

    def find(policy, label):
        return next({k: v for k, v in c.items() if k not in ("policy", "setting")}
                    for c in curve if c["policy"] == policy and c["setting"] == label)

    static = find("static", judge_static) if judge_static in STATIC_CURVE else \
        judged(static_runs[judge_static])
    reactive = find("reactive", 0.8)
    policies = {"static": static,
                f"static ({tune_static}, the tuning half's p99)": judged(
                    static_runs[tune_static]),
                "reactive": reactive}
    verdicts = {}
    for rule, config in chosen.items():
        name = f"ours ({rule})"
        policies[name] = result = find("ours", setting(config))
        verdicts[name] = verdict(result, static, reactive)
    print(f"judged on seconds {judge[0]}-{judge[1]}; static = p99 fleet of that half "
          f"({judge_static})")
    print(markdown_table(["policy", "replica-seconds", "violation-seconds",
                          "beats static on both axes", "dominates reactive"],
                         [[name, f"{r['replica_seconds']:,}", r["violation_seconds"],
                           *verdicts.get(name, ("", ""))] for name, r in policies.items()]))
    print(markdown_table(["policy", "setting", "replica-seconds", "violation-seconds"],
                         [[c["policy"], c["setting"], f"{c['replica_seconds']:,}",
                           c["violation_seconds"]] for c in curve]))
    return {"tune_on": args.tune_on, "tune_seconds": list(tune), "judge_seconds": list(judge),
            "forecaster": forecaster.name, "tune_static_replicas": tune_static,
            "chosen": {rule: setting(c) for rule, c in chosen.items()},
            "tuning": [{"setting": setting(c), **r.summary()} for c, r in tried],
            "static_replicas": judge_static, "policies": policies,
            "verdicts": {k: {"beats_static": a, "dominates_reactive": b}
                         for k, (a, b) in verdicts.items()},
            "curve": curve}


def verdict(ours: dict[str, int], static: dict[str, int], reactive: dict[str, int]
            ) -> tuple[str, str]:
    """The target's two tests: fewer replica- and violation-seconds than the static
    fleet; fewer violation-seconds than reactive at no more replica-seconds."""
    beats = (ours["replica_seconds"] < static["replica_seconds"]
             and ours["violation_seconds"] < static["violation_seconds"])
    dominates = (ours["replica_seconds"] <= reactive["replica_seconds"]
                 and ours["violation_seconds"] < reactive["violation_seconds"])
    return ("yes" if beats else "no"), ("yes" if dominates else "no")


def _shift(result, part: tuple[int, int]):
    """A whole-trace run seen as if it had run on ``part`` alone (seconds from 0)."""
    return dataclasses.replace(
        result, replicas=result.replicas[part[0]:part[1]],
        violations=[at - part[0] for at in result.violations if part[0] <= at < part[1]])


if __name__ == "__main__":
    main()
