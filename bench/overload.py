"""Overload: offered load at twice a worker's capacity, with and without admission control.

Without admission control every request goes straight to vLLM, which queues what it
cannot batch; under sustained overload that queue only grows, and every request waits
behind it. With admission control the gateway lets at most ``--cap`` requests onto the
worker and holds the rest in its queue for up to ``--queue-timeout`` seconds, then
refuses them with 503 ``overloaded`` and ``Retry-After``: the requests it admits keep a
bounded latency, and a client learns at once that it should back off.

One run: start one vLLM-CPU worker (or use ``--worker URL``) and two gateways in front
of it, identical but for admission control (``max_in_flight_per_worker`` = ``--cap`` vs
0 = no cap); measure the worker's capacity (requests/s, closed loop at ``--cap``
concurrent requests through the uncapped gateway); then drive each gateway in turn with
the same open-loop Poisson arrivals at ``--load`` x that capacity for ``--duration``
seconds (requests with exactly ``--max-tokens`` output tokens, prompts from a ShareGPT
file) and wait for every answer. Reported per arm: p50/p95 latency of admitted (200)
requests, the fraction refused (503) and timed out client-side, completed requests/s
and goodput (answers within ``--slo`` seconds), both per second from the first arrival
to the last answer.

Example::

    .venv/bin/python bench/overload.py --prompts ../shared/data/prompts/sharegpt_500.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from harness import (
    REPO_ROOT,
    Service,
    bench_tempdir,
    load_average,
    machine_info,
    markdown_table,
    print_json_line,
    stop_on_signals,
)
from vllm_throughput import GATEWAY_KEY, fitting_prompts, model_dir, start_gateway, start_vllm

from services.demo.workload import DEMO_PROMPTS, load_prompts

ARMS = ("admission", "no admission")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="p95 latency and refusals at 2x capacity, with/without admission control",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--prompts", type=Path, default=DEMO_PROMPTS,
                        help="ShareGPT-format JSON; first human turn of each record")
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder for the vLLM worker started here (default: the "
                             "tiny test model)")
    parser.add_argument("--worker", default=None,
                        help="use this running OpenAI-compatible worker instead of starting one")
    parser.add_argument("--cap", type=int, default=64,
                        help="admission arm: requests in flight on the worker at most (the "
                             "setting's default, a worker's batch); capacity is measured there")
    parser.add_argument("--queue-timeout", type=float, default=5.0,
                        help="admission arm: longest wait in the gateway's queue, seconds")
    parser.add_argument("--load", type=float, default=2.0, help="offered load x capacity")
    parser.add_argument("--duration", type=float, default=45.0, help="seconds of arrivals")
    parser.add_argument("--capacity-duration", type=float, default=20.0,
                        help="seconds of the closed-loop capacity measurement")
    parser.add_argument("--max-tokens", type=int, default=64, help="exact output tokens")
    parser.add_argument("--slo", type=float, default=10.0,
                        help="an answer counts toward goodput when it came within this, s")
    parser.add_argument("--client-timeout", type=float, default=120.0,
                        help="a client gives up on a request after this, s")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--vllm-python", type=Path, default=REPO_ROOT / ".venv-vllm/bin/python")
    parser.add_argument("--kvcache-gib", type=int, default=2)
    parser.set_defaults(layout="shared")  # vLLM on every core, as start_vllm expects
    return parser.parse_args(argv)


@dataclass
class Outcome:
    status: int  # HTTP status; 0 = the client gave up or the connection failed
    latency_s: float


def body_for(prompt: str, model_name: str, max_tokens: int) -> bytes:
    return orjson.dumps({
        "model": model_name, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
    })


async def send(session: aiohttp.ClientSession, url: str, body: bytes, timeout_s: float
               ) -> Outcome:
    started = time.perf_counter()
    try:
        async with session.post(
            f"{url}/v1/chat/completions", data=body,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            headers={"content-type": "application/json",
                     "authorization": f"Bearer {GATEWAY_KEY}"},
        ) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        status = 0
    return Outcome(status, time.perf_counter() - started)


async def closed_loop(url: str, bodies: list[bytes], concurrency: int, duration_s: float,
                      timeout_s: float) -> float:
    """Completed requests/s with ``concurrency`` clients each sending back to back."""
    done = 0
    deadline = time.perf_counter() + duration_s

    async def client(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < deadline:
            outcome = await send(session, url, bodies[i % len(bodies)], timeout_s)
            if outcome.status == 200 and time.perf_counter() <= deadline:
                done += 1
            i += concurrency

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session, k) for k in range(concurrency)))
    return done / (time.perf_counter() - started)


async def open_loop(url: str, bodies: list[bytes], arrivals: list[float], timeout_s: float
                    ) -> list[Outcome]:
    """Send request i at ``arrivals[i]`` seconds whatever came back before; wait for all."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        tasks = []
        for i, at in enumerate(arrivals):
            delay = started + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(
                send(session, url, bodies[i % len(bodies)], timeout_s)
            ))
        return list(await asyncio.gather(*tasks))


