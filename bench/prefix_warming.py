"""Prefix warming ON vs OFF: what the first requests after a vLLM worker joins gain.

When a worker joins the gateway's pool (scale-out, restart) its prefix cache is empty.
With prefix warming (``services/execution/warming.py``) the gateway sends it the known
cacheable prefixes (``cacheable_prefixes`` rows with ``messages``) as ``max_tokens=1``
chat requests, so the first real request with such a system prompt reads its blocks
instead of paying their prefill. This benchmark measures what that buys those first
requests, and what the warming itself costs, side by side in one run:

* workload: ``--prefixes`` system prompts of about ``--prefix-tokens`` tokens each and
  short user questions, built from ``--prompts`` (ShareGPT format) exactly as
  ``bench/prefix_affinity.py`` builds them; every system prompt of a run starts with that
  run's session tag, so no run can reuse KV blocks an earlier run left in the worker
  (vLLM's block hashes chain from the first token) while every run sends the same text
  otherwise;
* one vLLM-CPU worker (threads on ``--worker-cpus``), started once and never reset, with
  vLLM's own KV cache size (nothing is evicted here: the system prompts fit many times);
* arms: warming ON and OFF (``OPTENGINE_PREFIX_WARM_ENABLED``), in ABBA order
  (``--rounds``); each run starts a fresh gateway (``optengine serve``, response cache
  off) on a fresh SQLite store that already holds one ``cacheable_prefixes`` row (with
  ``messages``) per system prompt of the run: starting the gateway is the worker's join.
  ON waits until the gateway's ``optengine_prefix_warm_total{outcome="warmed"}`` reaches
  the number of prompts (``--warm-timeout``); both arms wait until the gateway lists the
  model. One untimed request without a system prompt then takes the fresh gateway's own
  first-call costs out of the figures;
* measured: the first pass, one streamed request per system prompt, one at a time (the
  first requests after a join), ``--max-tokens`` output tokens each (``ignore_eos``),
  ``--temperature`` and a question of its own per request; then a repeat pass (the same
  system prompts, other questions) where both arms should hit: the control that the
  cache works the same way without warming.

Per pass: client-side time to first token and end-to-end latency (p50/p95), the
worker's prefix-cache hit rate (``vllm:prefix_cache_hits_total`` /
``vllm:prefix_cache_queries_total``, in tokens) and mean time to first token and prefill
time from its histograms (each run's mean, median over the runs: a histogram gives no
median, and one request stalled by a busy machine moves a pooled mean), all as deltas
over the measured requests only (the counters are read after warming finished).

Per join: how long warming took (gateway launch to the last prefix warmed, next to
launch to the model listed), and what it cost the worker: requests, prompt tokens,
running and prefill seconds (``vllm:request_inference_time_seconds``,
``vllm:request_prefill_time_seconds``) of the warming requests, next to the prefill
seconds it saved the first pass.

Example::

    .venv/bin/python bench/prefix_warming.py
    .venv/bin/python bench/prefix_warming.py --prompts services/demo/prompts.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import re
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from harness import (
    REPO_ROOT,
    Service,
    bench_tempdir,
    load_average,
    markdown_table,
    print_json_line,
)
from prefix_affinity import (
    SESSION_TAGS,
    SHARED_PROMPTS,
    WORKER_COUNTERS,
    Sample,
    Workload,
    pct,
    request_body,
    send_all,
    start_gateway,
    start_run,
    warm_up,
    worker_metrics,
)

from services.demo.workload import DEMO_PROMPTS

ARMS = ("on", "off")
PASSES = ("first", "repeat")
CAPTIONS = {"first": "the first request per system prompt after the join",
            "repeat": "the second request per system prompt: both arms should hit"}
# counters and histogram sums of the worker read around each phase
COUNTERS = (
    *WORKER_COUNTERS,
    "vllm:request_inference_time_seconds_sum",
    "vllm:request_prefill_time_seconds_sum",
    "vllm:request_prefill_time_seconds_count",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
)
SETTLE_S = 0.5  # lets the worker's metrics catch up with the last response
_WARM = re.compile(r'^optengine_prefix_warm_total\{outcome="(?P<outcome>\w+)"\} (?P<value>\S+)$')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="First requests after a vLLM worker joins: prefix warming on vs off.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder (default: build/reuse the tiny test model)")
    parser.add_argument("--prompts", type=Path,
                        default=SHARED_PROMPTS if SHARED_PROMPTS.is_file() else DEMO_PROMPTS,
                        help="ShareGPT-format JSON: source of the system prompts and questions")
    parser.add_argument("--prefixes", type=int, default=8,
                        help="system prompts (= cacheable_prefixes rows = requests per pass)")
    parser.add_argument("--prefix-tokens", type=int, default=600,
                        help="tokens per system prompt (model tokenizer)")
    parser.add_argument("--question-tokens", type=int, default=64,
                        help="longest user question, in tokens")
    parser.add_argument("--max-tokens", type=int, default=16, help="exact output tokens")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--rounds", type=int, default=4,
                        help="pairs of runs, alternating order (ON OFF, OFF ON, ...)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--warm-timeout", type=float, default=120.0,
                        help="longest wait for warming to finish (ON)")
    parser.add_argument("--worker-cpus", default="0",
                        help="cores of the vLLM worker's threads (VLLM_CPU_OMP_THREADS_BIND); "
                             "the gateway and this client use the others")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kvcache-gib", type=int, default=1)
    parser.add_argument("--vllm-python", type=Path, default=REPO_ROOT / ".venv-vllm/bin/python")
    parser.add_argument("--keep-dir", action="store_true", help="keep logs and the stores")
    parser.add_argument("--token-policy", default="off",
                        help="the gateway's token optimization policy (both arms)")
    parser.add_argument("--no-keep-marked", dest="keep_marked", action="store_false",
                        help="let the token policy rewrite marked cacheable prefixes too")
    args = parser.parse_args(argv)
    args.requests = 2 * args.prefixes  # what build_workload draws; the passes use their own
    return args


# --- workload ------------------------------------------------------------------------


def passes(work: Workload, seed: int) -> dict[str, Workload]:
    """Each pass sends every system prompt once, in its own order, with its own
    questions; the same for every run."""
    rng = random.Random(seed)
    n = len(work.prefixes)
    found = {}
    for k, name in enumerate(PASSES):
        order = list(range(n))
        rng.shuffle(order)
        found[name] = dataclasses.replace(
            work, order=[(p, (k * n + i) % len(work.questions)) for i, p in enumerate(order)])
    return found


def seed_store(db: Path, work: Workload, tag: str, model: str, args: argparse.Namespace
               ) -> int:
    """A migrated store holding one cacheable_prefixes row per system prompt of the run,
    with the messages the requests will send (as the token_optimization flow writes it)."""
    from migrations import upgrade_to_head
    from models import CacheablePrefix, create_store_engine
    from services.caching.prefix import cacheable_prefix_hash

    db.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{db}"
    upgrade_to_head(url)
    rows = []
    for j in range(len(work.prefixes)):
        one = dataclasses.replace(work, order=[(j, 0)])
        messages = request_body(one, 0, tag, model, args)["messages"][:1]  # the system turn
        rows.append({"prefix_hash": cacheable_prefix_hash(messages), "kind": "system_prompt",
                     "tokens": work.prefix_token_counts[j] + 4, "occurrences": 5,
                     "text": messages[0]["content"], "messages": messages,
                     "marked_at": datetime.now(UTC)})
    engine = create_store_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(CacheablePrefix.__table__.insert(), rows)
    finally:
        engine.dispose()
    return len(rows)


# --- one run -------------------------------------------------------------------------


def warm_outcomes(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {m["outcome"]: float(m["value"]) for m in map(_WARM.match, text.splitlines()) if m}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in COUNTERS}


@dataclasses.dataclass
class RunResult:
    arm: str
    tag: str
    ready_s: float  # gateway launch -> model listed
    warmed_s: float | None  # gateway launch -> last prefix warmed (ON)
    warm: dict[str, float]  # the gateway's prefix-warm outcomes
    join: dict[str, float]  # worker counters over launch .. measured requests
    samples: dict[str, list[Sample]]
    vllm: dict[str, dict[str, float]]  # pass -> worker counter deltas
    load: tuple[float, float]


def run_arm(arm: str, tag: str, work: dict[str, Workload], worker: Any, model: str,
            workdir: Path, args: argparse.Namespace) -> RunResult:
    run = f"{arm}-{tag}"
    n = seed_store(workdir / f"gateway-{run}" / "optengine.db", work["first"], tag, model, args)
    env = {"OPTENGINE_PREFIX_WARM_ENABLED": "true" if arm == "on" else "false",
           "OPTENGINE_CACHE_ENABLED": "false", "OPTENGINE_CACHE_SEMANTIC_ENABLED": "false",
           "OPTENGINE_TOKEN_OPTIMIZATION_DEFAULT": args.token_policy,
           "OPTENGINE_TOKEN_KEEP_MARKED_PREFIXES": str(args.keep_marked).lower()}
    load_before = load_average()
    before_join = worker_metrics(worker.base_url, COUNTERS)
    launched = time.perf_counter()
    gateway, url, _db = start_gateway(workdir, run, [worker.base_url], model, 0.0, env)
    try:
        ready_s = time.perf_counter() - launched
        warmed_s = None
        warm = warm_outcomes(url)
        if arm == "on":
            deadline = launched + args.warm_timeout
            while sum(warm.values()) < n and time.perf_counter() < deadline:
                time.sleep(0.05)
                warm = warm_outcomes(url)
            warmed_s = time.perf_counter() - launched
            if warm.get("warmed", 0) < n:
                print(f"  warning: {arm} [{tag}] warmed {warm} of {n} prefixes", flush=True)
        time.sleep(SETTLE_S)
        joined = worker_metrics(worker.base_url, COUNTERS)
        # the fresh gateway's own first-call costs, outside the figures (no system prompt)
        probe = request_body(work["first"], 0, tag, model, args)
        probe["messages"] = probe["messages"][1:]
        asyncio.run(send_all(url, [probe], 1))
        samples, vllm = {}, {}
        for name in PASSES:
            bodies = [request_body(work[name], i, tag, model, args)
                      for i in range(len(work[name].order))]
            time.sleep(SETTLE_S)
            before = worker_metrics(worker.base_url, COUNTERS)
            samples[name] = asyncio.run(send_all(url, bodies, 1))
            time.sleep(SETTLE_S)
            vllm[name] = delta(worker_metrics(worker.base_url, COUNTERS), before)
    finally:
        gateway.stop()
    result = RunResult(arm, tag, ready_s, warmed_s, warm, delta(joined, before_join), samples,
                       vllm, (load_before, load_average()))
    s = summarize([result])
    print(f"  {arm:3s} [{tag}] ready {ready_s:.1f} s"
          + (f", warmed {warmed_s:.1f} s ({result.join['vllm:request_success_total']:.0f} req)"
             if warmed_s is not None else "")
          + f"; first pass hit {s['first']['vllm_hit_rate']:.3f} TTFT p50 "
          f"{s['first']['ttft_p50_ms']:.0f} ms; repeat hit {s['repeat']['vllm_hit_rate']:.3f}"
          f" TTFT p50 {s['repeat']['ttft_p50_ms']:.0f} ms; errors "
          f"{s['first']['errors'] + s['repeat']['errors']}; load {load_before:.2f}->"
          f"{result.load[1]:.2f}", flush=True)
    return result


# --- figures -------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return round(a / b, 3)


def run_median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def mean_of(d: dict[str, float], name: str) -> float | None:
    count = d.get(f"{name}_count", 0.0)
    return round(1000 * d.get(f"{name}_sum", 0.0) / count, 2) if count else None


def summarize(results: list[RunResult]) -> dict[str, Any]:
    """One arm's runs pooled: rates from summed counters, percentiles over all samples."""
    found: dict[str, Any] = {"runs": len(results)}
    for name in PASSES:
        samples = [s for r in results for s in r.samples[name]]
        ok = [s for s in samples if s.ok]
        ttft = [s.ttft_ms for s in ok if s.ttft_ms is not None]
        latency = [s.latency_ms for s in ok]
        vllm = {k: sum(r.vllm[name][k] for r in results) for k in COUNTERS}
        queries = vllm["vllm:prefix_cache_queries_total"]
        found[name] = {
            "requests": len(samples),
            "errors": len(samples) - len(ok),
            "cache_headers": sorted({s.cache_header for s in samples}),
            "vllm_hit_rate": round(vllm["vllm:prefix_cache_hits_total"] / queries, 4)
            if queries else float("nan"),
            "vllm_hit_tokens": int(vllm["vllm:prefix_cache_hits_total"]),
            "vllm_query_tokens": int(queries),
            "vllm_requests": int(vllm["vllm:request_success_total"]),
            "ttft_p50_ms": round(pct(ttft, 50), 1),
            "ttft_p95_ms": round(pct(ttft, 95), 1),
            "latency_p50_ms": round(pct(latency, 50), 1),
            "latency_p95_ms": round(pct(latency, 95), 1),
            # vLLM's histograms give means only; one stalled request (a busy machine)
            # moves a pooled mean, so the tables use each run's mean, median over runs
            "worker_ttft_mean_ms": mean_of(vllm, "vllm:time_to_first_token_seconds"),
            "worker_prefill_mean_ms": mean_of(vllm, "vllm:request_prefill_time_seconds"),
            "worker_ttft_ms": run_median(
                [mean_of(r.vllm[name], "vllm:time_to_first_token_seconds") for r in results]),
            "worker_prefill_ms": run_median(
                [mean_of(r.vllm[name], "vllm:request_prefill_time_seconds") for r in results]),
            "worker_prefill_s": run_median(
                [r.vllm[name]["vllm:request_prefill_time_seconds_sum"] for r in results]),
        }
    join = {k: run_median([r.join[k] for r in results]) for k in COUNTERS}
    warmed = [r.warmed_s for r in results if r.warmed_s is not None]
    found["join"] = {  # per join (run), means over the runs
        "ready_s_p50": round(pct([r.ready_s for r in results], 50), 2),
        "warmed_s_p50": round(pct(warmed, 50), 2) if warmed else None,
        "warm_outcomes": {k: sum(r.warm.get(k, 0.0) for r in results) for k in
                          sorted({k for r in results for k in r.warm})},
        "worker_requests": join["vllm:request_success_total"],
        "worker_prompt_tokens": join["vllm:prompt_tokens_total"],
        "worker_running_s": join["vllm:request_inference_time_seconds_sum"],
        "worker_prefill_s": join["vllm:request_prefill_time_seconds_sum"],
    }
    found["load_max"] = round(max(max(r.load) for r in results), 2)
    return found


