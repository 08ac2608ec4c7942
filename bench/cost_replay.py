"""Cost by lever on a replayed trace: what each lever saves alone and all together.

Replays a trace's arrivals (Azure CSV ``TIMESTAMP,ContextTokens,GeneratedTokens``, or
JSONL with ``timestamp`` in ms, ``input_length``, ``output_length``), time-compressed by
``--speedup``, with ShareGPT prompts: request i arrives at the trace's i-th time and
repeats request ``i % --pool`` (ShareGPT prompt k padded with the following prompts'
text to row k's context length, ``max_tokens`` = row k's generated tokens, temperature
0), so ``1 - pool / limit`` of the requests are repeats; every ``--reword-every``-th
repeat is retyped (``retyped``: the first letter's case flipped, ending in "?"): no
exact hit, a semantic candidate. (A polite prefix or suffix instead is never accepted
by the default verifier at its precision-0.95 threshold on these long prompts: 0 of 30
tried.) They go
through a real gateway process, once per lever configuration, each on a fresh SQLite
store; every run sends the same requests. Upstreams
are ``bench/fake_upstream.py --usage-from-request`` (usage follows each request: 4
characters a prompt token, ``max_tokens`` completion tokens): one posing as the hosted
OpenAI API, one as our own vLLM worker serving ``llama-3.1-8b-instruct``.

Configurations: ``all_off`` (every request to the baseline, gpt-4o-mini, hosted),
``cache`` (exact response cache), ``semantic_cache`` (exact and semantic cache, the
semantic one on for the replay's tenant), ``token_optimization`` (``--token-policy``),
``routing`` (``auto`` between gpt-4.1-nano and gpt-4o-mini, cascade on), ``self_hosting``
(the self-hosted model), ``batch`` (every ``--batch-every``-th request goes into one
``/v1/batches`` job on the self-hosted model, submitted after the online replay, instead
of online), ``all_on`` (both caches, tokens, the batch part, ``auto`` between the
self-hosted model and gpt-4o-mini with the cascade). The self-hosted model is priced
from the settings' GPU-hour ($2, 1,000 output tokens/s by default) with
``measure_throughput`` off: the fake worker's measured throughput would be the
machine's load, not a GPU's.

From each store: cost, baseline and the saving of every lever (``live_summary``, the
reports' attribution); the final JSON line holds ``runs`` and ``attribution_gap`` (all-on
run: |sum of levers - (baseline - cost)| / baseline).

Example::

    .venv/bin/python bench/cost_replay.py --trace ../shared/data/traces/azure_code_2023.csv \\
        --prompts ../shared/data/prompts/sharegpt_500.json --limit 600 --speedup 20
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    APP_PYTHON,
    BENCH_DIR,
    REPO_ROOT,
    Service,
    bench_tempdir,
    free_port,
    machine_info,
    markdown_table,
    print_json_line,
    stop_on_signals,
)
from models import create_store_engine  # noqa: E402
from services.costs import PriceCatalog  # noqa: E402
from services.costs.reports import LEVERS, hosted_upstreams, live_summary  # noqa: E402
from services.settings import load_settings  # noqa: E402

SELF_HOSTED = "llama-3.1-8b-instruct"
BASELINE = "gpt-4o-mini"
CHEAP_HOSTED = "gpt-4.1-nano"
SPEC_CLAIMS = {"cache": "70-90%", "token_optimization": "40%", "routing": "40-60%"}
TERMINAL = ("completed", "failed", "expired", "cancelled")


def load_trace(path: Path, limit: int) -> list[tuple[float, int, int]]:
    """(seconds since the first arrival, context tokens, generated tokens)."""
    rows: list[tuple[float, int, int]] = []
    if path.suffix == ".csv":
        with path.open() as f:
            for rec in csv.DictReader(f):
                at = datetime.fromisoformat(rec["TIMESTAMP"][:26]).timestamp()
                rows.append((at, int(rec["ContextTokens"]), int(rec["GeneratedTokens"])))
                if len(rows) >= limit:
                    break
    else:
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                rows.append((rec["timestamp"] / 1000, int(rec["input_length"]),
                             int(rec["output_length"])))
            if len(rows) >= limit:
                break
    first = rows[0][0]
    return [(at - first, ctx, gen) for at, ctx, gen in rows]


def load_prompts(path: Path) -> list[str]:
    prompts = []
    for record in json.loads(path.read_text()):
        turns = [t.get("value", "") for t in record.get("conversations", [])
                 if t.get("from") == "human"]
        if turns and turns[0].strip():
            prompts.append(turns[0])
    return prompts


def prompt_for(k: int, context_tokens: int, prompts: list[str]) -> str:
    """Prompt ``k``, padded with the following prompts to about the trace's length
    (4 characters a token; capped at 32k characters)."""
    k %= len(prompts)
    parts, size, j = [prompts[k]], len(prompts[k]), 1
    target = min(context_tokens * 4, 32_000)
    while size < target and j < len(prompts):
        extra = prompts[(k + j) % len(prompts)]
        parts.append(extra)
        size += len(extra)
        j += 1
    return "\n\n".join(parts)[:target] if size > target else "\n\n".join(parts)


def configs(hosted_url: str, worker_url: str, policy: str) -> dict[str, dict]:
    hosted_only = {"models": [{"name": BASELINE, "tier": "balanced", "upstream": "openai",
                               "context_window": 128000}], "tiers": ["balanced"]}

    def auto(cheap: dict) -> dict:
        return {"tiers": ["fast_cheap", "balanced"],
                "models": [cheap, {"name": BASELINE, "tier": "balanced", "upstream": "openai",
                                   "context_window": 128000}],
                "router_tiers": ["fast_cheap", "balanced"],
                "cascade": {"enabled": True, "threshold": 0.5}}

    nano = {"name": CHEAP_HOSTED, "tier": "fast_cheap", "upstream": "openai",
            "context_window": 128000}
    ours = {"name": SELF_HOSTED, "tier": "fast_cheap", "upstream": "vllm",
            "context_window": 128000}
    return {
        "all_off": {"model": BASELINE, "routing": hosted_only},
        "cache": {"model": BASELINE, "routing": hosted_only, "cache": True},
        "semantic_cache": {"model": BASELINE, "routing": hosted_only, "cache": True,
                           "semantic": True},
        "token_optimization": {"model": BASELINE, "routing": hosted_only, "policy": policy},
        "routing": {"model": "auto", "routing": auto(nano)},
        "self_hosting": {"model": SELF_HOSTED, "routing": {}, "workers": worker_url},
        "batch": {"model": BASELINE, "routing": hosted_only, "workers": worker_url,
                  "batch": True},
        "all_on": {"model": "auto", "routing": auto(ours), "workers": worker_url,
                   "cache": True, "semantic": True, "policy": policy, "batch": True},
    }


def request(i: int, model: str, trace, prompts, args) -> dict:
    """Request ``i``: request ``i % pool`` again (same prompt, length and max_tokens),
    retyped when it is a repeat picked by ``--reword-every``."""
    k = i % args.pool
    _, ctx, gen = trace[k]
    text = prompt_for(k, ctx, prompts)
    if i >= args.pool and args.reword_every and i % args.reword_every == 0:
        text = retyped(text)
    return {"model": model, "temperature": 0, "max_tokens": max(gen, 1),
            "messages": [{"role": "user", "content": text}]}


def retyped(text: str) -> str:
    """The same question typed again: first letter's case flipped, ending in "?"."""
    text = text.strip()
    return text[:1].swapcase() + text[1:].rstrip(".?!") + "?"


