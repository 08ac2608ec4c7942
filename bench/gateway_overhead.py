"""Latency and throughput a proxy adds in front of an OpenAI-compatible upstream.

One run, one fast fake upstream, three ways to reach it, side by side:

* ``direct``   wrk -> fake upstream
* ``gateway``  wrk -> ``optengine serve`` (API-key auth on, telemetry on, SQLite store)
* ``litellm``  wrk -> LiteLLM proxy (one worker, no DB, no cache, no callbacks)

Each proxy runs alone on core 0 (``taskset -c 0``); the upstream and wrk share core 1,
so what a proxy costs shows up as latency and as the request rate one core sustains.
The proxy not being measured is SIGSTOPped so its background loops cannot steal core
0. Added latency is "through the proxy minus direct" at the same percentile and
concurrency; targets are ratios measured in the same run (the machine is shared, so
absolute times drift between runs, ratios much less). Each point is warmed up first,
and ``--rounds`` repeats the whole grid in rotated target order and keeps the medians.

``--experiment`` adds a fourth target, ``experiment``: the same gateway with a running
A/B test in its store that every request is assigned to (unit tenant, two arms whose
config versions set ``max_latency_ms``, which nothing acts on without routing), so the
experiment stage hashes, picks an arm and applies its overrides on every request.

``--profile`` then samples the gateway with py-spy under load at the highest
concurrency and prints where its CPU goes.

Example::

    .venv/bin/python bench/gateway_overhead.py --duration 10 --rounds 3 --profile
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from harness import (
    APP_PYTHON,
    BENCH_DIR,
    BENCH_VENV,
    REPO_ROOT,
    UNIQUE_MARKER,
    Service,
    WrkResult,
    bench_tempdir,
    free_port,
    load_average,
    machine_info,
    markdown_table,
    median,
    print_json_line,
    process_cpu_s,
    require_tool,
    run_wrk,
    stop_on_signals,
    summarize_collapsed,
    wait_quiet,
    wrk_post_script,
)

DEFAULT_BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Give me one sentence about benchmarks."},
    ],
    "max_tokens": 16,
    "temperature": 0,
}
GATEWAY_KEY = "bench-gateway-key"
LITELLM_KEY = "sk-bench-litellm-master"
PROXY_CPU = "0"
LOAD_CPU = "1"
LATENCY_TARGET = 0.2  # gateway may add at most a fifth of LiteLLM's p50 at concurrency 1
RPS_TARGET = 5.0  # and must serve at least 5x LiteLLM's requests/s at concurrency 64


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Gateway overhead vs direct and vs LiteLLM (wrk, pinned cores).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--concurrency", default="1,16,64",
                        help="comma-separated wrk connection counts")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per point")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the grid in rotated order; medians are reported")
    parser.add_argument("--body", type=Path, default=None,
                        help="JSON request body file (default: a small chat request)")
    parser.add_argument("--gateway-cache", choices=("off", "on"), default="off",
                        help="the gateway's response cache: off measures the proxy path; on "
                             "(with --unique) measures the cache-miss path")
    parser.add_argument("--gateway-redis", default=None, metavar="URL",
                        help="with --gateway-cache on: Redis as every gateway's L2 (its "
                             "entries expire after 5 minutes); default: no L2")
    parser.add_argument("--semantic-gateway", action="store_true",
                        help="with --gateway-cache on: also measure a gateway with the "
                             "semantic cache on for every tenant (target 'gateway-semantic')")
    parser.add_argument("--semantic-variants", action="store_true",
                        help="run every --variant with the semantic cache on for every "
                             "tenant (to compare semantic lookups side by side)")
    parser.add_argument("--unique", action="store_true",
                        help="make every request body unique (a cache never hits)")
    parser.add_argument("--upstream-processes", type=int, default=2,
                        help="fake upstream processes sharing the port")
    parser.add_argument("--litellm-python", type=Path, default=BENCH_VENV / "bin" / "python",
                        help="interpreter of the venv holding litellm[proxy]")
    parser.add_argument("--experiment", action="store_true",
                        help="also measure the gateway with a live experiment on every request")
    parser.add_argument("--skip-litellm", action="store_true", help="compare direct vs gateway")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SRC[,PYTHON]",
                        help="also measure the gateway from another source tree (and venv), "
                             "e.g. a candidate change; repeatable")
    parser.add_argument("--quiet-busy", type=float, default=0.15,
                        help="before each point wait until other jobs use at most this "
                             "fraction of the machine")
    parser.add_argument("--quiet-timeout", type=float, default=60.0,
                        help="longest wait for a quiet machine before measuring anyway")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the gateway under load at the highest concurrency")
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--profile-target", default="gateway",
                        help="which gateway to profile: 'gateway' or a --variant NAME")
    parser.add_argument("--py-spy", type=Path, default=BENCH_VENV / "bin" / "py-spy")
    parser.add_argument("--keep-dir", action="store_true", help="keep logs and the SQLite store")
    return parser.parse_args(argv)


# --- the servers ---------------------------------------------------------------------


def start_upstream(workdir: Path, model: str, processes: int) -> tuple[Service, str]:
    port = free_port()
    upstream = Service(
        "fake_upstream",
        [str(APP_PYTHON), str(BENCH_DIR / "fake_upstream.py"), "--port", str(port),
         "--model", model, "--processes", str(processes)],
        cpus=LOAD_CPU,
        log_dir=workdir,
    ).start()
    url = f"http://127.0.0.1:{port}"
    upstream.wait_http(f"{url}/v1/models", timeout_s=30)
    return upstream, url


def start_gateway(
    workdir: Path, upstream_url: str, model: str, *, name: str = "gateway",
    src: Path | None = None, python: Path | None = None, cache: bool = False,
    semantic_tenants: str | None = None, redis_url: str | None = None,
) -> tuple[Service, str]:
    """``optengine serve`` as an operator runs it: auth on, telemetry into SQLite.

    A variant (``src``) runs the same command from another source tree: ``PYTHONPATH``
    puts that tree's ``services`` ahead of the editable install of this one.
    """
    port = free_port()
    data_dir = workdir / f"{name}-data"
    serve = ["serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
    env: dict[str, str | None] = {
        "OPTENGINE_WORKERS": upstream_url,
        "OPTENGINE_API_KEYS": f"{GATEWAY_KEY}:bench",
        "OPTENGINE_DATA_DIR": str(data_dir),
        "OPTENGINE_DATABASE_URL": f"sqlite:///{data_dir / 'optengine.db'}",
        "OPTENGINE_ENV": "dev",
        # The benchmark repeats one body: with the cache on it would measure cache hits.
        "OPTENGINE_CACHE_ENABLED": "true" if cache else "false",
    }
    if semantic_tenants is not None:
        env["OPTENGINE_CACHE_SEMANTIC_TENANTS"] = semantic_tenants
    if redis_url is not None:
        env["OPTENGINE_REDIS_URL"] = redis_url
        env["OPTENGINE_CACHE_L2_TTL_S"] = "300"
    if src is None:
        cmd = [str(REPO_ROOT / ".venv" / "bin" / "optengine"), *serve]
    else:
        cmd = [str(python or APP_PYTHON), "-m", "services.cli", *serve]
        env["PYTHONPATH"] = str(src.resolve())
    gateway = Service(name, cmd, cpus=PROXY_CPU, env=env, cwd=workdir, log_dir=workdir).start()
    url = f"http://127.0.0.1:{port}"
    gateway.wait_http(f"{url}/healthz", timeout_s=120)
    wait_for_model(url, GATEWAY_KEY, model, gateway)
    return gateway, url


def seed_experiment(db: Path) -> None:
    """A running A/B test covering every request, written with the CLI; the gateway
    picks it up at its next refresh (``experiments_refresh_s``, 2 s)."""
    cli = str(REPO_ROOT / ".venv" / "bin" / "optengine")
    env = {"OPTENGINE_DATABASE_URL": f"sqlite:///{db}", "PATH": "/usr/bin:/bin"}
    for name, ms in (("bench-a", 60000), ("bench-b", 90000)):
        subprocess.run([cli, "experiments", "config", name, "--set", f"max_latency_ms={ms}"],
                       env=env, check=True, capture_output=True)
    subprocess.run([cli, "experiments", "create", "bench", "--kind", "ab",
                    "--arm", "a=bench-a:0.5", "--arm", "b=bench-b:0.5", "--start"],
                   env=env, check=True, capture_output=True)
    time.sleep(3)


def litellm_config(upstream_url: str, model: str) -> str:
    """One deployment, nothing else: no DB, no cache, no callbacks, no spend logs.

    The model is routed as ``openai/gpt-4o-mini`` (a priced name): with an unpriced
    name LiteLLM spends a sixth of its CPU failing cost lookups on every request.
    """
    return json.dumps({
        "model_list": [{
            "model_name": model,
            "litellm_params": {
                "model": "openai/gpt-4o-mini",
                "api_base": f"{upstream_url}/v1",
                "api_key": "sk-fake-upstream",
            },
        }],
        "litellm_settings": {
            "cache": False,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "set_verbose": False,
            "telemetry": False,
        },
        "general_settings": {
            "master_key": LITELLM_KEY,
            "disable_spend_logs": True,
            "disable_error_logs": True,
        },
    }, indent=1)


def start_litellm(
    workdir: Path, python: Path, upstream_url: str, model: str
) -> tuple[Service, str]:
    if not python.exists():
        raise SystemExit(
            f"{python} not found: run bench/setup_litellm_venv.sh (or pass --skip-litellm)"
        )
    config = workdir / "litellm.yaml"  # JSON is valid YAML
    config.write_text(litellm_config(upstream_url, model))
    port = free_port()
    litellm = Service(
        "litellm",
        [str(python.parent / "litellm"), "--config", str(config), "--host", "127.0.0.1",
         "--port", str(port), "--num_workers", "1"],
        cpus=PROXY_CPU,
        env={
            "LITELLM_MASTER_KEY": LITELLM_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else it downloads the cost map
            "LITELLM_LOG": "ERROR",
            "DATABASE_URL": None,  # no DB: keys are checked against the master key
            "DISABLE_ADMIN_UI": "True",
        },
        cwd=workdir,
        log_dir=workdir,
    ).start()
    url = f"http://127.0.0.1:{port}"
    litellm.wait_http(f"{url}/health/liveliness", timeout_s=180)
    return litellm, url


def wait_for_model(url: str, key: str, model: str, service: Service) -> None:
    """The gateway discovers models by probing workers; wait until ours is listed."""
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(timeout=5) as client:
        for _ in range(120):
            response = client.get(f"{url}/v1/models", headers=headers)
            if response.status_code == 200 and any(
                card["id"] == model for card in response.json()["data"]
            ):
                return
            time.sleep(0.25)
    raise TimeoutError(f"{service.name} never listed model {model}:\n{service.log_tail()}")


def smoke(url: str, key: str | None, body: str) -> None:
    """One request must succeed with usage before any load is measured."""
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    response = httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers, timeout=30)
    if response.status_code != 200 or "usage" not in response.json():
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")


def unique_body(body: dict[str, Any]) -> dict[str, Any]:
    """The body with a per-request sequence number at the end of its last message."""
    messages = [dict(m) for m in body["messages"]]
    messages[-1]["content"] = f"{messages[-1]['content']} [{UNIQUE_MARKER}]"
    return {**body, "messages": messages}


def parse_variant(spec: str) -> tuple[str, Path, Path | None]:
    """``NAME=SRC[,PYTHON]`` -> (name, source tree, interpreter or None for the app's)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or name in ("direct", "gateway", "gateway-semantic", "litellm"):
        raise SystemExit(f"--variant {spec!r}: expected NAME=SRC[,PYTHON] with a new NAME")
    src_text, _, python_text = rest.partition(",")
    src = Path(src_text)
    if not (src / "services" / "cli.py").is_file():
        raise SystemExit(f"--variant {spec!r}: {src} holds no services/cli.py")
    return name, src, Path(python_text) if python_text else None


# --- measuring -----------------------------------------------------------------------


def measure(
    target: str,
    url: str,
    script: Path,
    connections: int,
    args: argparse.Namespace,
    pid: int | None = None,
) -> WrkResult:
    """One point; with ``pid`` (a proxy's), also its CPU per request, which other jobs
    on the machine disturb much less than its requests/s."""
    endpoint = f"{url}/v1/chat/completions"
    busy = wait_quiet(args.quiet_busy, args.quiet_timeout)
    run_wrk(endpoint, script, connections=connections, duration_s=args.warmup, cpus=LOAD_CPU)
    cpu_before = process_cpu_s(pid) if pid is not None else 0.0
    result = run_wrk(
        endpoint, script, connections=connections, duration_s=args.duration, cpus=LOAD_CPU
    )
    if pid is not None and result.requests:
        result.cpu_ms_per_request = 1000 * (process_cpu_s(pid) - cpu_before) / result.requests
    result.busy_before = busy
    cpu = f"{result.cpu_ms_per_request:.3f}" if result.cpu_ms_per_request is not None else "-"
    print(
        f"  {target:8s} c={connections:<3d} p50={result.p50_ms:8.3f} ms "
        f"p99={result.p99_ms:8.3f} ms  {result.rps:9.1f} req/s  CPU {cpu} ms/req  "
        f"errors={result.errors}  "
        f"busy before={busy:.0%}  load={result.load_before:.2f}->{result.load_after:.2f}",
        flush=True,
    )
    if result.errors:
        print(f"  WARNING: {result.errors} errors for {target} at c={connections}", flush=True)
    return result


def profile_gateway(
    gateway: Service, url: str, script: Path, connections: int, args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any] | None:
    """Sample the gateway with py-spy while wrk loads it; return the top functions.

    Only samples holding the GIL count (``--gil``): on one core that is where the
    gateway's CPU goes, while threads parked in a pool or the telemetry writer waiting
    for its queue are not cost, and without the flag they dominate the profile.
    """
    if not args.py_spy.exists():
        print(f"py-spy not found at {args.py_spy}; skipping the profile", flush=True)
        return None
    out = workdir / "gateway-profile.txt"
    load = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}",
         f"-d{round(args.profile_seconds + 4)}s", "--timeout=30s", "-s", str(script),
         f"{url}/v1/chat/completions"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        subprocess.run(["sleep", "2"], check=True)
        # py-spy on the load core: it must not take CPU from the process it samples.
        spy = subprocess.run(
            ["taskset", "-c", LOAD_CPU, str(args.py_spy), "record", "-p", str(gateway.pid),
             "-d", str(round(args.profile_seconds)), "-r", "100", "-f", "raw", "--nolineno",
             "--gil", "-o", str(out)],
            capture_output=True, text=True, check=False,
        )
    finally:
        load.wait()
    if spy.returncode != 0 or not out.exists():
        print(f"py-spy failed: {spy.stderr[-500:]}", flush=True)
        return None
    return summarize_collapsed(out)