def ratios(on: dict[str, Any], off: dict[str, Any]) -> dict[str, Any]:
    keys = ("ttft_p50_ms", "ttft_p95_ms", "latency_p50_ms", "latency_p95_ms",
            "worker_ttft_mean_ms", "worker_prefill_mean_ms", "worker_ttft_ms",
            "worker_prefill_ms")
    return {name: {k: ratio(on[name][k], off[name][k]) for k in keys} for name in PASSES}


# --- main ----------------------------------------------------------------------------


def start_worker(args: argparse.Namespace, model: Path, workdir: Path) -> Any:
    from services.workers import VllmWorker

    worker = VllmWorker(model, python=args.vllm_python, gpu_count=0,
                        kvcache_gib=args.kvcache_gib, cpu_threads=args.worker_cpus,
                        max_model_len=args.max_model_len, log_path=workdir / "vllm.log")
    try:
        worker.start()
        print(f"vLLM ready at {worker.base_url} after {worker.wait_ready():.0f} s", flush=True)
    except BaseException:
        worker.stop()
        raise
    return worker


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, model, work = start_run(args)
    work_passes = passes(work, args.seed)
    print(f"{args.prefixes} system prompts of {min(work.prefix_token_counts)}-"
          f"{max(work.prefix_token_counts)} tokens from {args.prompts}, "
          f"{len(work.questions)} questions", flush=True)
    workdir = bench_tempdir("bench-warming-")
    worker = None
    results: dict[str, list[RunResult]] = {arm: [] for arm in ARMS}
    try:
        worker = start_worker(args, model, workdir)
        name = worker.served_model_name
        config = worker_metrics(worker.base_url)
        warm_up([worker], work, name, args)  # the worker's own first-call costs
        tags = iter(SESSION_TAGS)
        for round_no in range(args.rounds):
            order = list(ARMS) if round_no % 2 == 0 else list(ARMS)[::-1]
            for arm in order:
                results[arm].append(run_arm(arm, next(tags), work_passes, worker, name,
                                            workdir, args))
    finally:
        Service.stop_all()
        if worker is not None:
            worker.stop()

    summary = {arm: summarize(runs) for arm, runs in results.items()}
    on_off = ratios(summary["on"], summary["off"])
    saved = summary["off"]["first"]["worker_prefill_s"] - summary["on"]["first"]["worker_prefill_s"]
    trade = {  # per join, worker seconds
        "warm_running_s": summary["on"]["join"]["worker_running_s"],
        "warm_prefill_s": summary["on"]["join"]["worker_prefill_s"],
        "first_pass_prefill_saved_s": round(saved, 3),
    }
    report(summary, on_off, trade, info, args, model, config)
    print_json_line({
        "benchmark": "prefix_warming",
        "machine": info,
        "load_at_end": round(load_average(), 2),
        "config": {
            "model": str(model), "prompts": str(args.prompts), "prefixes": args.prefixes,
            "prefix_tokens": work.prefix_token_counts, "requests_per_pass": args.prefixes,
            "concurrency": 1, "max_tokens": args.max_tokens, "temperature": args.temperature,
            "rounds": args.rounds, "seed": args.seed, "worker_cpus": args.worker_cpus,
            "token_policy": args.token_policy, "keep_marked_prefixes": args.keep_marked,
            "kv_blocks": int(config.get("num_gpu_blocks", 0)),
            "block_size": int(config.get("block_size", 0)),
            "workers": "one, started once, never reset; each run's prefixes carry their own "
            "session tag; a fresh gateway (response cache off) per run",
        },
        "arms": summary,
        "ratios_on_off": on_off,
        "trade_per_join": trade,
        "runs": [{"arm": r.arm, "tag": r.tag, "ready_s": round(r.ready_s, 2),
                  "warmed_s": None if r.warmed_s is None else round(r.warmed_s, 2),
                  **{k: v for k, v in summarize([r]).items() if k in PASSES}}
                 for arm in ARMS for r in results[arm]],
    })
    if not args.keep_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs and stores kept in {workdir}", file=sys.stderr)
    return 0


