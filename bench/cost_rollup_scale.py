"""How the cost rollup and the daily report scale with request_log history (PostgreSQL).

Creates its own database on the server (``--server``, default 127.0.0.1:5432), migrates
it and fills ``request_log`` with ``--rows`` generated rows *server-side*
(``INSERT ... SELECT FROM generate_series``, in chunks of ``--chunk``), at a fixed
``--rows-per-hour`` (so ``--rows`` sets how much *history* there is, not how busy an
hour is): every path a request takes (exact and semantic cache hits, batch, routed to a
hosted model, served by our own workers), with costs and baselines at gpt-4o-mini's
price. Then it times, on that history:

* ``backfill``: the first rollup (no watermark: every hour);
* ``steady``: one new hour of traffic ingested, then the incremental run (the hourly job);
* ``late``: 1,000 rows of an hour five days back replayed (as after a store outage);
* ``rerun``: a run with nothing new;
* ``daily report``: the all-tenants report of one day, from rollups; and the per-tenant
  reports of that day.

The database is dropped at the end (``--keep`` leaves it). Run it at 1M and 10M rows:
the incremental runs must not grow with history. Prints a table and a final JSON line.

Example::

    .venv/bin/python bench/cost_rollup_scale.py --rows 1000000
    .venv/bin/python bench/cost_rollup_scale.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migrations import upgrade_to_head  # noqa: E402
from models import create_store_engine  # noqa: E402
from services.costs import PriceCatalog  # noqa: E402
from services.costs.reports import (  # noqa: E402
    HostedUpstreams,
    build_report,
    roll_up,
    tenants,
)

START = datetime(2025, 1, 1, tzinfo=UTC)
HOSTED = "https://api.openai.com"
TENANTS = 20

# One generated row per g: r is a pseudo-random 0..999 that picks the path and the sizes.
_INSERT = r"""
INSERT INTO request_log (
    id, created_at, ingested_at, tenant, endpoint, stream, model_requested, model_served,
    worker, cache_layer, route_reason, status_code, prompt_tokens, completion_tokens,
    prompt_tokens_before_optimization, prompt_tokens_after_optimization, cost_usd,
    baseline_cost_usd, latency_ms)
SELECT
    :prefix || g, t, COALESCE(CAST(:ingested AS timestamptz), t + interval '30 seconds'),
    'tenant-' || (g % :tenants), 'chat.completions', false,
    CASE WHEN r BETWEEN 300 AND 499 THEN 'auto' ELSE 'llama-3.1-8b' END,
    CASE WHEN r BETWEEN 300 AND 499 THEN 'gpt-4o-mini' ELSE 'llama-3.1-8b' END,
    CASE WHEN r < 250 THEN NULL WHEN r BETWEEN 300 AND 499 THEN :hosted
         ELSE 'http\://10.0.0.' || (g % 4) || '\:8000' END,
    CASE WHEN r < 200 THEN 'L' || (1 + r % 3) WHEN r < 250 THEN 'SEMANTIC' END,
    CASE WHEN r BETWEEN 250 AND 299 THEN 'batch:batch_' || (g / 100000)
         WHEN r BETWEEN 300 AND 499 THEN 'router: p(strong)=0.4' END,
    CASE WHEN r = 999 THEN 502 ELSE 200 END,
    200 + r, 50 + r % 200, 200 + r + r % 100, 200 + r,
    CASE WHEN r < 250 THEN 0
         WHEN r BETWEEN 300 AND 499 THEN (200 + r) * 1.5e-7 + (50 + r % 200) * 6e-7
         ELSE (200 + r) * 2e-8 + (50 + r % 200) * 2e-7 END,
    (200 + r + r % 100) * 1.5e-7 + (50 + r % 200) * 6e-7,
    100 + r
FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS g,
     LATERAL (SELECT CAST(:start AS timestamptz)
                     + (g - CAST(:first AS bigint)) * CAST(:step AS interval) AS t,
                     (g * 7919) % 1000 AS r) AS x
"""


def generate(engine, *, prefix: str, first: int, count: int, start: datetime,
             step_s: float, chunk: int, ingested: datetime | None = None) -> float:
    began = time.perf_counter()
    for lo in range(first, first + count, chunk):
        hi = min(lo + chunk, first + count) - 1
        with engine.begin() as conn:
            conn.execute(text(_INSERT), {
                "prefix": prefix, "first": lo, "last": hi, "tenants": TENANTS,
                "hosted": HOSTED, "ingested": ingested,
                "start": start + timedelta(seconds=(lo - first) * step_s),
                "step": f"{step_s} seconds",
            })
    return time.perf_counter() - began


def timed(fn):  # type: ignore[no-untyped-def]
    began = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-hour", type=int, default=1_400)
    parser.add_argument("--chunk", type=int, default=1_000_000)
    parser.add_argument("--server", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    name = f"optengine_bench_cost_{os.getpid()}"
    admin = create_store_engine(f"{args.server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{args.server}/{name}"
    results: dict[str, float | int] = {"rows": args.rows}
    try:
        upgrade_to_head(url)
        engine = create_store_engine(url)
        step_s = 3600 / args.rows_per_hour
        results["generate_s"] = generate(engine, prefix="gen-", first=0, count=args.rows,
                                         start=START, step_s=step_s, chunk=args.chunk)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE request_log"))
            size = conn.scalar(text("SELECT pg_total_relation_size('request_log')"))
        results["request_log_gb"] = round(size / 1e9, 2)
        end = START + timedelta(seconds=args.rows * step_s)
        catalog = PriceCatalog(baseline_model="gpt-4o-mini")
        hosted = HostedUpstreams([HOSTED])

        run, results["backfill_s"] = timed(lambda: roll_up(engine, catalog, hosted))
        results["backfill_hours"] = run.hours
        next_hour = end.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        generate(engine, prefix="new-", first=0, count=args.rows_per_hour, start=next_hour,
                 step_s=step_s, chunk=args.chunk, ingested=datetime.now(UTC))
        run, results["steady_s"] = timed(lambda: roll_up(engine, catalog, hosted))
        results["steady_hours"] = run.hours
        late_start = next_hour - timedelta(days=5)
        generate(engine, prefix="late-", first=0, count=1_000, start=late_start,
                 step_s=3600 / 1_000, chunk=args.chunk, ingested=datetime.now(UTC))
        run, results["late_s"] = timed(lambda: roll_up(engine, catalog, hosted))
        results["late_hours"] = run.hours
        run, results["rerun_s"] = timed(lambda: roll_up(engine, catalog, hosted))
        results["rerun_hours"] = run.hours

        day = next_hour.replace(hour=0) - timedelta(days=1)
        doc, results["daily_report_s"] = timed(
            lambda: build_report(engine, day, day + timedelta(days=1), kind="daily"))
        results["daily_report_requests"] = doc.summary.requests
        who = tenants(engine, day, day + timedelta(days=1))
        _, results["tenant_reports_s"] = timed(lambda: [
            build_report(engine, day, day + timedelta(days=1), tenant=t) for t in who])
        results["tenants"] = len(who)
        results["attribution_gap_usd"] = doc.summary.attribution_gap_usd
        engine.dispose()
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    width = max(map(len, results))
    for key, value in results.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
        print(f"{key:<{width}}  {shown}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
