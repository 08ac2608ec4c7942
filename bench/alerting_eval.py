"""What one alerting evaluation costs as request_log grows (PostgreSQL).

For each size, request_log is filled with N rows spread evenly over the last ``--days``
(``--tenants`` x ``--models`` series, a third cache hits, 1% 5xx), analysed, then the
spec's default rules are evaluated: the metric rules (every minute; they read the last
``window_minutes`` on the created_at index) and the anomaly rules (hourly; they read
hourly totals of the whole history window, then run the detector per series). Each row
is ingested a second after it was created, as the telemetry writer does.

The hourly read is timed twice, side by side: before any cost rollup (every hour summed
from request_log, as the read did before it used cost_rollups) and after the cost flow's
rollup (the hours it holds from cost_rollups, the hour of the newest rows from
request_log). The anomaly run is timed after the rollup, as it runs in production. Times
are medians of ``--repeat`` runs. The metric run and the read from rollups should not
grow with N; the read from request_log does.

    .venv/bin/python bench/alerting_eval.py --rows 100000 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migrations import upgrade_to_head  # noqa: E402
from models import create_store_engine  # noqa: E402
from services.alerts import AlertEngine  # noqa: E402
from services.alerts.series import hourly_totals  # noqa: E402
from services.costs import PriceCatalog  # noqa: E402
from services.costs.reports import hosted_upstreams, roll_up  # noqa: E402
from services.settings import DeliverySettings, load_settings  # noqa: E402

FILL = """
INSERT INTO request_log (id, created_at, ingested_at, tenant, endpoint, stream,
    model_requested, model_served, cache_layer, status_code, latency_ms, cost_usd,
    baseline_cost_usd)
SELECT md5(random()::text || g::text),
       :now - (g::double precision / :rows) * (:days * interval '1 day'),
       :now - (g::double precision / :rows) * (:days * interval '1 day')
            + interval '1 second',
       'tenant-' || (g % :tenants), 'chat.completions', false,
       'model-' || (g % :models), 'model-' || (g % :models),
       CASE WHEN g % 3 = 0 THEN 'L1' ELSE 'MISS' END,
       CASE WHEN g % 100 = 0 THEN 503 ELSE 200 END,
       40 + (g % 250), CASE WHEN g % 3 = 0 THEN 0 ELSE 0.001 END, 0.001
FROM generate_series(1, :rows) AS g
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a server where a throwaway database may be created")
    return parser.parse_args(argv)


def timed(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still drop the database
    name = f"alerting_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = args.server.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{url}/{name}"
    rows_out = []
    try:
        upgrade_to_head(url)
        store = create_store_engine(url)
        settings = load_settings(database_url=url, data_dir=Path(tempfile.mkdtemp()),
                                 delivery=DeliverySettings())
        for rows in args.rows:
            now = datetime.now(UTC)
            with store.begin() as conn:
                conn.execute(text("TRUNCATE request_log, cost_rollups, cost_rollup_state"))
                conn.execute(text(FILL), {"now": now, "rows": rows, "days": args.days,
                                          "tenants": args.tenants, "models": args.models})
            with store.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE request_log"))
            engine = AlertEngine(settings, store, gpu_reader=dict)
            metrics_s = timed(lambda e=engine: asyncio.run(e.evaluate(kinds="metrics")),
                              args.repeat)
            start = now - timedelta(days=args.days)
            read_log_s = timed(lambda s=start, n=now: hourly_totals(store, start=s, end=n),
                               args.repeat)
            rollup_s = timed(lambda: roll_up(store, PriceCatalog.from_settings(settings),
                                             hosted_upstreams(settings)), 1)
            read_s = timed(lambda s=start, n=now: hourly_totals(store, start=s, end=n),
                           args.repeat)
            anomalies_s = timed(lambda e=engine: asyncio.run(e.evaluate(kinds="anomalies")),
                                args.repeat)
            series = args.tenants * args.models
            rows_out.append({"rows": rows, "metric_run_s": round(metrics_s, 3),
                             "anomaly_run_s": round(anomalies_s, 3),
                             "hourly_read_log_s": round(read_log_s, 3),
                             "rollup_backfill_s": round(rollup_s, 3),
                             "hourly_read_s": round(read_s, 3), "series": series,
                             "detect_per_series_ms": round(
                                 1000 * max(anomalies_s - read_s, 0) / series, 1)})
            print(f"{rows:>10,} rows: metric rules {metrics_s:.3f} s, anomaly rules "
                  f"{anomalies_s:.3f} s (hourly read {read_s:.3f} s from rollups, "
                  f"{read_log_s:.3f} s from request_log; {series} series)", flush=True)
        store.dispose()
    finally:
        with psycopg.connect(args.server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print("\n| request_log rows | metric rules run | anomaly rules run | of which hourly read "
          "(rollups + newest hour) | hourly read from request_log only | rollup backfill "
          "(once) | detector per series |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows_out:
        print(f"| {r['rows']:,} | {r['metric_run_s']:.3f} s | {r['anomaly_run_s']:.3f} s | "
              f"{r['hourly_read_s']:.3f} s | {r['hourly_read_log_s']:.3f} s | "
              f"{r['rollup_backfill_s']:.1f} s | {r['detect_per_series_ms']:.0f} ms |")
    print(json.dumps({"days": args.days, "runs": rows_out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