def report(summary: dict[str, dict[str, Any]], on_off: dict[str, Any], trade: dict[str, float],
           info: dict[str, object], args: argparse.Namespace, model: Path,
           config: dict[str, float]) -> None:
    print()
    print(f"{info['date_utc']} UTC, {info['nproc']} cores ({info['cpu_model']}); model "
          f"{model.name}; 1 vLLM-CPU worker (threads on core(s) {args.worker_cpus}), blocks of "
          f"{int(config.get('block_size', 0))} tokens; {args.prefixes} system prompts of "
          f"~{args.prefix_tokens} tokens from {args.prompts.name}, one cacheable_prefixes row "
          f"each; per run a fresh gateway joins the worker, then {args.prefixes} streamed "
          f"requests (one per system prompt) at concurrency 1, max_tokens {args.max_tokens} "
          f"(ignore_eos), temperature {args.temperature}, then the same again (repeat); "
          f"{args.rounds} run(s) per arm, ABBA, pooled")
    for name in PASSES:
        print()
        print(f"{name} pass ({CAPTIONS[name]})")
        print()
        rows = []
        for arm, s in summary.items():
            p = s[name]
            rows.append([f"warming {arm.upper()}", p["requests"], p["errors"],
                         f"{100 * p['vllm_hit_rate']:.1f}%", p["ttft_p50_ms"], p["ttft_p95_ms"],
                         p["latency_p50_ms"], p["latency_p95_ms"], p["worker_ttft_ms"],
                         p["worker_prefill_ms"], s["load_max"]])
        r = on_off[name]
        rows.append(["ratio ON/OFF", "", "", "", r["ttft_p50_ms"], r["ttft_p95_ms"],
                     r["latency_p50_ms"], r["latency_p95_ms"], r["worker_ttft_ms"],
                     r["worker_prefill_ms"], ""])
        print(markdown_table(
            ["arm", "requests", "errors", "vLLM prefix hit", "TTFT p50 ms", "TTFT p95 ms",
             "e2e p50 ms", "e2e p95 ms", "worker TTFT ms", "worker prefill ms",
             "load max"], rows))
    print()
    print("worker columns: vLLM's own histograms, each run's mean, median over the runs")
    print()
    print("per join (median over the runs)")
    print()
    rows = []
    for arm, s in summary.items():
        j = s["join"]
        rows.append([f"warming {arm.upper()}", j["ready_s_p50"],
                     "" if j["warmed_s_p50"] is None else j["warmed_s_p50"],
                     j["worker_requests"], j["worker_prompt_tokens"], j["worker_running_s"],
                     ", ".join(f"{k} {v:g}" for k, v in j["warm_outcomes"].items())])
    print(markdown_table(["arm", "launch to model listed s", "launch to warmed s",
                          "warm requests", "warm prompt tokens", "worker running s",
                          "warm outcomes (all runs)"], rows))
    print()
    print(f"trade per join (worker histograms, median over the runs): the warming requests ran "
          f"{trade['warm_running_s']:.3f} s on the worker ({trade['warm_prefill_s']:.3f} s of "
          f"it prefill), before any real request; the first pass then spent "
          f"{trade['first_pass_prefill_saved_s']:.3f} s less in prefill")
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
