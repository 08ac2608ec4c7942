"""``optengine alerts check`` refuses rules naming unknown tenants or models."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from services.cli import app
from services.settings import load_settings


def test_check_names_the_unknown_tenant(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPTENGINE_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.setenv("OPTENGINE_API_KEYS", "k:acme")
    monkeypatch.setenv("OPTENGINE_ALERTS", json.dumps({"rules": [
        {"name": "slow-acme", "metric": "latency_p95_ms", "above": 300, "tenants": ["acme"]},
        {"name": "slow-typo", "metric": "latency_p95_ms", "above": 300, "tenants": ["acne"]},
    ]}))
    runner = CliRunner()
    refused = runner.invoke(app, ["alerts", "check"])
    assert refused.exit_code == 1
    assert "'slow-typo' names unknown tenant 'acne'" in refused.output
    assert "slow-acme" not in refused.output
    monkeypatch.setenv("OPTENGINE_ALERTS", json.dumps({"rules": [
        {"name": "slow-acme", "metric": "latency_p95_ms", "above": 300, "tenants": ["acme"]}]}))
    accepted = runner.invoke(app, ["alerts", "check"])
    assert accepted.exit_code == 0 and "1 alert rules OK" in accepted.output
    listed = runner.invoke(app, ["alerts", "list"])
    assert listed.exit_code == 0 and "no alerts" in listed.output


def test_a_malformed_rule_is_refused_when_settings_load() -> None:
    with pytest.raises(ValidationError, match="give exactly one of below/above"):
        load_settings(alerts={"rules": [{"name": "x", "metric": "error_rate"}]})
    with pytest.raises(ValidationError, match="names must be unique"):
        load_settings(alerts={"rules": [
            {"name": "x", "metric": "error_rate", "above": 0.1},
            {"name": "x", "metric": "error_rate", "above": 0.2}]})
