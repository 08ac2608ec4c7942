"""Batch inference output tokens/s: one by one vs static batches vs the batch engine.

Starts one real vLLM-CPU worker (the tiny test model unless ``--model``) and sends the
same ShareGPT prompts (first human turn, ``--max-tokens`` exact output tokens with
``ignore_eos``) three ways:

* ``sequential``: one request at a time (the first ``--sequential-limit`` prompts: at
  one request at a time the whole set would take most of the run, and tokens/s is a rate);
* ``static``: naive batches of ``--static-size`` sent together, the next batch only when
  the whole batch is back (the slowest line of each batch idles the rest);
* ``engine``: the ``parallel_execution`` flow's steps on a fresh SQLite store (prepare,
  analyze, execute, finalize: line checks, length prediction and bins, continuous
  dispatch at 64 in flight per worker, checkpoints, priced request_log rows, the output
  file), timed from reading the batch to its output file; the store's set-up (migration,
  upload) and Prefect's own start-up are not timed.

Tokens are the ``completion_tokens`` each 200 answer reports; "client CPU s" is the CPU
the benchmark process itself used in a run (for the engine: its store writes and pricing
too), which on a 2-core machine is CPU vLLM did not get. Every run salts its prompts
with its own tag, so vLLM's prefix cache never serves one arm the prefill of another
(without it the later arms run warm). Static and engine runs alternate (static, engine,
static, engine), and each is reported on the tokens and seconds of both its runs, so
drift on a shared machine falls on both alike.

Example::

    .venv/bin/python bench/batch_throughput.py \\
        --prompts ../shared/data/prompts/sharegpt_500.json --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from harness import (
    REPO_ROOT,
    bench_tempdir,
    cpu_busy,
    load_average,
    machine_info,
    markdown_table,
    print_json_line,
    stop_on_signals,
)
from sqlalchemy import func, select
from vllm_throughput import fitting_prompts, model_dir, start_vllm

from services.demo.workload import load_prompts
from services.execution import UpstreamClient


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Batch output tokens/s: sequential vs static batches vs the batch engine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--prompts", type=Path, required=True,
                        help="ShareGPT-format JSON; first human turn of each record")
    parser.add_argument("--limit", type=int, default=500, help="use only the first N prompts")
    parser.add_argument("--max-tokens", type=int, default=32, help="exact output tokens/request")
    parser.add_argument("--sequential-limit", type=int, default=32,
                        help="prompts the one-by-one arm sends")
    parser.add_argument("--static-size", type=int, default=64, help="static batch size")
    parser.add_argument("--mixed-lengths", action="store_true",
                        help="each request's max_tokens drawn (seeded, log-uniform) from "
                             "4..--max-tokens instead of one fixed length")
    parser.add_argument("--model", type=Path, default=None, help="model folder")
    parser.add_argument("--vllm-python", type=Path, default=REPO_ROOT / ".venv-vllm/bin/python")
    parser.add_argument("--kvcache-gib", type=int, default=2)
    parser.add_argument("--keep-dir", action="store_true", help="keep logs and the store")
    args = parser.parse_args(argv)
    args.layout = "shared"  # start_vllm's option: vLLM on every core
    return args


def mixed_lengths(count: int, ceiling: int) -> list[int]:
    """Seeded log-uniform output lengths in [4, ceiling]: many short answers, a few long
    ones, as chat answers come (the prompt file holds no answers to take them from)."""
    rng = random.Random(0)
    return [round(math.exp(rng.uniform(math.log(4), math.log(ceiling)))) for _ in range(count)]


def bodies(prompts: list[str], model: str, max_tokens: list[int],
           tag: str) -> list[dict[str, Any]]:
    """Requests for one run; ``tag`` starts every prompt, so no run reuses another's
    prefix cache."""
    return [{"model": model, "messages": [{"role": "user", "content": f"[{tag}] {p}"}],
             "max_tokens": n, "temperature": 0, "ignore_eos": True}
            for p, n in zip(prompts, max_tokens, strict=True)]


async def _send(client: UpstreamClient, url: str, body: dict[str, Any]) -> int:
    answer = orjson.loads(await client.post_json(url, "/v1/chat/completions",
                                                 orjson.dumps(body)))
    return int(answer["usage"]["completion_tokens"])


async def run_sequential(url: str, requests: list[dict[str, Any]]) -> int:
    client = UpstreamClient()
    try:
        return sum([await _send(client, url, body) for body in requests])
    finally:
        await client.aclose()


async def run_static(url: str, requests: list[dict[str, Any]], size: int) -> int:
    client = UpstreamClient()
    tokens = 0
    try:
        for start in range(0, len(requests), size):
            chunk = requests[start:start + size]
            tokens += sum(await asyncio.gather(*(_send(client, url, b) for b in chunk)))
    finally:
        await client.aclose()
    return tokens


def engine_batch(url: str, requests: list[dict[str, Any]], workdir: Path) -> Any:
    """A fresh store holding the batch (set up before the clock starts); returns a
    function that runs it through the flow's steps and returns its output tokens."""
    from migrations import upgrade_to_head
    from models import RequestLog, create_store_engine
    from services.batch import analyze, execute, finalize, prepare, store
    from services.settings import load_settings

    settings = load_settings(env="test", data_dir=workdir, workers=[url])
    upgrade_to_head(settings.database_url)
    engine = create_store_engine(settings.database_url)
    content = b"\n".join(orjson.dumps({"custom_id": f"r{i}", "method": "POST",
                                       "url": "/v1/chat/completions", "body": body})
                         for i, body in enumerate(requests))
    stored = store.create_file(engine, tenant="bench", filename="bench.jsonl", purpose="batch",
                               content=content)
    batch_id = store.create_batch(engine, tenant="bench", input_file_id=stored.id,
                                  endpoint="/v1/chat/completions").id

    def run() -> int:
        prepared = prepare(engine, batch_id)
        assert prepared is not None
        planned = analyze(engine, prepared.remaining)
        batch = finalize(engine, batch_id, asyncio.run(execute(settings, engine, prepared,
                                                               planned)))
        if batch.status != "completed" or batch.failed:
            raise RuntimeError(f"engine batch {batch.status}, {batch.failed} failed")
        with engine.connect() as conn:
            tokens = conn.scalar(select(func.sum(RequestLog.completion_tokens))
                                 .where(RequestLog.route_reason == f"batch:{batch_id}"))
        return int(tokens or 0)

    return run