# --- main ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    require_tool("wrk", "apt-get install -y wrk")
    require_tool("taskset", "apt-get install -y util-linux")
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    body_obj = json.loads(args.body.read_text()) if args.body else DEFAULT_BODY
    body = json.dumps(body_obj, separators=(",", ":"))
    load_body = json.dumps(unique_body(body_obj) if args.unique else body_obj,
                           separators=(",", ":"))
    model = str(body_obj["model"])
    variants = [parse_variant(v) for v in args.variant]
    targets = ["direct", "gateway", *(v[0] for v in variants)]
    if args.experiment:
        targets.append("experiment")
    if args.semantic_variants and (args.gateway_cache != "on" or not variants):
        raise SystemExit("--semantic-variants needs --gateway-cache on and a --variant")
    if args.semantic_gateway:
        if args.gateway_cache != "on":
            raise SystemExit("--semantic-gateway needs --gateway-cache on")
        targets.append("gateway-semantic")
    if not args.skip_litellm:
        targets.append("litellm")
    workdir = bench_tempdir("bench-overhead-")
    info = machine_info()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}; {info['uptime']}")
    print(f"work dir: {workdir}", flush=True)

    upstream, upstream_url = start_upstream(workdir, model, args.upstream_processes)
    services: dict[str, Service] = {}
    urls = {"direct": upstream_url}
    keys: dict[str, str | None] = {"direct": "direct-needs-no-key"}
    cache = args.gateway_cache == "on"
    if args.gateway_redis and not cache:
        raise SystemExit("--gateway-redis needs --gateway-cache on")
    redis_url = args.gateway_redis
    gateway, urls["gateway"] = start_gateway(workdir, upstream_url, model, cache=cache,
                                             redis_url=redis_url)
    services["gateway"], keys["gateway"] = gateway, GATEWAY_KEY
    for name, src, python in variants:
        services[name], urls[name] = start_gateway(
            workdir, upstream_url, model, name=name, src=src, python=python, cache=cache,
            redis_url=redis_url, semantic_tenants="*" if args.semantic_variants else None,
        )
        keys[name] = GATEWAY_KEY
    if args.experiment:
        services["experiment"], urls["experiment"] = start_gateway(
            workdir, upstream_url, model, name="experiment", cache=cache, redis_url=redis_url)
        seed_experiment(workdir / "experiment-data" / "optengine.db")
        keys["experiment"] = GATEWAY_KEY
        probe = httpx.post(f"{urls['experiment']}/v1/chat/completions", content=body,
                           headers={"authorization": f"Bearer {GATEWAY_KEY}",
                                    "content-type": "application/json"}, timeout=30)
        if "x-experiment" not in probe.headers:
            raise SystemExit("the experiment gateway did not apply the seeded experiment")
    if args.semantic_gateway:
        services["gateway-semantic"], urls["gateway-semantic"] = start_gateway(
            workdir, upstream_url, model, name="gateway-semantic", cache=cache,
            semantic_tenants="*", redis_url=redis_url)
        keys["gateway-semantic"] = GATEWAY_KEY
    if "litellm" in targets:
        services["litellm"], urls["litellm"] = start_litellm(
            workdir, args.litellm_python, upstream_url, model
        )
        keys["litellm"] = LITELLM_KEY
    scripts: dict[str, Path] = {}
    for target in targets:
        smoke(urls[target], keys[target], body)
        headers = {"content-type": "application/json", "authorization": f"Bearer {keys[target]}"}
        scripts[target] = workdir / f"{target}.lua"
        scripts[target].write_text(
            wrk_post_script("/v1/chat/completions", [load_body], headers)
        )

    results: dict[str, dict[int, list[WrkResult]]] = {t: {c: [] for c in concurrencies}
                                                      for t in targets}
    for round_no in range(args.rounds):
        order = targets[round_no % len(targets):] + targets[: round_no % len(targets)]
        print(f"round {round_no + 1}/{args.rounds}, order {' -> '.join(order)}", flush=True)
        for connections in concurrencies:
            for target in order:
                for name, service in services.items():
                    (service.resume if name == target else service.pause)()
                service = services.get(target)
                results[target][connections].append(measure(
                    target, urls[target], scripts[target], connections, args,
                    service.pid if service is not None else None,
                ))
    profile = None
    if args.profile:
        spied = args.profile_target
        if spied not in services or spied == "litellm":
            raise SystemExit(f"--profile-target {spied!r} is not a gateway of this run")
        for name, service in services.items():
            (service.resume if name == spied else service.pause)()
        profile = profile_gateway(
            services[spied], urls[spied], scripts[spied], max(concurrencies), args, workdir
        )
    for service in services.values():
        service.resume()
    telemetry_rows: dict[str, int | None] = {}
    for name in targets:
        if name not in ("direct", "litellm"):
            services[name].stop()  # a gateway drains its telemetry queue on shutdown
            telemetry_rows[name] = count_rows(workdir / f"{name}-data" / "optengine.db")
    Service.stop_all()

    summary = summarize(results, concurrencies, targets)
    report(summary, concurrencies, targets, info, args, telemetry_rows, profile)
    payload = {
        "benchmark": "gateway_overhead",
        "machine": info,
        "load_at_end": load_average(),
        "config": {
            "concurrency": concurrencies, "duration_s": args.duration, "warmup_s": args.warmup,
            "rounds": args.rounds, "upstream_processes": args.upstream_processes,
            "gateway_cache": args.gateway_cache, "gateway_redis": args.gateway_redis,
            "unique_bodies": args.unique,
            "variants": {name: [str(src), str(py)] for name, src, py in variants},
            "litellm": litellm_version(args.litellm_python) if "litellm" in targets else None,
        },
        "results": summary["points"],
        "targets": summary["targets"],
        "gateway_telemetry_rows": telemetry_rows,
        "profile": profile and {
            "target": args.profile_target,
            "samples": profile["samples"],
            "self": profile["self"][:10],
            "packages": profile["packages"][:10],
        },
    }
    print_json_line(payload)
    if not args.keep_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def count_rows(db: Path) -> int | None:
    """Rows the gateway's telemetry wrote: proof that telemetry was on and kept up."""
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("select count(*) from request_log").fetchone()[0])
    except sqlite3.Error:
        return None


