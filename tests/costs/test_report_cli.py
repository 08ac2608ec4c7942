"""``optengine report costs``: rolls up, then prints the period's report; bad dates are
refused with a clear message."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

from typer.testing import CliRunner

from services.cli import app
from tests.support.cost_rows import HOSTED, PRICES, T0, every_path, insert


def run(*args: str):
    return CliRunner().invoke(app, ["report", "costs", *args])


def test_prints_the_report_in_each_format(store, monkeypatch) -> None:
    monkeypatch.setenv("OPTENGINE_PRICE_OVERRIDES", json.dumps(PRICES))
    monkeypatch.setenv("OPTENGINE_BASELINE_MODEL", "base")
    monkeypatch.setenv("OPTENGINE_OPENAI_BASE_URL", HOSTED)
    insert(store, every_path(T0 + timedelta(minutes=5)))
    since, until = T0.isoformat(), (T0 + timedelta(days=1)).isoformat()
    md = run("--since", since, "--until", until)
    assert md.exit_code == 0, md.output
    assert "## Savings by lever" in md.output and "| requests | 8 |" in md.output
    table = run("--since", since, "--until", until, "--tenant", "acme", "--format", "csv")
    rows = list(csv.reader(io.StringIO(table.output)))
    assert ["Totals", "requests", "8"] in rows
    page = run("--since", "2026-11-02T09:00Z", "--until", until, "--format", "html")
    assert page.output.startswith("<!doctype html>")
    empty = run("--since", "2026-10-01T00:00Z", "--until", "2026-10-02T00:00Z")
    assert empty.exit_code == 0 and "no data" in empty.output


def test_naive_or_malformed_dates_are_refused(store) -> None:
    naive = run("--since", "2026-11-02T00:00", "--until", "2026-11-03T00:00Z")
    assert naive.exit_code == 2 and "has no timezone" in naive.output
    assert run("--since", "yesterday").exit_code == 2
    assert run("--since", "2026-11-02T00:00Z", "--format", "pdf").exit_code == 2
