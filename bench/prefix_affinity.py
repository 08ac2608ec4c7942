"""Prefix-affinity routing vs least-outstanding alone, over two vLLM-CPU workers.

Chat traffic repeats long static prefixes (system prompts, documents). vLLM skips the
prefill of a prefix it still holds in its KV cache, but only on the worker that saw it:
the gateway's prefix affinity (consistent hashing with bounded loads on the request's
static prefix) sends requests that share a prefix to the same worker. This benchmark
measures what that buys, side by side in one run, on the same two workers:

* workload: ``--prefixes`` long system prompts of about ``--prefix-tokens`` tokens each,
  cut deterministically from the workload text (ShareGPT-format ``--prompts``), each
  followed by a short user question (other first turns of the same file); every request
  has its own question and ``temperature`` > 0, so the response cache never answers
  (``X-Cache: BYPASS``), and asks for exactly ``--max-tokens`` tokens (``ignore_eos``);
  the order of (prefix, question) pairs is drawn once from ``--seed``;
* arms: affinity ON (``OPTENGINE_PREFIX_AFFINITY_LOAD_FACTOR=1.25``, ``--load-factor``)
  and OFF (``0``, least-outstanding only), in ABBA order (``--rounds``), each through a
  freshly started gateway (own SQLite store) at ``--concurrency`` streamed requests; the
  workers are started once and never reset. Each run's system prompts start with a
  different session tag, so no run can reuse the KV blocks of an earlier one (vLLM's
  block hashes chain from the first token) while every run sends the same text
  otherwise;
* KV cache: ``--kv-blocks`` per worker (vLLM's ``--num-gpu-blocks-override``; blocks of
  128 tokens on CPU). By default a worker's cache is exactly as large as the full blocks
  of all the system prompts together: it holds the half of them a worker gets under
  affinity next to the requests in flight, but not all of them, as a GPU's cache holds
  a fraction of all the tenants' prompts in production. ``0`` keeps vLLM's own size
  (``--kvcache-gib``), where nothing is ever evicted.

Measured per run: vLLM's own prefix-cache hit rate from each worker's ``/metrics``
(``vllm:prefix_cache_hits_total`` / ``vllm:prefix_cache_queries_total``, in tokens),
the ``cached_tokens`` the gateway recorded per request in ``request_log``, client-side
time to first token and end-to-end latency (p50/p95), requests/s and output tokens/s,
how requests split over the workers, and stickiness: the share of requests that went to
their prefix's busiest worker in the run, and how many (prefix, worker) pairs occurred
(each one pays at least one cold prefill; 8 prefixes x 2 workers = 16 at most).

Worker A's threads run on core 0, worker B's on core 1 (``VLLM_CPU_OMP_THREADS_BIND``).

Example::

    .venv/bin/python bench/prefix_affinity.py
    .venv/bin/python bench/prefix_affinity.py --kv-blocks 0      # roomy cache
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import shutil
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from gateway_overhead import wait_for_model
from harness import (
    REPO_ROOT,
    Service,
    bench_tempdir,
    free_port,
    load_average,
    machine_info,
    markdown_table,
    print_json_line,
    stop_on_signals,
)

from services.demo.workload import DEMO_PROMPTS, load_prompts

DEFAULT_MODEL_DIR = REPO_ROOT / "data" / "test-models" / "tiny-llama"
SHARED_PROMPTS = REPO_ROOT.parent / "shared" / "data" / "prompts" / "sharegpt_500.json"
GATEWAY_KEY = "bench-affinity-key"
ARMS = ("on", "off")
WORKER_CPUS = ("0", "1")
# Same token length each (checked at run time): one tag per run, so no run meets the
# KV blocks an earlier run left behind.
SESSION_TAGS = tuple("ABCDEFGH")
_METRIC = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="vLLM prefix-cache hit rate, TTFT and throughput: affinity on vs off.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=None,
                        help=f"model folder (default: build/reuse the tiny test model in "
                             f"{DEFAULT_MODEL_DIR.relative_to(REPO_ROOT)})")
    parser.add_argument("--prompts", type=Path,
                        default=SHARED_PROMPTS if SHARED_PROMPTS.is_file() else DEMO_PROMPTS,
                        help="ShareGPT-format JSON: source of the system prompts and questions")
    parser.add_argument("--prefixes", type=int, default=8, help="distinct system prompts")
    parser.add_argument("--prefix-tokens", type=int, default=600,
                        help="tokens per system prompt (model tokenizer)")
    parser.add_argument("--question-tokens", type=int, default=64,
                        help="longest user question, in tokens")
    parser.add_argument("--requests", type=int, default=256, help="requests per run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16, help="exact output tokens")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--load-factor", type=float, default=1.25,
                        help="OPTENGINE_PREFIX_AFFINITY_LOAD_FACTOR of the ON arm (OFF: 0)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="pairs of runs, alternating order (ON OFF, OFF ON, ...)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kv-blocks", type=int, default=-1,
                        help="KV blocks per worker; -1: the full blocks of all system "
                             "prompts together (at least 16); 0: vLLM's own size from "
                             "--kvcache-gib")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kvcache-gib", type=int, default=1)
    parser.add_argument("--vllm-python", type=Path, default=REPO_ROOT / ".venv-vllm/bin/python")
    parser.add_argument("--keep-dir", action="store_true", help="keep logs and the stores")
    return parser.parse_args(argv)


# --- workload ------------------------------------------------------------------------


@dataclass
class Workload:
    prefixes: list[str]  # without the session tag
    questions: list[str]
    order: list[tuple[int, int]]  # (prefix, question) per request
    prefix_token_counts: list[int]


def build_workload(args: argparse.Namespace, model: Path) -> Workload:
    """System prompts cut from the file's long turns (all its turns when it has none);
    questions from its short ones."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))

    def n_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    prompts = load_prompts(args.prompts)
    questions = [p for p in prompts if 20 <= len(p) <= 400 and n_tokens(p) <= args.question_tokens]
    # a file of short prompts only (the demo's) lends all its turns, cycled, instead
    words = " ".join([p for p in prompts if len(p) > 400] or prompts).split()
    if len(questions) < 10 or not words:
        raise SystemExit(f"{args.prompts} has too little text for this workload")
    prefixes, counts = [], []
    start = 0
    for j in range(args.prefixes):
        head = f"You are support assistant number {j + 1}. Answer from the reference below.\n\n"
        end = start
        text = head
        while n_tokens(text) < args.prefix_tokens:
            end += 8
            text = head + " ".join(words[(start + k) % len(words)] for k in range(end - start))
        while end > start and n_tokens(text) > args.prefix_tokens:  # trim the overshoot
            end -= 1
            text = head + " ".join(words[(start + k) % len(words)] for k in range(end - start))
        prefixes.append(text)
        counts.append(n_tokens(text))
        start = end
    rng = random.Random(args.seed)
    rng.shuffle(questions)
    order = [(rng.randrange(args.prefixes), i % len(questions)) for i in range(args.requests)]
    tag_lengths = {n_tokens(f"Session {t}. ") for t in SESSION_TAGS}
    if len(tag_lengths) != 1:
        raise SystemExit(f"session tags tokenize to different lengths: {tag_lengths}")
    return Workload(prefixes, questions, order, counts)