def litellm_version(python: Path) -> str | None:
    proc = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True, check=False,
    )
    return proc.stdout.strip() or None


def summarize(
    results: dict[str, dict[int, list[WrkResult]]], concurrencies: list[int], targets: list[str]
) -> dict[str, Any]:
    """Medians over rounds, added latency vs direct, and the two target ratios."""
    points: dict[str, dict[str, dict[str, float]]] = {}
    for target in targets:
        points[target] = {}
        for c in concurrencies:
            runs = results[target][c]
            point = {
                f"{p}_ms": median(getattr(r, f"{p}_ms") for r in runs)
                for p in ("p50", "p95", "p99")
            }
            point["rps"] = median(r.rps for r in runs)
            cpu = [r.cpu_ms_per_request for r in runs if r.cpu_ms_per_request is not None]
            if cpu:
                point["cpu_ms_per_request"] = median(cpu)
            point["errors"] = sum(r.errors for r in runs)
            point["load_max"] = max(max(r.load_before, r.load_after) for r in runs)
            point["busy_before_max"] = max(r.busy_before for r in runs)
            if target != "direct":
                direct = points["direct"][str(c)]
                for p in ("p50", "p95", "p99"):
                    point[f"added_{p}_ms"] = point[f"{p}_ms"] - direct[f"{p}_ms"]
                point["rps_vs_direct"] = point["rps"] / direct["rps"]
            points[target][str(c)] = point
    ratios: dict[str, Any] = {}
    if "litellm" in targets:
        low, high = str(min(concurrencies)), str(max(concurrencies))
        ll = points["litellm"]
        for name in targets:
            if name in ("direct", "litellm"):
                continue
            gw = points[name]
            latency_ratio = gw[low]["added_p50_ms"] / ll[low]["added_p50_ms"]
            rps_ratio = gw[high]["rps"] / ll[high]["rps"]
            ratios[name] = {
                "added_p50_ratio_vs_litellm": {
                    "concurrency": int(low), "value": round(latency_ratio, 3),
                    "target": f"<= {LATENCY_TARGET}", "met": latency_ratio <= LATENCY_TARGET,
                },
                "rps_ratio_vs_litellm": {
                    "concurrency": int(high), "value": round(rps_ratio, 2),
                    "target": f">= {RPS_TARGET}", "met": rps_ratio >= RPS_TARGET,
                },
            }
    targets_out = ratios.pop("gateway", {})
    if ratios:
        targets_out = {**targets_out, "variants": ratios}
    return {"points": points, "targets": targets_out}


