"""End-to-end latency of a response-cache hit on each tier vs a miss to a real vLLM worker.

One run, one store, one Redis, one vLLM-CPU worker, four gateway replicas
(``optengine serve``, API-key auth and telemetry on, as an operator runs them):

* ``A`` (L1 + Redis L2 + store L3): takes the **miss** (the request goes to vLLM, its
  answer is written to all three tiers) and then the **L1 hit** (the same request again);
* ``B`` (L1 + the same Redis + the same store): its L1 has never seen the key, so its
  first request for it is an **L2 hit**;
* ``C`` (L1 + the same store, no Redis): its first request for the key is an **L3 hit**;
* ``D`` (like C): asked right after the write, it shows how soon another replica's L3
  sees a new entry (L3 keeps a per-replica Bloom filter of the digests in the store,
  topped up from the table every few seconds; until then a lookup is a miss).

Pass 1 sends every key's miss to A (a distinct prompt per key) and, ``--settle-ms``
later, the same request to D. Pass 2, ``--l3-wait-s`` later (the miss writes L1 before
it answers, Redis and the store in the background, and C's filter must have caught up),
goes key by key: L1 hit on A, L2 hit on B, L3 hit on C, and a ``GET /healthz`` on A as
the floor (the HTTP round trip with no pipeline behind it). So every hit is the first
on its tier for its key, and the hits are measured side by side, interleaved, with no
generation running. Requests go one at a time from a keep-alive ``httpx`` client; times
are client side, request sent to body read. Every answer's ``X-Cache`` header is checked
(one that did not land on the tier it was meant for is counted in ``wrong_tier`` and
left out) and every hit's text is compared with the miss it replays. The gateways' own
latency per request (``request_log``, from the shared store) is reported next to the
client's.

The miss asks for exactly ``--max-tokens`` tokens (``ignore_eos``) at temperature 0, the
shape the cache serves by default. The gateways and Redis run on core 0, vLLM's threads
on core 1 (``taskset`` / ``VLLM_CPU_OMP_THREADS_BIND``).

Example::

    .venv/bin/python bench/cache_latency.py --requests 200
    .venv/bin/python bench/cache_latency.py --database-url postgresql+psycopg://u@host:5432/db
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
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
    require_tool,
    stop_on_signals,
    wait_quiet,
)
from vllm_throughput import fitting_prompts

from services.demo.workload import DEMO_PROMPTS, load_prompts

DEFAULT_MODEL_DIR = REPO_ROOT / "data" / "test-models" / "tiny-llama"
SHARED_PROMPTS = REPO_ROOT.parent / "shared" / "data" / "prompts" / "sharegpt_500.json"
GATEWAY_KEY = "bench-cache-key"
WARMUP_KEY = "bench-cache-warmup"  # its own tenant, so warm-up rows can be told apart
PROBE_KEY = "bench-cache-probe"  # D's key: same tenant, its rows told apart by key id
# The tenant scopes the cache keys: one per run, so a reused store (--database-url)
# cannot answer this run's misses from an earlier run's entries.
TENANT = f"bench-{os.getpid()}-{int(time.time())}"
GATEWAY_CPU = "0"
VLLM_CPU = "1"
TIERS = ("miss", "L1", "L2", "L3")
PROBE = "L3_fresh"  # D, right after the write: does another replica's L3 see it yet?
FLOOR = "floor"  # GET /healthz on A: the HTTP round trip with no pipeline behind it
PATHS = (*TIERS, PROBE, FLOOR)
EXPECTED_HEADER = {"miss": "MISS", "L1": "HIT-L1", "L2": "HIT-L2", "L3": "HIT-L3",
                   PROBE: "HIT-L3"}
REPLICA_OF = {"miss": "A", "L1": "A", "L2": "B", "L3": "C", PROBE: "D"}
REPLICAS = (("A", True), ("B", True), ("C", False), ("D", False))  # (name, with Redis)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Response cache: L1/L2/L3 hit latency vs a vLLM miss, one run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=None,
                        help=f"model folder (default: build/reuse the tiny test model in "
                             f"{DEFAULT_MODEL_DIR.relative_to(REPO_ROOT)})")
    parser.add_argument("--prompts", type=Path,
                        default=SHARED_PROMPTS if SHARED_PROMPTS.is_file() else DEMO_PROMPTS,
                        help="ShareGPT-format JSON; first human turn of each record")
    parser.add_argument("--requests", type=int, default=200,
                        help="distinct keys measured (each: 1 miss, 1 hit per tier)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="keys sent through all four paths first and not counted")
    parser.add_argument("--max-tokens", type=int, default=16, help="exact output tokens")
    parser.add_argument("--settle-ms", type=float, default=25.0,
                        help="pause after a key's miss before D asks for it (the miss "
                             "writes Redis and the store in the background)")
    parser.add_argument("--l3-wait-s", type=float, default=6.0,
                        help="pause between pass 1 and the L3 pass: longer than the L3 "
                             "digest filter's refresh interval (5 s), so C can see them")
    parser.add_argument("--prompt-chars", type=int, default=600,
                        help="each prompt is cut to this many characters (same shape)")
    parser.add_argument("--database-url", default=None,
                        help="shared store of the replicas, e.g. postgresql+psycopg://... "
                             "(default: a fresh SQLite file)")
    parser.add_argument("--vllm-python", type=Path, default=REPO_ROOT / ".venv-vllm/bin/python")
    parser.add_argument("--kvcache-gib", type=int, default=1)
    parser.add_argument("--quiet-busy", type=float, default=0.3,
                        help="before measuring, wait until other jobs use at most this "
                             "fraction of the machine")
    parser.add_argument("--quiet-timeout", type=float, default=60.0)
    parser.add_argument("--keep-dir", action="store_true", help="keep logs and the store")
    return parser.parse_args(argv)


# --- servers -------------------------------------------------------------------------


def model_dir(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return args.model
    from services.workers import make_test_model

    return make_test_model(DEFAULT_MODEL_DIR)


def start_redis(workdir: Path) -> tuple[Service, str]:
    port = free_port()
    redis = Service(
        "redis",
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        cpus=GATEWAY_CPU,
        log_dir=workdir,
    ).start()
    deadline = time.monotonic() + 20
    import redis as redis_client  # the app's own dependency

    client = redis_client.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    while True:
        try:
            if client.ping():
                break
        except redis_client.RedisError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server not ready:\n{redis.log_tail()}") from None
            time.sleep(0.1)
    client.close()
    return redis, f"redis://127.0.0.1:{port}/0"


def start_vllm(args: argparse.Namespace, model: Path, workdir: Path) -> Any:
    from services.workers import VllmWorker

    worker = VllmWorker(model, python=args.vllm_python, gpu_count=0,
                        kvcache_gib=args.kvcache_gib, cpu_threads=VLLM_CPU,
                        log_path=workdir / "vllm.log")
    worker.start()
    try:
        seconds = worker.wait_ready()
    except BaseException:
        worker.stop()
        raise
    print(f"vLLM ready at {worker.base_url} after {seconds:.0f} s (threads on core {VLLM_CPU})",
          flush=True)
    return worker


def start_replica(name: str, workdir: Path, *, worker_url: str, model: str,
                  database_url: str, redis_url: str) -> tuple[Service, str]:
    port = free_port()
    data_dir = workdir / f"gateway-{name}"
    gateway = Service(
        f"gateway-{name}",
        [str(REPO_ROOT / ".venv/bin/optengine"), "serve", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "WARNING"],
        cpus=GATEWAY_CPU,
        env={
            "OPTENGINE_ENV": "dev",
            "OPTENGINE_WORKERS": worker_url,
            "OPTENGINE_API_KEYS": (f"{GATEWAY_KEY}:{TENANT},{PROBE_KEY}:{TENANT},"
                                   f"{WARMUP_KEY}:{TENANT}-warmup"),
            "OPTENGINE_DATA_DIR": str(data_dir),
            "OPTENGINE_DATABASE_URL": database_url,
            "OPTENGINE_REDIS_URL": redis_url,
            "OPTENGINE_CACHE_ENABLED": "true",
            "OPTENGINE_CACHE_L3_ENABLED": "true",
        },
        cwd=workdir,
        log_dir=workdir,
    ).start()
    url = f"http://127.0.0.1:{port}"
    gateway.wait_http(f"{url}/healthz", timeout_s=120)
    wait_for_model(url, GATEWAY_KEY, model, gateway)
    return gateway, url


# --- workload ------------------------------------------------------------------------


def request_bodies(prompts: list[str], count: int, model: str, args: argparse.Namespace
                   ) -> list[dict[str, Any]]:
    """``count`` distinct requests of one shape; the key's number leads the prompt, so
    neither the response cache nor vLLM's prefix cache can reuse another key's work."""
    bodies = []
    for i in range(count):
        text = prompts[i % len(prompts)][: args.prompt_chars]
        bodies.append({
            "model": model,
            "messages": [{"role": "user", "content": f"[{i:05d}] {text}"}],
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        })
    return bodies


def answer_text(body: dict[str, Any]) -> str:
    return "".join(c.get("message", {}).get("content") or "" for c in body.get("choices", []))


class Recorder:
    """Latencies per path, and what went elsewhere, for one pass or the warm-up."""

    def __init__(self, clients: dict[str, httpx.Client], key: str, *, record: bool) -> None:
        self.clients = clients
        self.key = key
        self.record = record
        self.latencies: dict[str, list[float]] = {p: [] for p in PATHS}
        self.wrong_tier: dict[str, dict[str, int]] = {p: {} for p in PATHS}
        self.errors = 0
        self.text_mismatch = 0
        self.reference: dict[int, str] = {}  # key index -> the miss's text

    def post(self, path: str, index: int, body: dict[str, Any]) -> None:
        client = self.clients[REPLICA_OF[path]]
        started = time.perf_counter()
        key = PROBE_KEY if path == PROBE and self.key == GATEWAY_KEY else self.key
        response = client.post("/v1/chat/completions", json=body,
                               headers={"authorization": f"Bearer {key}"})
        payload = response.content
        elapsed_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            self.errors += 1
            print(f"  {path}: HTTP {response.status_code} {payload[:200]!r}", flush=True)
            return
        got = response.headers.get("x-cache", "")
        if got != EXPECTED_HEADER[path]:
            self.wrong_tier[path][got] = self.wrong_tier[path].get(got, 0) + 1
            return
        text = answer_text(response.json())
        if path == "miss":
            self.reference[index] = text
        elif index in self.reference and text != self.reference[index]:
            self.text_mismatch += 1
        if self.record:
            self.latencies[path].append(elapsed_ms)

    def floor(self) -> None:
        started = time.perf_counter()
        self.clients["A"].get("/healthz").raise_for_status()
        if self.record:
            self.latencies[FLOOR].append((time.perf_counter() - started) * 1000)

    def result(self) -> dict[str, Any]:
        return {"latencies": self.latencies, "wrong_tier": self.wrong_tier,
                "errors": self.errors, "text_mismatch": self.text_mismatch}


def measure(clients: dict[str, httpx.Client], bodies: list[dict[str, Any]], *, record: bool,
            settle_s: float, l3_wait_s: float, key: str = GATEWAY_KEY) -> dict[str, Any]:
    """Pass 1: the misses (and D's probe); pass 2, key by key: L1, L2, L3 and the floor."""
    rec = Recorder(clients, key, record=record)
    for index, body in enumerate(bodies):
        rec.post("miss", index, body)
        time.sleep(settle_s)
        rec.post(PROBE, index, body)
    time.sleep(l3_wait_s)
    for index, body in enumerate(bodies):
        rec.post("L1", index, body)
        rec.post("L2", index, body)
        rec.post("L3", index, body)
        rec.floor()
    return rec.result()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def server_side(database_url: str) -> dict[str, dict[str, float]]:
    """The gateways' own ``latency_ms`` per cache layer, from the shared ``request_log``.

    Only the main key's rows (D's probe uses its own key): a static key's id is
    ``static:`` and the first 12 hex digits of its SHA-256 (``services/gateway/auth.py``).
    """
    from sqlalchemy import bindparam, create_engine, text

    found: dict[str, list[float]] = {}
    key_id = "static:" + hashlib.sha256(GATEWAY_KEY.encode()).hexdigest()[:12]
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "select cache_layer, latency_ms from request_log "
                "where status_code = 200 and latency_ms is not null and tenant = :tenant "
                "and api_key_id = :key_id"
            ).bindparams(bindparam("tenant", TENANT), bindparam("key_id", key_id))).all()
    finally:
        engine.dispose()
    for layer, latency in rows:
        found.setdefault(str(layer), []).append(float(latency))
    names = {"MISS": "miss", "L1": "L1", "L2": "L2", "L3": "L3"}
    return {
        names[layer]: {"n": len(v), "p50_ms": round(pct(v, 50), 3), "p95_ms": round(pct(v, 95), 3)}
        for layer, v in found.items() if layer in names
    }