def measure(name: str, requests: int, work: Any) -> dict[str, Any]:
    busy = cpu_busy(0.5)
    started, cpu = time.perf_counter(), time.process_time()
    tokens = work()
    seconds = time.perf_counter() - started
    row = {"arm": name, "requests": requests, "output_tokens": tokens, "seconds": seconds,
           "tokens_per_s": tokens / seconds, "client_cpu_s": time.process_time() - cpu,
           "busy_before": busy, "load": load_average()}
    print(f"{name:>10}: {requests} requests, {tokens} tokens in {seconds:.1f} s = "
          f"{row['tokens_per_s']:.0f} tok/s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    workdir = bench_tempdir("batch-throughput-")
    model = model_dir(args)
    prompts = fitting_prompts(load_prompts(args.prompts), model, args.max_tokens)[:args.limit]
    if args.mixed_lengths:
        lengths = mixed_lengths(len(prompts), args.max_tokens)
    else:
        lengths = [args.max_tokens] * len(prompts)
    worker, served = start_vllm(args, model, workdir)
    url = worker.base_url
    try:
        asyncio.run(run_static(url, bodies(prompts[:8], served, lengths[:8], "warm-up"), 8))
        sequential = bodies(prompts[:args.sequential_limit], served,
                            lengths[:args.sequential_limit], "seq")
        rows = [measure("sequential", len(sequential),
                        lambda: asyncio.run(run_sequential(url, sequential)))]
        for run in (1, 2):
            static = bodies(prompts, served, lengths, f"static-{run}")
            rows.append(measure("static", len(static), lambda r=static: asyncio.run(
                run_static(url, r, args.static_size))))
            batch = bodies(prompts, served, lengths, f"engine-{run}")
            rows.append(measure("engine", len(batch),
                                engine_batch(url, batch, workdir / f"engine-{run}")))
    finally:
        worker.stop()
        if not args.keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    rate = {arm: sum(r["output_tokens"] for r in rows if r["arm"] == arm)
            / sum(r["seconds"] for r in rows if r["arm"] == arm)
            for arm in ("sequential", "static", "engine")}
    print()
    print(markdown_table(
        ["arm", "requests", "output tokens", "seconds", "output tok/s", "client CPU s",
         "busy before", "load"],
        [[r["arm"], r["requests"], r["output_tokens"], r["seconds"], r["tokens_per_s"],
          r["client_cpu_s"], f"{r['busy_before']:.0%}", r["load"]] for r in rows]))
    payload = {
        "benchmark": "batch_throughput", "prompts": str(args.prompts), "requests": len(prompts),
        "max_tokens": args.max_tokens, "mixed_lengths": args.mixed_lengths,
        "static_size": args.static_size,
        "sequential_tok_s": rate["sequential"], "static_tok_s": rate["static"],
        "engine_tok_s": rate["engine"],
        "speedup_vs_sequential": rate["engine"] / rate["sequential"],
        "speedup_vs_static": rate["engine"] / rate["static"],
        "rows": rows, "machine": machine_info(),
    }
    print(f"engine: {payload['speedup_vs_sequential']:.1f}x sequential, "
          f"{payload['speedup_vs_static']:.2f}x static (both runs of each)")
    print_json_line(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
