"""Dashboard page loads on a large PostgreSQL store (``--rows``, default 10 million).

Fills a fresh database with ``request_log`` rows spread evenly over 30 days (one
``INSERT ... SELECT generate_series``; each row ingested 2 s after it was created, as the
telemetry writer stores them, so only the newest hour has rows the rollup has not read),
brings ``cost_rollups`` up to date as the hourly
cost_management flow does (timed: the one-off backfill), then times, cold (no Streamlit
cache), each page's query function for the last hour, the last 24 hours and the last 30
days, and each page's full render through Streamlit's AppTest (first render of the
default range, cache empty). Prints a table and one JSON line; the database is dropped
at the end.

    .venv/bin/python bench/dashboard_load.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dashboards import control, data  # noqa: E402
from dashboards.data import Filters  # noqa: E402
from migrations import upgrade_to_head  # noqa: E402
from models import create_store_engine  # noqa: E402
from services.costs import PriceCatalog  # noqa: E402
from services.costs.reports import hosted_upstreams, roll_up  # noqa: E402
from services.settings import load_settings  # noqa: E402

FILL = """
INSERT INTO request_log (id, created_at, tenant, endpoint, stream, model_requested,
    model_served, worker, cache_layer, route_reason, status_code, prompt_tokens,
    completion_tokens, prompt_tokens_before_optimization, prompt_tokens_after_optimization,
    token_stages, ttft_ms, latency_ms, cost_usd, baseline_cost_usd, ingested_at)
SELECT 'r' || g, now() - (g * interval '30 days' / %(rows)s), 'tenant-' || (g %% 8),
    'chat.completions', false, 'm-' || (g %% 3), 'm-' || (g %% 3), 'http://w' || (g %% 4),
    (ARRAY['L1', 'L2', 'L3', 'MISS', 'MISS', NULL])[g %% 6 + 1],
    CASE WHEN g %% 10 = 0 THEN 'cascade: accepted' WHEN g %% 10 = 1
         THEN 'cascade: cheap attempt escalated' END,
    CASE WHEN g %% 50 = 0 THEN 500 ELSE 200 END, 100 + g %% 400, 10 + g %% 200,
    CASE WHEN g %% 5 = 0 THEN 300 END, CASE WHEN g %% 5 = 0 THEN 250 END,
    CASE WHEN g %% 5 = 0 THEN '{"dedup": 30, "whitespace": 20}'::json END,
    20 + g %% 97, 200 + g %% 911, 0.0001 * (g %% 7), 0.0005 * (g %% 7),
    now() - (g * interval '30 days' / %(rows)s) + interval '2 seconds'
FROM generate_series(1, %(rows)s) g
"""
QUERIES = [(data, "overview"), (data, "costs"), (data, "cache_tokens_routing"),
           (control, "capacity"), (control, "experiments"), (data, "alerts")]
# Alerts first: the first render in a process also pays the app's own imports, which a
# running server has paid long before; Alerts reads almost nothing
PAGES = ["views/alerts.py", "views/overview.py", "views/costs.py", "views/cache.py",
         "views/capacity.py", "views/experiments.py"]


def timed(fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    name = f"optengine_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = args.server.rsplit("/", 1)[0] + f"/{name}"
    result: dict[str, object] = {"rows": args.rows}
    try:
        settings = load_settings(database_url=url)
        upgrade_to_head(settings.database_url)
        start = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(FILL, {"rows": args.rows})
            conn.execute("ANALYZE request_log")
        result["fill_s"] = round(time.perf_counter() - start, 1)
        print(f"filled {args.rows:,} rows in {result['fill_s']} s", flush=True)
        writer = create_store_engine(settings.database_url)
        run = roll_up(writer, PriceCatalog.from_settings(settings), hosted_upstreams(settings))
        writer.dispose()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE cost_rollups")
        result["rollup_backfill_s"] = round(run.seconds, 1)
        print(f"rolled up {run.hours} hours ({run.rows:,} rollup rows) in {run.seconds:.1f} s",
              flush=True)
        engine = data.read_only_engine(url)
        for time_range in ("last hour", "last 24 hours", "last 30 days"):
            filters = Filters(time_range=time_range)
            for module, query in QUERIES:
                seconds = timed(getattr(module, query), engine, filters)
                result[f"{query} ({time_range})"] = round(seconds, 3)
                print(f"{query:22} {time_range:14} {seconds:7.3f} s", flush=True)
            seconds = timed(data.filter_choices, engine, filters)
            result[f"filter_choices ({time_range})"] = round(seconds, 3)
            print(f"{'filter_choices':22} {time_range:14} {seconds:7.3f} s", flush=True)
        engine.dispose()
        import altair  # noqa: F401  (the pages' chart library: a running server imported it once)
        from streamlit.testing.v1 import AppTest

        os.environ["OPTENGINE_DATABASE_URL"] = url
        at = AppTest.from_file(str(ROOT / "dashboards" / "app.py"), default_timeout=600)
        for page in PAGES:
            start = time.perf_counter()
            at.switch_page(page).run()
            seconds = time.perf_counter() - start
            assert not at.exception, at.exception
            result[f"render {page}"] = round(seconds, 3)
            print(f"render {page:26} {seconds:7.3f} s", flush=True)
    finally:
        with psycopg.connect(args.server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(result))


if __name__ == "__main__":
    main()