# --- main ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    require_tool("redis-server", "apt-get install -y redis-server")
    info = machine_info()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}; {info['uptime']}", flush=True)
    model = model_dir(args)
    prompts = fitting_prompts(
        [p[: args.prompt_chars] for p in load_prompts(args.prompts)], model, args.max_tokens
    )
    workdir = bench_tempdir("bench-cache-")
    database_url = args.database_url or f"sqlite:///{workdir / 'store.db'}"
    worker = None
    try:
        redis, redis_url = start_redis(workdir)
        worker = start_vllm(args, model, workdir)
        name = worker.served_model_name
        replicas = {}
        for replica, use_redis in REPLICAS:
            replicas[replica] = start_replica(
                replica, workdir, worker_url=worker.base_url, model=name,
                database_url=database_url, redis_url=redis_url if use_redis else "",
            )
        clients = {r: httpx.Client(base_url=url, timeout=120) for r, (_, url) in replicas.items()}
        bodies = request_bodies(prompts, args.warmup + args.requests, name, args)
        warm = measure(clients, bodies[: args.warmup], record=False,
                       settle_s=args.settle_ms / 1000, l3_wait_s=args.l3_wait_s,
                       key=WARMUP_KEY)
        if warm["errors"]:
            raise RuntimeError(f"warm-up failed: {warm}")
        busy_before = wait_quiet(args.quiet_busy, args.quiet_timeout)
        load_before = load_average()
        started = time.monotonic()
        result = measure(clients, bodies[args.warmup:], record=True,
                         settle_s=args.settle_ms / 1000, l3_wait_s=args.l3_wait_s)
        wall_s = time.monotonic() - started
        load_after = load_average()
        for client in clients.values():
            client.close()
        for gateway, _ in replicas.values():
            gateway.stop()  # drains telemetry into the store before it is read
        server = server_side(database_url)
        redis.stop()
    finally:
        Service.stop_all()
        if worker is not None:
            worker.stop()

    summary = summarize(result)
    context = {
        "wall_s": round(wall_s, 1), "load_before": round(load_before, 2),
        "load_after": round(load_after, 2), "busy_before": round(busy_before, 3),
    }
    report(summary, server, info, context, args, model, prompts)
    share = summary["fresh_l3_hit_share"]
    print(f"L3 on another replica right after the write (D, {args.settle_ms:g} ms later): "
          f"{len(result['latencies'][PROBE])} hits, share "
          f"{'-' if share is None else f'{100 * share:.1f}%'}; the rest went to vLLM again")
    print(f"wrong tier (left out): {result['wrong_tier']}; errors: {result['errors']}; "
          f"hits whose text differs from their miss: {result['text_mismatch']}", flush=True)
    print_json_line({
        "benchmark": "cache_latency",
        "machine": info,
        "config": {
            "model": str(model), "prompts": str(args.prompts), "requests": args.requests,
            "warmup": args.warmup, "max_tokens": args.max_tokens,
            "prompt_chars": args.prompt_chars, "settle_ms": args.settle_ms,
            "l3_wait_s": args.l3_wait_s,
            "store": database_url.split(":", 1)[0],
        },
        **context,
        "client": summary["tiers"],
        "fresh_l3_hit_share": summary["fresh_l3_hit_share"],
        "server": server,
        "wrong_tier": result["wrong_tier"],
        "errors": result["errors"],
        "text_mismatch": result["text_mismatch"],
    })
    if not args.keep_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs and store kept in {workdir}", file=sys.stderr)
    return 0


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    tiers: dict[str, dict[str, Any]] = {}
    miss = result["latencies"]["miss"]
    miss_p50, miss_p95 = pct(miss, 50), pct(miss, 95)
    for tier in PATHS:
        values = result["latencies"][tier]
        p50, p95 = pct(values, 50), pct(values, 95)
        tiers[tier] = {
            "n": len(values),
            "p50_ms": round(p50, 3),
            "p95_ms": round(p95, 3),
            "mean_ms": round(statistics.fmean(values), 3) if values else None,
            "speedup_p50": round(miss_p50 / p50, 1) if tier in TIERS[1:] and p50 else None,
            "speedup_p95": round(miss_p95 / p95, 1) if tier in TIERS[1:] and p95 else None,
        }
    probe_hits = len(result["latencies"][PROBE])
    probe_total = probe_hits + sum(result["wrong_tier"][PROBE].values())
    return {"tiers": tiers, "fresh_l3_hit_share": round(probe_hits / probe_total, 4)
            if probe_total else None}