def poisson_arrivals(rate: float, duration_s: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    arrivals, t = [], rng.expovariate(rate)
    while t < duration_s:
        arrivals.append(t)
        t += rng.expovariate(rate)
    return arrivals


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank), rounded to ms; None for no values (JSON null)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


def summarize(outcomes: list[Outcome], wall_s: float, slo_s: float) -> dict[str, Any]:
    """Latency of admitted requests, refusals, and rates over the whole run (arrivals
    until the last answer)."""
    admitted = [o.latency_s for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 503]
    n = len(outcomes)
    return {
        "offered": n,
        "admitted": len(admitted),
        "refused_fraction": round(len(refused) / n, 4),
        "timed_out_fraction": round(sum(o.status == 0 for o in outcomes) / n, 4),
        "other_errors": sum(o.status not in (0, 200, 503) for o in outcomes),
        "p50_s": percentile(admitted, 0.50),
        "p95_s": percentile(admitted, 0.95),
        "max_s": percentile(admitted, 1.0),
        "refusal_p50_s": percentile([o.latency_s for o in refused], 0.5),
        "refusal_p95_s": percentile([o.latency_s for o in refused], 0.95),
        "completed_per_s": round(len(admitted) / wall_s, 2),
        "goodput_per_s": round(sum(lat <= slo_s for lat in admitted) / wall_s, 2),
        "wall_s": round(wall_s, 1),
    }