def batched(i: int, args) -> bool:
    return bool(args.batch_every) and i % args.batch_every == 0


async def replay(url: str, config: dict, trace, prompts, args) -> tuple[int, int]:
    """The trace's online arrivals, then (``batch`` configurations) its batch part as
    one ``/v1/batches`` job; (requests sent, failed)."""
    limit = asyncio.Semaphore(args.concurrency)
    failures = 0
    started = time.monotonic()
    lines = []

    async def one(client: httpx.AsyncClient, i: int, at: float) -> None:
        nonlocal failures
        if config.get("batch") and batched(i, args):
            lines.append({"custom_id": f"req-{i}", "method": "POST",
                          "url": "/v1/chat/completions",
                          "body": request(i, SELF_HOSTED, trace, prompts, args)})
            return
        delay = at / args.speedup - (time.monotonic() - started)
        if delay > 0:
            await asyncio.sleep(delay)
        body = request(i, config["model"], trace, prompts, args)
        async with limit:
            try:
                response = await client.post(f"{url}/v1/chat/completions", json=body)
            except httpx.HTTPError:  # a reset on a loaded machine: counted, not fatal
                failures += 1
                return
        if response.status_code != 200:
            failures += 1

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(one(client, i, row[0]) for i, row in enumerate(trace)))
        if lines:
            failures += await run_batch(client, url, lines)
    return len(trace), failures