def report(summary: dict[str, Any], server: dict[str, dict[str, float]],
           info: dict[str, object], context: dict[str, Any], args: argparse.Namespace,
           model: Path, prompts: list[str]) -> None:
    print()
    print(f"{info['date_utc']} UTC, {info['nproc']} cores ({info['cpu_model']}); model "
          f"{model.name}; {args.requests} keys from {args.prompts.name} ({len(prompts)} "
          f"prompts, cut to {args.prompt_chars} chars), max_tokens {args.max_tokens} "
          f"(ignore_eos), temperature 0, non-streaming, one request at a time; "
          f"load {context['load_before']} -> {context['load_after']}, "
          f"{context['wall_s']} s")
    print()
    rows = []
    labels = {"miss": "miss -> vLLM (A)", "L1": "L1 hit (A)", "L2": "L2 hit, Redis (B)",
              "L3": "L3 hit, store (C)", FLOOR: "floor: GET /healthz (A)",
              PROBE: "L3 hit, just written (D)"}
    for tier in (*TIERS, FLOOR):
        t = summary["tiers"][tier]
        s = server.get(tier, {})
        rows.append([
            labels[tier], t["n"], t["p50_ms"], t["p95_ms"],
            "-" if t["speedup_p50"] is None else f"{t['speedup_p50']}x",
            "-" if t["speedup_p95"] is None else f"{t['speedup_p95']}x",
            s.get("p50_ms", float("nan")), s.get("p95_ms", float("nan")),
        ])
    print(markdown_table(
        ["path (replica)", "n", "p50 ms", "p95 ms", "speedup p50", "speedup p95",
         "gateway p50 ms", "gateway p95 ms"],
        rows,
    ))
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