async def served_model(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/models") as r:
        return str((await r.json())["data"][0]["id"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    info = machine_info()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}; {info['uptime']}", flush=True)
    workdir = bench_tempdir("bench-overload-")
    worker = None
    try:
        if args.worker:
            worker_url = args.worker.rstrip("/").removesuffix("/v1")
            model_name = asyncio.run(served_model(worker_url))
            model = None
        else:
            model = model_dir(args)
            worker, model_name = start_vllm(args, model, workdir)
            worker_url = worker.base_url
        prompts = load_prompts(args.prompts)
        if model is not None:
            prompts = fitting_prompts(prompts, model, args.max_tokens)
        bodies = [body_for(p, model_name, args.max_tokens) for p in prompts]
        gateways = {
            arm: start_gateway(workdir, worker_url, model_name, None,
                               name=arm.replace(" ", "-"), env={
                                   "OPTENGINE_MAX_IN_FLIGHT_PER_WORKER": str(cap),
                                   "OPTENGINE_ADMISSION_QUEUE_TIMEOUT_S": str(args.queue_timeout),
                                   "OPTENGINE_UPSTREAM_READ_TIMEOUT_S": "600",
                                   # no connection limit either: it would be a hidden cap
                                   # (a 503 after the connect timeout) on the uncapped arm
                                   "OPTENGINE_UPSTREAM_MAX_CONNECTIONS": "0",
                               })
            for arm, cap in zip(ARMS, (args.cap, 0), strict=True)  # 0 = no cap, no queue
        }
        for service, _ in gateways.values():
            service.pause()

        service, url = gateways["no admission"]
        service.resume()
        asyncio.run(closed_loop(url, bodies, args.cap, 5.0, args.client_timeout))  # warm-up
        capacity = asyncio.run(closed_loop(url, bodies, args.cap, args.capacity_duration,
                                           args.client_timeout))
        service.pause()
        rate = args.load * capacity
        arrivals = poisson_arrivals(rate, args.duration, args.seed)
        print(f"capacity {capacity:.2f} req/s at {args.cap} concurrent; offering "
              f"{rate:.2f} req/s ({len(arrivals)} requests over {args.duration:g} s)",
              flush=True)

        results: dict[str, dict[str, Any]] = {}
        for arm in ARMS:
            service, url = gateways[arm]
            service.resume()
            started = time.perf_counter()
            outcomes = asyncio.run(open_loop(url, bodies, arrivals, args.client_timeout))
            results[arm] = summarize(outcomes, time.perf_counter() - started, args.slo)
            service.pause()
            print(f"  {arm:12s} {results[arm]}", flush=True)
    finally:
        Service.stop_all()
        if worker is not None:
            worker.stop()

    with_ac, without = results["admission"], results["no admission"]
    figures = {
        "capacity_req_s": round(capacity, 2),
        "offered_req_s": round(rate, 2),
        "p95_ratio_admission_vs_none": (
            round(with_ac["p95_s"] / without["p95_s"], 3)
            if with_ac["p95_s"] and without["p95_s"] else None
        ),
        "refused_fraction_admission": with_ac["refused_fraction"],
        "goodput_admission": with_ac["goodput_per_s"],
        "goodput_no_admission": without["goodput_per_s"],
    }
    report(results, figures, info, args, model_name)
    print_json_line({
        "benchmark": "overload",
        "machine": info,
        "load_at_end": load_average(),
        "config": {
            "prompts": str(args.prompts), "model": model_name, "cap": args.cap,
            "queue_timeout_s": args.queue_timeout, "load": args.load,
            "duration_s": args.duration, "max_tokens": args.max_tokens, "slo_s": args.slo,
            "client_timeout_s": args.client_timeout, "seed": args.seed,
        },
        "results": results,
        "figures": figures,
    })
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(results: dict[str, dict[str, Any]], figures: dict[str, Any],
           info: dict[str, object], args: argparse.Namespace, model_name: str) -> None:
    print()
    print(f"{info['date_utc']} UTC, {info['nproc']} cores ({info['cpu_model']}); model "
          f"{model_name}; max_tokens {args.max_tokens} (ignore_eos); capacity "
          f"{figures['capacity_req_s']} req/s at {args.cap} concurrent; offered "
          f"{figures['offered_req_s']} req/s ({args.load:g}x, Poisson, {args.duration:g} s); "
          f"admission: cap {args.cap}, queue timeout {args.queue_timeout:g} s; "
          f"goodput = answers within {args.slo:g} s per second, first arrival to last answer")
    print()
    rows = []
    for arm in ARMS:
        r = results[arm]
        rows.append([arm, r["offered"], r["admitted"], r["p50_s"], r["p95_s"], r["max_s"],
                     f"{100 * r['refused_fraction']:.0f}%", r["refusal_p50_s"],
                     r["refusal_p95_s"], f"{100 * r['timed_out_fraction']:.0f}%",
                     r["completed_per_s"], r["goodput_per_s"]])
    print(markdown_table(
        ["arm", "offered", "admitted", "p50 s", "p95 s", "max s", "refused (503)",
         "refusal p50 s", "refusal p95 s", "timed out", "completed/s", "goodput/s"],
        rows,
    ))
    print()
    print(f"admitted p95 with admission control: {figures['p95_ratio_admission_vs_none']}x "
          f"of without; {100 * figures['refused_fraction_admission']:.0f}% refused")
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