async def run_batch(client: httpx.AsyncClient, url: str, lines: list[dict]) -> int:
    """One batch job of ``lines``, waited for; its failed lines."""
    content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    upload = await client.post(f"{url}/v1/files", data={"purpose": "batch"},
                               files={"file": ("trace.jsonl", content)})
    upload.raise_for_status()
    created = await client.post(f"{url}/v1/batches", json={
        "input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})
    created.raise_for_status()
    batch = created.json()
    deadline = time.monotonic() + 900
    while batch["status"] not in TERMINAL:
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch['id']} still {batch['status']}")
        await asyncio.sleep(1)
        batch = (await client.get(f"{url}/v1/batches/{batch['id']}")).json()
    counts = batch.get("request_counts") or {}
    return len(lines) - int(counts.get("completed") or 0)


def run_config(name: str, config: dict, args, hosted_url: str, trace, prompts, workdir: Path
               ) -> dict:
    store = workdir / name / "store.db"
    store.parent.mkdir(parents=True)
    yaml_path = store.parent / "config.yaml"
    yaml_path.write_text(yaml.safe_dump({"routing": config["routing"]}))
    env = {
        "OPTENGINE_DATABASE_URL": f"sqlite:///{store}", "OPTENGINE_DATA_DIR": str(store.parent),
        "OPTENGINE_CONFIG": str(yaml_path), "OPTENGINE_OPENAI_API_KEY": "bench",
        "OPTENGINE_OPENAI_BASE_URL": hosted_url, "OPTENGINE_BASELINE_MODEL": BASELINE,
        "OPTENGINE_CACHE_ENABLED": str(bool(config.get("cache"))).lower(),
        "OPTENGINE_CACHE_SEMANTIC_ENABLED": str(bool(config.get("semantic"))).lower(),
        "OPTENGINE_CACHE_SEMANTIC_TENANTS": "default" if config.get("semantic") else "",
        "OPTENGINE_TOKEN_OPTIMIZATION_DEFAULT": config.get("policy", "off"),
        "OPTENGINE_TOKEN_COUNT_WITH_WORKER": "false",
        "OPTENGINE_WORKERS": config.get("workers", ""),
        "OPTENGINE_PREFIX_WARM_ENABLED": "false",
        # the fake worker's "throughput" would be the loaded machine's latency: price every
        # run at the settings' GPU figures instead
        "OPTENGINE_SELF_HOSTED": json.dumps({"measure_throughput": False}),
    }
    port = free_port()
    gateway = Service(f"gateway-{name}", [str(APP_PYTHON), "-m", "services.cli", "serve",
                                          "--port", str(port), "--log-level", "WARNING"],
                      env=env, cwd=REPO_ROOT, log_dir=workdir).start()
    url = f"http://127.0.0.1:{port}"
    try:
        # /readyz waits for a healthy worker; hosted-only gateways have none
        ready = "/readyz" if config.get("workers") else "/healthz"
        gateway.wait_http(f"{url}{ready}", timeout_s=180)
        since = datetime.now(UTC) - timedelta(seconds=1)
        sent, failed = asyncio.run(replay(url, config, trace, prompts, args))
        engine = create_store_engine(env["OPTENGINE_DATABASE_URL"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            summary = _summary(engine, env, since)
            if summary.requests >= sent:
                break
            time.sleep(0.5)
        engine.dispose()
    finally:
        gateway.stop()
    return {"summary": summary, "sent": sent, "failed": failed}


def _summary(engine, env: dict, since: datetime):  # type: ignore[no-untyped-def]
    settings = load_settings(database_url=env["OPTENGINE_DATABASE_URL"],
                             openai_base_url=env["OPTENGINE_OPENAI_BASE_URL"],
                             baseline_model=BASELINE)
    return live_summary(engine, PriceCatalog.from_settings(settings), hosted_upstreams(settings),
                        since, datetime.now(UTC) + timedelta(hours=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=600, help="requests replayed per run")
    parser.add_argument("--pool", type=int, default=300,
                        help="distinct requests (request i repeats request i %% pool)")
    parser.add_argument("--speedup", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--token-policy", default="lossless")
    parser.add_argument("--reword-every", type=int, default=2,
                        help="reword every N-th repeat (0: none), for the semantic cache")
    parser.add_argument("--batch-every", type=int, default=5,
                        help="batch configurations send every N-th request through "
                             "/v1/batches (0: none)")
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    args = parser.parse_args()
    stop_on_signals()
    trace = load_trace(args.trace, args.limit)
    args.pool = min(args.pool, len(trace))
    prompts = load_prompts(args.prompts)
    workdir = bench_tempdir("cost-replay-")
    hosted_port, worker_port = free_port(), free_port()
    fake = [str(APP_PYTHON), str(BENCH_DIR / "fake_upstream.py"), "--usage-from-request"]
    Service("fake-hosted", [*fake, "--port", str(hosted_port), "--model", BASELINE],
            log_dir=workdir).start().wait_http(f"http://127.0.0.1:{hosted_port}/v1/models")
    Service("fake-worker", [*fake, "--port", str(worker_port), "--model", SELF_HOSTED],
            log_dir=workdir).start().wait_http(f"http://127.0.0.1:{worker_port}/v1/models")
    hosted_url = f"http://127.0.0.1:{hosted_port}"
    runs: dict[str, dict] = {}
    table = []
    for name, config in configs(hosted_url, f"http://127.0.0.1:{worker_port}",
                                args.token_policy).items():
        if args.only and name not in args.only:
            continue
        result = run_config(name, config, args, hosted_url, trace, prompts, workdir)
        s = result["summary"]
        runs[name] = {"cost_usd": s.cost_usd, "baseline_usd": s.baseline_usd,
                      "saved_by_lever": {k: round(v, 9) for k, v in s.saved_by_lever.items()},
                      "requests": s.requests, "failed": result["failed"],
                      "escalated_attempts": s.attempts,
                      "gap": s.attribution_gap_usd / s.baseline_usd if s.baseline_usd else None}
        saved = s.baseline_usd - s.cost_usd
        table.append([name, s.requests, result["failed"], f"{s.cost_usd:.4f}",
                      f"{s.baseline_usd:.4f}", f"{saved / s.baseline_usd:.1%}"
                      if s.baseline_usd else "-", SPEC_CLAIMS.get(name, ""),
                      *(f"{s.saved_by_lever[lever]:.4f}" for lever in LEVERS)])
        print(f"{name}: {s.requests} requests, cost ${s.cost_usd:.4f}, baseline "
              f"${s.baseline_usd:.4f}", flush=True)
    all_on = runs.get("all_on")
    gap = all_on["gap"] if all_on else None  # from the unrounded sums
    print(markdown_table(["run", "requests", "failed", "cost $", "baseline $", "saved",
                          "spec claim", *LEVERS], table))
    print(f"attribution gap (all_on): {gap}")
    print_json_line({"runs": runs, "attribution_gap": gap, "trace": str(args.trace),
                     "limit": args.limit, "pool": args.pool, "speedup": args.speedup,
                     "token_policy": args.token_policy, "reword_every": args.reword_every,
                     "batch_every": args.batch_every, "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