def report(
    summary: dict[str, Any],
    concurrencies: list[int],
    targets: list[str],
    info: dict[str, object],
    args: argparse.Namespace,
    telemetry_rows: dict[str, int | None],
    profile: dict[str, Any] | None,
) -> None:
    points = summary["points"]
    print()
    print(f"{info['date_utc']} UTC, {info['nproc']} cores ({info['cpu_model']}), "
          f"{args.duration:g} s per point after {args.warmup:g} s warm-up, "
          f"{args.rounds} round(s), medians")
    print()
    rows = []
    for c in concurrencies:
        for target in targets:
            p = points[target][str(c)]
            added = [p.get(f"added_{q}_ms", float("nan")) for q in ("p50", "p95", "p99")]
            rows.append([
                c, target, p["p50_ms"], p["p95_ms"], p["p99_ms"], *added, p["rps"],
                p.get("rps_vs_direct", 1.0), p.get("cpu_ms_per_request", float("nan")),
                p["errors"], f"{p['busy_before_max']:.0%}",
                p["load_max"],
            ])
    print(markdown_table(
        ["conc", "target", "p50 ms", "p95 ms", "p99 ms", "added p50", "added p95", "added p99",
         "req/s", "rps/direct", "CPU ms/req", "errors", "busy before", "load max"],
        rows,
    ))
    if summary["targets"]:
        print()
        ratio_rows = []
        named = {"gateway": summary["targets"], **summary["targets"].get("variants", {})}
        for name, t in named.items():
            lat, rps = t["added_p50_ratio_vs_litellm"], t["rps_ratio_vs_litellm"]
            ratio_rows += [
                [name, f"added p50 / LiteLLM added p50 at c={lat['concurrency']}",
                 lat["value"], lat["target"], "yes" if lat["met"] else "NO"],
                [name, f"req/s / LiteLLM req/s at c={rps['concurrency']}",
                 rps["value"], rps["target"], "yes" if rps["met"] else "NO"],
            ]
        print(markdown_table(["gateway", "target", "measured", "goal", "met"], ratio_rows))
    print()
    print("telemetry rows written to SQLite: "
          + ", ".join(f"{name} {rows}" for name, rows in telemetry_rows.items()))
    if profile:
        print()
        print(f"{args.profile_target} profile (py-spy, {profile['samples']} GIL-holding samples at "
              f"c={max(concurrencies)}): self time by package")
        print(markdown_table(["package", "self share"],
                             [[p["function"], f"{100 * p['share']:.1f}%"]
                              for p in profile["packages"]]))
        print()
        print("self time by function")
        print(markdown_table(["function", "self share"],
                             [[p["function"], f"{100 * p['share']:.1f}%"]
                              for p in profile["self"]]))
        print()
        print("inclusive time (request path, below the ASGI entry)")
        print(markdown_table(["function", "inclusive share"],
                             [[p["function"], f"{100 * p['share']:.1f}%"]
                              for p in profile["inclusive"]]))
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
