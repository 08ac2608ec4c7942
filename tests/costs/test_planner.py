"""The planner's exact-cache estimate, checked against what the cache then saved: the
same traffic through a gateway with the cache off, then on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from models import RequestLog, TokenReport, create_store_engine
from services.costs import PriceCatalog
from services.costs.reports.planner import plan, proposed_settings
from services.settings import ModelPrice
from tests.routing.conftest import post_chat
from tests.support.fake_openai import Answer, FakeOpenAI

PRICES = {"medium": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
PROMPTS = [f"Question {i}: what is {i} plus {i}? Answer with one number." for i in range(5)]
TRAFFIC = PROMPTS + PROMPTS[:3] + PROMPTS[:2]  # 10 requests, 5 of them repeats


@pytest.fixture
def fake():
    server = FakeOpenAI({"medium": Answer()}).start()
    yield server
    server.stop()


def replay(fake, make_settings, start_gateway, tmp_path, *, cache: bool):
    url = f"sqlite:///{tmp_path / f'cache-{cache}.db'}"
    settings = make_settings(workers=[fake.url], price_overrides=PRICES, cache_enabled=cache,
                             database_url=url)
    gateway = start_gateway(settings)
    for text in TRAFFIC:
        response = post_chat(gateway, "medium", text, temperature=0, max_tokens=16)
        assert response.status_code == 200, response.text
    gateway.flush_telemetry()
    engine = create_store_engine(url)
    with engine.connect() as conn:
        spent = conn.scalar(select(func.sum(RequestLog.cost_usd)))
    return engine, spent


def test_the_cache_estimate_is_what_the_cache_then_saves(fake, make_settings, start_gateway,
                                                         tmp_path) -> None:
    catalog = PriceCatalog(overrides={"medium": ModelPrice(**PRICES["medium"])})
    since = datetime.now(UTC) - timedelta(minutes=1)
    off, spent_off = replay(fake, make_settings, start_gateway, tmp_path, cache=False)
    until = datetime.now(UTC) + timedelta(minutes=1)
    estimates = plan(off, catalog, since, until)
    [cache] = [e for e in estimates if e.lever == "cache_exact"]
    assert "5 requests repeated" in cache.method
    assert proposed_settings(estimates) == {"cache_enabled": True}

    on, spent_on = replay(fake, make_settings, start_gateway, tmp_path, cache=True)
    assert spent_off - spent_on == pytest.approx(cache.window_saving_usd)
    assert cache.monthly_saving_usd == pytest.approx(
        cache.window_saving_usd / ((until - since).total_seconds() / 86400) * 365.25 / 12)
    # where the cache already runs, nothing is proposed for it
    assert not [e for e in plan(on, catalog, since, datetime.now(UTC)) if e.lever == "cache_exact"]


def test_token_estimate_uses_the_latest_lossless_report(fake, make_settings, start_gateway,
                                                       tmp_path) -> None:
    catalog = PriceCatalog(overrides={"medium": ModelPrice(**PRICES["medium"])})
    since = datetime.now(UTC) - timedelta(minutes=1)
    engine, _ = replay(fake, make_settings, start_gateway, tmp_path, cache=False)
    with engine.begin() as conn:
        prompt_tokens = conn.scalar(select(func.sum(RequestLog.prompt_tokens)))
        conn.execute(TokenReport.__table__.insert().values(
            created_at=datetime.now(UTC), source="recent", policy="lossless",
            encoding="cl100k_base", samples=10, tokens_before=100, tokens_after=80,
            reduction=0.2, stages={}))
    [tokens] = [e for e in plan(engine, catalog, since, datetime.now(UTC))
                if e.lever == "token_optimization"]
    assert tokens.window_saving_usd == pytest.approx(prompt_tokens * 1e-6 * 0.2)
    assert "20.0%" in tokens.method


def test_optimize_command_writes_the_proposed_settings(fake, make_settings, start_gateway,
                                                      tmp_path, monkeypatch) -> None:
    import yaml
    from typer.testing import CliRunner

    from services.cli import app

    replay(fake, make_settings, start_gateway, tmp_path, cache=False)
    monkeypatch.setenv("OPTENGINE_DATABASE_URL", f"sqlite:///{tmp_path / 'cache-False.db'}")
    monkeypatch.setenv("OPTENGINE_PRICE_OVERRIDES", '{"medium": {"input_per_mtok": 1.0, '
                       '"output_per_mtok": 2.0}}')
    out = tmp_path / "plan.yaml"
    result = CliRunner().invoke(app, ["optimize", "--days", "1", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "cache_exact" in result.output and "/month" in result.output
    assert yaml.safe_load(out.read_text()) == {"cache_enabled": True}
    assert CliRunner().invoke(app, ["optimize", "--days", "0"]).exit_code == 2