def request_body(work: Workload, index: int, tag: str, model: str,
                 args: argparse.Namespace) -> dict[str, Any]:
    prefix, question = work.order[index]
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": f"Session {tag}. {work.prefixes[prefix]}"},
            {"role": "user", "content": work.questions[question]},
        ],
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# --- servers -------------------------------------------------------------------------


def model_dir(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return args.model
    from services.workers import make_test_model

    return make_test_model(DEFAULT_MODEL_DIR)


def start_workers(args: argparse.Namespace, model: Path, workdir: Path, kv_blocks: int
                  ) -> list[Any]:
    from services.workers import VllmWorker

    extra = ["--num-gpu-blocks-override", str(kv_blocks)] if kv_blocks > 0 else []
    workers = [
        VllmWorker(model, python=args.vllm_python, gpu_count=0, kvcache_gib=args.kvcache_gib,
                   cpu_threads=cpus, max_model_len=args.max_model_len, extra_args=extra,
                   log_path=workdir / f"vllm-{name}.log")
        for name, cpus in zip("AB", WORKER_CPUS, strict=True)
    ]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            seconds = worker.wait_ready()
            print(f"vLLM ready at {worker.base_url} after {seconds:.0f} s", flush=True)
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    return workers


def start_gateway(workdir: Path, run: str, worker_urls: list[str], model: str,
                  load_factor: float, env: dict[str, str] | None = None
                  ) -> tuple[Service, str, Path]:
    """A fresh gateway on its own SQLite store in ``workdir/gateway-{run}`` (``env``:
    more OPTENGINE_* settings), once it lists ``model``."""
    port = free_port()
    data_dir = workdir / f"gateway-{run}"
    db = data_dir / "optengine.db"
    gateway = Service(
        f"gateway-{run}",
        [str(REPO_ROOT / ".venv/bin/optengine"), "serve", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "WARNING"],
        env={
            "OPTENGINE_ENV": "dev",
            "OPTENGINE_WORKERS": ",".join(worker_urls),
            "OPTENGINE_API_KEYS": f"{GATEWAY_KEY}:bench",
            "OPTENGINE_DATA_DIR": str(data_dir),
            "OPTENGINE_DATABASE_URL": f"sqlite:///{db}",
            "OPTENGINE_REDIS_URL": "",
            "OPTENGINE_PREFIX_AFFINITY_LOAD_FACTOR": str(load_factor),
            **(env or {}),
        },
        cwd=workdir,
        log_dir=workdir,
    ).start()
    url = f"http://127.0.0.1:{port}"
    gateway.wait_http(f"{url}/healthz", timeout_s=120)
    wait_for_model(url, GATEWAY_KEY, model, gateway)  # start-up probed both workers
    return gateway, url, db


WORKER_COUNTERS = (
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
    "vllm:num_preemptions_total", "vllm:request_success_total",
)


def worker_metrics(url: str, names: tuple[str, ...] = WORKER_COUNTERS) -> dict[str, float]:
    """Counters (``names``) of one vLLM worker, summed over label sets, by metric name."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match is None:
            continue
        name = match["name"]
        if name in names:
            found[name] = found.get(name, 0.0) + float(match["value"])
        elif name == "vllm:cache_config_info" and match["labels"]:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            found["block_size"] = float(labels.get("block_size", "nan"))
            found["num_gpu_blocks"] = float(labels.get("num_gpu_blocks", "nan"))
    return found


# --- one run -------------------------------------------------------------------------


@dataclass
class Sample:
    ok: bool
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    completion_tokens: int = 0
    cache_header: str = ""
    error: str = ""


@dataclass
class RunResult:
    arm: str
    tag: str
    wall_s: float
    samples: list[Sample]
    vllm: dict[str, dict[str, float]]  # worker -> counter deltas
    log_rows: list[dict[str, Any]] = field(default_factory=list)  # with "prefix" added
    load_before: float = 0.0
    load_after: float = 0.0


async def send_all(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[Sample]:
    semaphore = asyncio.Semaphore(concurrency)
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}

    async def one(client: httpx.AsyncClient, body: dict[str, Any]) -> Sample:
        async with semaphore:
            sample = Sample(ok=False)
            started = time.perf_counter()
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body,
                                         headers=headers) as response:
                    sample.cache_header = response.headers.get("x-cache", "")
                    if response.status_code != 200:
                        sample.error = f"HTTP {response.status_code}"
                        await response.aread()
                        return sample
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            sample.ok = True
                            break
                        chunk = json.loads(data)
                        if "error" in chunk:
                            sample.error = str(chunk["error"])[:200]
                            break
                        choices = chunk.get("choices") or []
                        if sample.ttft_ms is None and any(
                            (c.get("delta") or {}).get("content") for c in choices
                        ):
                            sample.ttft_ms = (time.perf_counter() - started) * 1000
                        if chunk.get("usage"):
                            sample.completion_tokens = int(
                                chunk["usage"].get("completion_tokens") or 0)
            except httpx.HTTPError as exc:
                sample.error = f"{type(exc).__name__}: {exc}"
            sample.latency_ms = (time.perf_counter() - started) * 1000
            return sample

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        return await asyncio.gather(*(one(client, b) for b in bodies))


def read_request_log(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "select worker, cache_layer, status_code, prompt_tokens, cached_tokens, ttft_ms, "
            "latency_ms, prompt_hash from request_log where tenant = 'bench'"
        ).fetchall()
    return [dict(r) for r in rows]


def run_arm(arm: str, tag: str, work: Workload, workers: list[Any], model: str,
            workdir: Path, args: argparse.Namespace) -> RunResult:
    gateway, url, db = start_gateway(workdir, f"{arm}-{tag}", [w.base_url for w in workers],
                                     model, args.load_factor if arm == "on" else 0.0)
    try:
        bodies = [request_body(work, i, tag, model, args) for i in range(len(work.order))]
        before = {w.base_url: worker_metrics(w.base_url) for w in workers}
        load_before = load_average()
        started = time.perf_counter()
        samples = asyncio.run(send_all(url, bodies, args.concurrency))
        wall = time.perf_counter() - started
        load_after = load_average()
        after = {w.base_url: worker_metrics(w.base_url) for w in workers}
    finally:
        gateway.stop()  # drains telemetry into its store
    deltas = {
        u: {k: after[u].get(k, 0.0) - before[u].get(k, 0.0) for k in after[u]
            if k.endswith("_total")}
        for u in after
    }
    # request_log keeps sha256 of the messages: enough to tell which prefix a row had
    prefix_of = {
        hashlib.sha256(orjson.dumps(body["messages"])).hexdigest(): work.order[i][0]
        for i, body in enumerate(bodies)
    }
    rows = read_request_log(db)
    for row in rows:
        row["prefix"] = prefix_of.get(row.pop("prompt_hash"), -1)
    result = RunResult(arm, tag, wall, samples, deltas, rows, load_before, load_after)
    s = summarize_run(result, [w.base_url for w in workers])
    print(f"  {arm:3s} [{tag}] hit {s['vllm_hit_rate']:.3f}  sticky {s['sticky']:.2f}  "
          f"prefix-worker pairs {s['prefix_worker_pairs']}  gateway cached "
          f"{s['gateway_cached_share']:.3f}  TTFT p50 {s['ttft_p50_ms']:.0f} p95 "
          f"{s['ttft_p95_ms']:.0f} ms  {s['req_s']:.2f} req/s  split {s['split']}  "
          f"errors {s['errors']}  load {load_before:.2f}->{load_after:.2f}", flush=True)
    return result


# --- figures -------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def summarize_run(result: RunResult, urls: list[str]) -> dict[str, Any]:
    return summarize_runs([result], urls)


def summarize_runs(results: list[RunResult], urls: list[str]) -> dict[str, Any]:
    """Pooled figures of one arm's runs (rates from summed counters, pooled percentiles)."""
    samples = [s for r in results for s in r.samples]
    ok = [s for s in samples if s.ok]
    ttft = [s.ttft_ms for s in ok if s.ttft_ms is not None]
    latency = [s.latency_ms for s in ok]
    wall = sum(r.wall_s for r in results)
    hits = sum(r.vllm[u].get("vllm:prefix_cache_hits_total", 0.0) for r in results for u in urls)
    queries = sum(r.vllm[u].get("vllm:prefix_cache_queries_total", 0.0)
                  for r in results for u in urls)
    per_worker = {}
    for name, u in zip("AB", urls, strict=True):
        h = sum(r.vllm[u].get("vllm:prefix_cache_hits_total", 0.0) for r in results)
        q = sum(r.vllm[u].get("vllm:prefix_cache_queries_total", 0.0) for r in results)
        per_worker[name] = {
            "hit_rate": round(h / q, 4) if q else None,
            "requests": int(sum(r.vllm[u].get("vllm:request_success_total", 0.0)
                                for r in results)),
            "preemptions": int(sum(r.vllm[u].get("vllm:num_preemptions_total", 0.0)
                                   for r in results)),
        }
    rows = [row for r in results for row in r.log_rows if row["status_code"] == 200]
    prompt_tokens = sum(row["prompt_tokens"] or 0 for row in rows)
    cached_tokens = sum(row["cached_tokens"] or 0 for row in rows)
    gw_ttft = [row["ttft_ms"] for row in rows if row["ttft_ms"] is not None]
    # stickiness: share of requests on their prefix's busiest worker in their run, and
    # how many (prefix, worker) pairs were touched (each one pays a cold prefill)
    on_majority, pairs = 0, 0
    for r in results:
        per_prefix: dict[int, dict[str, int]] = {}
        for row in r.log_rows:
            if row["status_code"] == 200:
                counts = per_prefix.setdefault(row["prefix"], {})
                counts[row["worker"]] = counts.get(row["worker"], 0) + 1
        on_majority += sum(max(c.values()) for c in per_prefix.values())
        pairs += sum(len(c) for c in per_prefix.values())
    return {
        "runs": len(results),
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "cache_headers": sorted({s.cache_header for s in samples}),
        "vllm_hit_rate": round(hits / queries, 4) if queries else float("nan"),
        "vllm_hit_tokens": int(hits),
        "vllm_query_tokens": int(queries),
        "per_worker": per_worker,
        "split": "/".join(str(per_worker[n]["requests"]) for n in "AB"),
        "sticky": round(on_majority / len(rows), 4) if rows else float("nan"),
        "prefix_worker_pairs": pairs,
        "gateway_rows": len(rows),
        "gateway_cached_share": round(cached_tokens / prompt_tokens, 4) if prompt_tokens
        else float("nan"),
        "gateway_cached_tokens_mean": round(cached_tokens / len(rows), 1) if rows else None,
        "gateway_prompt_tokens_mean": round(prompt_tokens / len(rows), 1) if rows else None,
        "ttft_p50_ms": round(pct(ttft, 50), 1),
        "ttft_p95_ms": round(pct(ttft, 95), 1),
        "gateway_ttft_p50_ms": round(pct(gw_ttft, 50), 1),
        "latency_p50_ms": round(pct(latency, 50), 1),
        "latency_p95_ms": round(pct(latency, 95), 1),
        "req_s": round(len(ok) / wall, 2) if wall else float("nan"),
        "output_tok_s": round(sum(s.completion_tokens for s in ok) / wall, 1) if wall
        else float("nan"),
        "load_max": round(max(max(r.load_before, r.load_after) for r in results), 2),
    }


def default_kv_blocks(work: Workload, block_size: int) -> int:
    """The full blocks of all system prompts together (at least 16, vLLM's minimum here)."""
    return max(16, sum(n // block_size for n in work.prefix_token_counts))


# --- main ----------------------------------------------------------------------------


def start_run(args: argparse.Namespace) -> tuple[dict[str, Any], Path, Workload]:
    """What every run of a prefix benchmark starts with (this one and prefix_warming's):
    signals handled, the round count checked against the session tags, the machine
    printed, the model and the workload built. Returns (machine info, model, workload)."""
    stop_on_signals()
    if 2 * args.rounds > len(SESSION_TAGS):
        raise SystemExit(f"at most {len(SESSION_TAGS) // 2} rounds")
    info = machine_info()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}; {info['uptime']}", flush=True)
    model = model_dir(args)
    return info, model, build_workload(args, model)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, model, work = start_run(args)
    block_size = 128  # vLLM-CPU's attention block; checked against the workers below
    kv_blocks = default_kv_blocks(work, block_size) if args.kv_blocks < 0 else args.kv_blocks
    print(f"{args.prefixes} system prompts of {min(work.prefix_token_counts)}-"
          f"{max(work.prefix_token_counts)} tokens, {len(work.questions)} questions, "
          f"{args.requests} requests per run; KV blocks per worker: "
          f"{kv_blocks or 'vLLM default'}", flush=True)
    workdir = bench_tempdir("bench-affinity-")
    workers: list[Any] = []
    results: dict[str, list[RunResult]] = {arm: [] for arm in ARMS}
    try:
        workers = start_workers(args, model, workdir, kv_blocks)
        name = workers[0].served_model_name
        urls = [w.base_url for w in workers]
        config = worker_metrics(urls[0])
        if config.get("block_size") != block_size:
            print(f"note: workers use KV blocks of {config.get('block_size')} tokens",
                  flush=True)
        warm_up(workers, work, name, args)
        tags = iter(SESSION_TAGS)
        for round_no in range(args.rounds):
            order = list(ARMS) if round_no % 2 == 0 else list(ARMS)[::-1]
            for arm in order:
                results[arm].append(run_arm(arm, next(tags), work, workers, name, workdir,
                                            args))
    finally:
        Service.stop_all()
        for worker in workers:
            worker.stop()

    summary = {arm: summarize_runs(runs, urls) for arm, runs in results.items()}
    report(summary, info, args, model, work, kv_blocks, config)
    print_json_line({
        "benchmark": "prefix_affinity",
        "machine": info,
        "load_at_end": round(load_average(), 2),
        "config": {
            "model": str(model), "prompts": str(args.prompts), "prefixes": args.prefixes,
            "prefix_tokens": work.prefix_token_counts, "requests_per_run": args.requests,
            "concurrency": args.concurrency, "max_tokens": args.max_tokens,
            "temperature": args.temperature, "rounds": args.rounds, "seed": args.seed,
            "kv_blocks_per_worker": kv_blocks or int(config.get("num_gpu_blocks", 0)),
            "block_size": int(config.get("block_size", 0)),
            "load_factor_on": args.load_factor, "workers": "same two for every run, never reset; "
            "each run's prefixes carry their own session tag",
        },
        "arms": summary,
        "runs": [
            {"arm": r.arm, "tag": r.tag, **summarize_run(r, urls)}
            for arm in ARMS for r in results[arm]
        ],
    })
    if not args.keep_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs and stores kept in {workdir}", file=sys.stderr)
    return 0


def warm_up(workers: list[Any], work: Workload, model: str, args: argparse.Namespace) -> None:
    """A few requests straight to each worker (a tag no run uses): first-call costs."""
    for worker in workers:
        for i in range(4):
            body = request_body(work, i, "warmup", model, args)
            body["stream"] = False
            body.pop("stream_options")
            response = httpx.post(f"{worker.base_url}/v1/chat/completions", json=body,
                                  timeout=120)
            response.raise_for_status()


def report(summary: dict[str, dict[str, Any]], info: dict[str, object],
           args: argparse.Namespace, model: Path, work: Workload, kv_blocks: int,
           config: dict[str, float]) -> None:
    print()
    print(f"{info['date_utc']} UTC, {info['nproc']} cores ({info['cpu_model']}); model "
          f"{model.name}; 2 vLLM-CPU workers (threads on core 0 / core 1), KV cache "
          f"{kv_blocks or int(config.get('num_gpu_blocks', 0))} blocks x "
          f"{int(config.get('block_size', 0))} tokens each; {args.prefixes} system prompts of "
          f"~{args.prefix_tokens} tokens from {args.prompts.name}; {args.requests} streamed "
          f"requests per run at concurrency {args.concurrency}, max_tokens {args.max_tokens} "
          f"(ignore_eos), temperature {args.temperature}; {args.rounds} run(s) per arm, "
          f"ABBA, pooled")
    print()
    rows = []
    for arm, s in summary.items():
        label = f"affinity ON ({args.load_factor:g})" if arm == "on" else "OFF (least-outstanding)"
        rows.append([
            label, s["requests"], s["errors"], f"{100 * s['vllm_hit_rate']:.1f}%",
            f"{100 * s['gateway_cached_share']:.1f}%", s["gateway_cached_tokens_mean"],
            f"{100 * s['sticky']:.0f}%", s["prefix_worker_pairs"],
            s["ttft_p50_ms"], s["ttft_p95_ms"], s["latency_p50_ms"], s["latency_p95_ms"],
            s["req_s"], s["output_tok_s"], s["split"], s["load_max"],
        ])
    print(markdown_table(
        ["routing", "requests", "errors", "vLLM prefix hit", "gateway cached share",
         "cached tok/req", "sticky", "prefix x worker", "TTFT p50 ms", "TTFT p95 ms",
         "e2e p50 ms", "e2e p95 ms", "req/s", "out tok/s", "split A/B", "load max"],
        rows,
    ))
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
