"""Routing: cost saved at 95% of the strong model's quality by the router alone and by
the router plus the answer-judging cascade, against random routing and an oracle; the
router's and the judge's latency per request.

    D=../shared/data/routing
    .venv/bin/python bench/routing.py --data $D/routellm_gsm8k_dev        # shipped, as is
    .venv/bin/python bench/routing.py --data $D/routellm_mmlu/responses \\
        --data $D/routellm_gsm8k_dev --leave-family-out                   # honest figure

Data: every CSV under each ``--data`` with a ``prompt`` column, one boolean correctness
column per model and, where present, ``<model>_response`` columns with the answers
(RouteLLM's format); the weak and strong models are the least and most accurate columns
unless ``--weak``/``--strong`` name them.

Default mode evaluates what ships, unchanged: the router (``complexity-router-v1.npz``),
its novelty detector and the cascade's judge, at their shipped thresholds and as curves.
``--leave-family-out`` instead scores every task family (MMLU's four categories, GSM8K)
with a router and novelty detector trained without it (same code as the shipped ones);
the judge, which only GSM8K's answers can train, is scored out of fold on prompts it
never saw (5 folds by prompt), with the family's router scores out of family.

The system simulated is the gateway's: a prompt the router sends to the strong tier
(and not novel) goes there; a prompt it sends to the cheap tier, or a novel one, goes
through the cascade: the cheap call is always paid, the strong one too when the judge
scores the cheap answer below its threshold. Without answers in the data the cascade
cannot be simulated: novel prompts then go to the strong tier (the gateway's choice
when no cascade is configured) and the router's cheap choices are kept.

Figures: ``router_cost_saved_at_95`` (the router's score as a curve, the cheapest cut at
95% quality), ``cost_saved_at_95`` (router plus cascade, the judge's threshold as the
curve; the router and novelty at their shipped thresholds), ``random_cost_saved_at_95``
(random subsets of each size, mean of 20 draws) and the oracle; plus the operating point
at the shipped thresholds (what a user gets without tuning). Cost: each call priced from
the catalog (``--strong-price``, ``--weak-price``) on its prompt's tokens (chars / 4) and
its answer's tokens (the ``*_response`` text / 4 where present, else
``--output-tokens``). The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from harness import load_average, machine_info, markdown_table, print_json_line

from services.costs import PriceCatalog
from services.routing.data import RoutingData, concat, load_routing_data, task_family
from services.routing.judge import SHIPPED_JUDGE, AnswerJudge
from services.routing.novelty import SHIPPED_NOVELTY, NoveltyDetector
from services.routing.policy import SHORT_ANSWER_TOKENS
from services.routing.router import SHIPPED_MODEL, ComplexityRouter
from services.routing.train import CurvePoint, cheapest_at, routing_curve, train_all
from services.routing.train_judge import JudgeData, joint_thresholds, out_of_fold, prompt_folds
from services.settings import load_settings

RANDOM_DRAWS = 20


@dataclass
class Scored:
    """Each row's scores over the threshold that applies to it (>= 1 crosses it)."""

    p_strong: np.ndarray
    router: np.ndarray  # router value / its threshold: >= 1 routes strong
    novel: np.ndarray
    judge: np.ndarray  # P(cheap answer right) / threshold: >= 1 accepts; NaN: no answer
    direct: np.ndarray  # with a cascade, p_strong / straight-to-strong threshold

    def rows(self, mask: np.ndarray) -> Scored:
        return Scored(self.p_strong[mask], self.router[mask], self.novel[mask],
                      self.judge[mask], self.direct[mask])


def call_costs(data: RoutingData, model: str, price: str, catalog: PriceCatalog,
               output_tokens: int) -> np.ndarray:
    prompt = np.asarray([max(1, len(p) // 4) for p in data.prompts])
    rates = catalog.price(price)
    return prompt * rates.input_usd_per_token + answer_tokens(
        data, model, output_tokens) * rates.output_usd_per_token


def answer_tokens(data: RoutingData, model: str, default: int) -> np.ndarray:
    """Each row's answer tokens: the answer's chars / 4 where the data has it."""
    answers = data.responses.get(model) or [""] * len(data.prompts)
    return np.asarray([max(1, len(a) // 4) if a.strip() else default for a in answers])


def random_curve(n: int, weak_ok: np.ndarray, strong_ok: np.ndarray,
                 costs: tuple[np.ndarray, np.ndarray]) -> list[CurvePoint]:
    rng = np.random.default_rng(0)
    curves = [routing_curve(rng.random(n), weak_ok, strong_ok, *costs)
              for _ in range(RANDOM_DRAWS)]
    return [CurvePoint(points[0].strong_fraction,
                       float(np.mean([p.accuracy for p in points])),
                       float(np.mean([p.quality for p in points])),
                       float(np.mean([p.cost_saved for p in points])), float("nan"))
            for points in zip(*curves, strict=True)]


def system(s: Scored, weak_ok: np.ndarray, strong_ok: np.ndarray,
           costs: tuple[np.ndarray, np.ndarray], judge_scale: float = 1.0,
           router_scale: float = 1.0) -> tuple[float, float, float]:
    """(quality, cost saved, share answered by the cheap model) of the gateway's routing:
    rows with an answer go through the cascade unless the router is sure (novel ones
    always); rows without one follow the router, novel ones to the strong tier."""
    weak_cost, strong_cost = costs
    judged = ~np.isnan(s.judge)
    direct = judged & (s.direct >= 1) & ~s.novel
    accepted = judged & ~direct & (np.nan_to_num(s.judge) >= judge_scale)
    routed_cheap = ~judged & (s.router < router_scale) & ~s.novel
    cheap = accepted | routed_cheap
    cost = np.where(judged & ~direct, weak_cost + np.where(accepted, 0.0, strong_cost),
                    np.where(routed_cheap, weak_cost, strong_cost))
    accuracy = np.where(cheap, weak_ok, strong_ok).mean()
    return (float(accuracy / strong_ok.mean()), float(1 - cost.sum() / strong_cost.sum()),
            float(cheap.mean()))


def system_at(s: Scored, target: float, weak_ok: np.ndarray, strong_ok: np.ndarray,
              costs: tuple[np.ndarray, np.ndarray]) -> float | None:
    """Cost saved by the cheapest point of the system's curve reaching ``target``: the
    judge's threshold scaled where rows are judged, else the router's."""
    judged = ~np.isnan(s.judge)
    knob = "judge_scale" if judged.any() else "router_scale"
    values = s.judge[judged] if judged.any() else s.router
    best = None
    for scale in np.unique(np.concatenate([values, [np.inf, 0.0]])):
        quality, saved, _ = system(s, weak_ok, strong_ok, costs, **{knob: float(scale)})
        if quality >= target - 1e-12 and (best is None or saved > best):
            best = saved
    return best


def evaluate(data: RoutingData, s: Scored, weak: str, strong: str,
             costs: tuple[np.ndarray, np.ndarray], target: float) -> dict[str, object]:
    weak_ok, strong_ok = data.correct[weak], data.correct[strong]
    router = cheapest_at(routing_curve(s.router, weak_ok, strong_ok, *costs), target)
    rand = cheapest_at(random_curve(len(weak_ok), weak_ok, strong_ok, costs), target)
    oracle = cheapest_at(routing_curve((strong_ok & ~weak_ok).astype(float), weak_ok,
                                       strong_ok, *costs), target)
    quality, saved, cheap = system(s, weak_ok, strong_ok, costs)
    return {
        "prompts": len(weak_ok), "weak_accuracy": float(weak_ok.mean()),
        "strong_accuracy": float(strong_ok.mean()),
        "cost_saved_at_95": system_at(s, target, weak_ok, strong_ok, costs),
        "router_cost_saved_at_95": router.cost_saved,
        "random_cost_saved_at_95": rand.cost_saved,
        "oracle_cost_saved_at_95": oracle.cost_saved,
        "novel_share": float(s.novel.mean()),
        "judged_share": float((~np.isnan(s.judge)).mean()),
        "shipped": {"quality": quality, "cost_saved": saved, "cheap_answers": cheap},
    }


def by_cost_rows(data: RoutingData, weak: str, output_tokens: int) -> np.ndarray:
    """The gateway ranks by cost only for short answers (``policy.SHORT_ANSWER_TOKENS``)."""
    return answer_tokens(data, weak, output_tokens) <= SHORT_ANSWER_TOKENS


def router_values(router: ComplexityRouter, prompts: Sequence[str], by_cost: np.ndarray,
                  target: float) -> tuple[np.ndarray, np.ndarray]:
    """(p_strong, value over threshold) of each prompt, ranked as the gateway would."""
    pairs = np.asarray([router.priority(p) for p in prompts]).reshape(-1, 2)
    value = np.where(by_cost, pairs[:, 1] / router.threshold(target, cost_aware=True),
                     pairs[:, 0] / router.threshold(target, cost_aware=False))
    return pairs[:, 0], value


def answered(data: RoutingData, weak: str) -> np.ndarray:
    answers = data.responses.get(weak) or [""] * len(data.prompts)
    return np.asarray([bool(a.strip()) for a in answers])


def score_shipped(data: RoutingData, weak: str, router: ComplexityRouter,
                  novelty: NoveltyDetector, judge: AnswerJudge, target: float,
                  by_cost: np.ndarray) -> Scored:
    p, value = router_values(router, data.prompts, by_cost, target)
    scores = np.full(len(p), np.nan)
    for i in np.flatnonzero(answered(data, weak)):
        verdict = judge.judge(data.prompts[i], data.responses[weak][i],
                              router_p_strong=float(p[i]))
        scores[i] = verdict.score / judge.threshold(target)
    novel = np.asarray([novelty.novel(q)[0] for q in data.prompts])
    return Scored(p, value, novel, scores, p / judge.router_threshold(target))


def score_leave_family_out(data: RoutingData, weak: str, strong: str, target: float,
                           by_cost: np.ndarray) -> Scored:
    """Every family scored by a router and novelty detector trained without it; the
    judge out of fold within the rows that have answers."""
    families = np.asarray([task_family(g) for g in data.groups])
    n = len(data.prompts)
    p, value, novel = np.zeros(n), np.zeros(n), np.zeros(n, bool)
    for family in sorted(set(families)):
        rows = families == family
        trained = train_all(data.subset(~rows), weak=weak, strong=strong)
        prompts = [data.prompts[i] for i in np.flatnonzero(rows)]
        p[rows], value[rows] = router_values(trained.router, prompts, by_cost[rows], target)
        novel[rows] = [trained.novelty.novel(q)[0] for q in prompts]
        print(f"# {family}: {rows.sum()} prompts scored by a router trained on "
              f"{(~rows).sum()} others; novel {novel[rows].mean():.1%}", flush=True)
    judge, direct = np.full(n, np.nan), np.full(n, np.nan)
    has = answered(data, weak)
    if has.sum() >= 50:
        judge[has], direct[has] = judge_out_of_fold(data.subset(has), weak, strong, p[has],
                                                    target)
    return Scored(p, value, novel, judge, direct)


def judge_out_of_fold(data: RoutingData, weak: str, strong: str, router_p: np.ndarray,
                      target: float) -> tuple[np.ndarray, np.ndarray]:
    """Each answer's out-of-fold P(correct) over its fold's threshold, and the router's
    score over its fold's straight-to-strong threshold (both chosen on the other folds'
    scores, never on the rows they are applied to): >= 1 accepts / goes straight."""
    answers = JudgeData(data.prompts, data.responses[weak], data.correct[weak], router_p)
    scores = out_of_fold(answers.features(), answers.correct, answers.prompts)
    folds = prompt_folds(data.prompts, 5)
    weak_ok, strong_ok = data.correct[weak], data.correct[strong]
    relative, direct = np.zeros(len(scores)), np.zeros(len(scores))
    for k in np.unique(folds):
        rest, here = folds != k, folds == k
        router_threshold, threshold = joint_thresholds(
            scores[rest], router_p[rest], weak_ok[rest], strong_ok[rest], target)
        relative[here] = scores[here] / threshold
        direct[here] = router_p[here] / router_threshold
    return relative, direct


def judge_latency(judge: AnswerJudge, data: RoutingData, weak: str, n: int
                  ) -> dict[str, float] | None:
    has = np.flatnonzero(answered(data, weak))
    if not len(has):
        return None
    answers = data.responses[weak]
    order = np.random.default_rng(1).permutation(has)[:n]
    timings, cpu = [], []
    for i in order:
        started, started_cpu = time.perf_counter(), time.thread_time()
        judge.judge(data.prompts[i], answers[i], router_p_strong=0.5)
        cpu.append((time.thread_time() - started_cpu) * 1000)
        timings.append((time.perf_counter() - started) * 1000)
    return {"answers": len(order), "p50_ms": float(np.percentile(timings, 50)),
            "p95_ms": float(np.percentile(timings, 95)),
            "p99_ms": float(np.percentile(timings, 99)),
            "cpu_p95_ms": float(np.percentile(cpu, 95)),
            "mean_answer_chars": float(np.mean([len(answers[i]) for i in order])),
            "load_average_1m": load_average()}


def router_latency(router: ComplexityRouter, novelty: NoveltyDetector,
                   prompts: Sequence[str], n: int) -> dict[str, float]:
    sample = [prompts[i] for i in np.random.default_rng(1).permutation(len(prompts))[:n]]
    timings = []
    for prompt in sample:
        started = time.perf_counter()
        router.decide(prompt)
        novelty.novel(prompt)
        timings.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": float(np.percentile(timings, 50)),
            "p95_ms": float(np.percentile(timings, 95)), "load_average_1m": load_average()}


def pct(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, float) else "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="CSV file or folder of CSVs; repeat for several")
    parser.add_argument("--leave-family-out", action="store_true")
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--novelty", type=Path, default=SHIPPED_NOVELTY)
    parser.add_argument("--judge", type=Path, default=SHIPPED_JUDGE)
    parser.add_argument("--weak")
    parser.add_argument("--strong")
    parser.add_argument("--weak-price", default="Mixtral-8x7B")
    parser.add_argument("--strong-price", default="gpt-4-1106-preview")
    parser.add_argument("--output-tokens", type=int, default=1,
                        help="answer tokens per call where the data has no answers")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--latency-samples", type=int, default=1000)
    args = parser.parse_args(argv)

    data = concat([load_routing_data(path) for path in args.data])
    weak, strong = data.pick_pair(args.weak, args.strong)
    catalog = PriceCatalog.from_settings(load_settings())
    costs = (call_costs(data, weak, args.weak_price, catalog, args.output_tokens),
             call_costs(data, strong, args.strong_price, catalog, args.output_tokens))
    by_cost = by_cost_rows(data, weak, args.output_tokens)
    router = ComplexityRouter.load(args.model)
    novelty = NoveltyDetector.load(args.novelty)
    judge = AnswerJudge.load(args.judge)
    if args.leave_family_out:
        scored = score_leave_family_out(data, weak, strong, args.target, by_cost)
        mode = "leave-family-out"
    else:
        scored = score_shipped(data, weak, router, novelty, judge, args.target, by_cost)
        mode = "shipped"
    families = np.asarray([task_family(g) for g in data.groups])
    results = {"all": evaluate(data, scored, weak, strong, costs, args.target)}
    if len(set(families)) > 1:
        for family in sorted(set(families)):
            rows = families == family
            results[family] = evaluate(data.subset(rows), scored.rows(rows), weak, strong,
                                       (costs[0][rows], costs[1][rows]), args.target)
    latency = {"router_and_novelty": router_latency(router, novelty, data.prompts,
                                                    args.latency_samples),
               "judge": judge_latency(judge, data, weak, args.latency_samples)}

    print(f"# {mode} on {', '.join(map(str, args.data))} ({len(data.prompts)} prompts); "
          f"weak {weak} ({data.accuracy(weak):.3f}), strong {strong} "
          f"({data.accuracy(strong):.3f}); {by_cost.mean():.0%} ranked by cost (short answers)")
    print(f"# prices: weak {args.weak_price}, strong {args.strong_price} (weak/strong cost "
          f"ratio {costs[0].sum() / costs[1].sum():.3f})")
    print(markdown_table(
        ["family", "prompts", "novel", "judged", "router+cascade", "router alone", "random",
         "oracle", "shipped: quality", "shipped: saved"],
        [[name, r["prompts"], pct(r["novel_share"]), pct(r["judged_share"]),
          pct(r["cost_saved_at_95"]),
          pct(r["router_cost_saved_at_95"]), pct(r["random_cost_saved_at_95"]),
          pct(r["oracle_cost_saved_at_95"]), pct(r["shipped"]["quality"]),
          pct(r["shipped"]["cost_saved"])]
         for name, r in results.items()],
    ))
    lat = latency["router_and_novelty"]
    print(f"\nrouter + novelty per prompt: p50 {lat['p50_ms']:.2f} ms, p95 {lat['p95_ms']:.2f} ms")
    if latency["judge"]:
        j = latency["judge"]
        print(f"judge per answer: p50 {j['p50_ms']:.2f} ms, p95 {j['p95_ms']:.2f} ms, p99 "
              f"{j['p99_ms']:.2f} ms wall; CPU p95 {j['cpu_p95_ms']:.2f} ms ({j['answers']} "
              f"answers of {j['mean_answer_chars']:.0f} chars; load {j['load_average_1m']:.1f})")
    print_json_line({
        "benchmark": "routing", "mode": mode, "data": [str(d) for d in args.data],
        "weak": weak, "strong": strong, "target_quality": args.target,
        "cost_ranked_share": float(by_cost.mean()),
        **{k: results["all"][k] for k in ("cost_saved_at_95", "router_cost_saved_at_95",
                                          "random_cost_saved_at_95",
                                          "oracle_cost_saved_at_95")},
        "families": results, "latency": latency, "machine": machine_info(),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
