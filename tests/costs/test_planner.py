"""The planner's exact-cache estimate, checked against what the cache then saved: the
same traffic through a gateway with the cache off, then on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from models import RequestLog, TokenReport, create_store_engine
from services.costs import PriceCatalog
from services.costs.reports.planner import plan, proposed_settings
from services.routing.config import RoutingConfig
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


@pytest.fixture
def tiers():
    from tests.routing.conftest import PRICES as TIERS

    workers = FakeOpenAI({name: Answer() for name in TIERS}).start()
    yield workers, PriceCatalog(overrides={n: ModelPrice(**p) for n, p in TIERS.items()})
    workers.stop()


@pytest.fixture
def run_tenant(tiers, make_settings, start_gateway, tmp_path):
    """``run(name, model, key, prompts, before=None, **routing)``: the prompts sent to
    ``model`` with ``key`` (``ka``: acme, ``kp``: probe) through a gateway on the three
    fake tiers, ``before(i)`` called before request i; returns (cost spent, store)."""
    from tests.routing.conftest import PRICES as TIERS
    from tests.routing.conftest import routing_config

    def run(name, model, key, prompts, before=None, **routing):
        url = f"sqlite:///{tmp_path / f'{name}.db'}"
        gateway = start_gateway(make_settings(
            workers=[tiers[0].url], routing=routing_config(**routing), price_overrides=TIERS,
            cache_enabled=False, database_url=url, api_keys=["ka:acme", "kp:probe"]))
        for i, text in enumerate(prompts):
            if before is not None:
                before(i)
            response = post_chat(gateway, model, text,
                                 headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, response.text
        gateway.flush_telemetry()
        engine = create_store_engine(url)
        with engine.connect() as conn:
            return conn.scalar(select(func.sum(RequestLog.cost_usd))), engine

    return run


def merged(into, source) -> None:
    """``source``'s rows copied into ``into``: one store, as in production."""
    with into.begin() as conn, source.connect() as rows:
        conn.execute(RequestLog.__table__.insert(),
                     [dict(r._mapping) for r in rows.execute(select(RequestLog.__table__))])


def test_the_routing_estimate_is_what_substitution_then_saves(tiers, run_tenant) -> None:
    """acme asks for the strong model by name; probe sends the same prompts to ``auto``.
    The planner's routing estimate for acme (from probe's strong share) against what acme
    then saves once the router may substitute its model."""
    from tests.routing.conftest import EASY, HARD, routing_config

    prompts = [EASY, HARD] * 10
    since = datetime.now(UTC) - timedelta(minutes=1)
    spent_explicit, explicit = run_tenant("explicit", "large", "ka", prompts)
    _, probe = run_tenant("probe", "auto", "kp", prompts)
    until = datetime.now(UTC) + timedelta(minutes=1)
    merged(explicit, probe)
    estimates = plan(explicit, tiers[1], since, until, RoutingConfig.model_validate(
        routing_config()))
    [routing] = [e for e in estimates if e.lever == "routing"]
    assert routing.tenant == "acme" and "strong share 50.0%" in routing.method
    assert proposed_settings(estimates)["routing"] == {"substitution_tenants": ["acme"]}
    spent_routed, _ = run_tenant("routed", "large", "ka", prompts, substitution_tenants=["acme"])
    # the estimate spreads the saving over all prompts; substitution moves the easy ones,
    # which are two tokens (of about 23) shorter than the hard ones
    assert spent_explicit - spent_routed == pytest.approx(routing.window_saving_usd, rel=0.1)


def test_the_cascade_estimate_is_what_the_cascade_then_saves(tiers, run_tenant) -> None:
    """acme asks for the strong model by name; probe sends the same prompts to ``auto``
    with the cascade on: the router sends the hard third straight to the strong model
    (sure it is needed), the cheap model answers the rest, weakly for a quarter of them
    (escalated). The planner's cascade estimate for acme against what acme then saves
    with the settings that turn the cascade on for it: acme's model substituted, the
    cascade on, acme still asking for the strong model by name."""
    from tests.routing.conftest import EASY, HARD, routing_config

    workers, catalog = tiers
    prompts = [HARD if i % 3 == 2 else EASY for i in range(30)]

    def answer(i: int) -> None:  # every 6th request (an easy one) gets a weak cheap answer
        workers.models["small"].logprob = -2.0 if i % 6 == 0 else -0.05

    cascade = {"cascade": {"enabled": True, "threshold": 0.5}}
    since = datetime.now(UTC) - timedelta(minutes=1)
    spent_explicit, explicit = run_tenant("explicit", "large", "ka", prompts)
    _, probe = run_tenant("probe", "auto", "kp", prompts, answer, **cascade)
    until = datetime.now(UTC) + timedelta(minutes=1)
    merged(explicit, probe)
    estimates = plan(explicit, catalog, since, until, RoutingConfig.model_validate(
        routing_config(**cascade)))
    [estimate] = [e for e in estimates if e.lever == "cascade"]
    assert estimate.tenant == "acme"
    assert "33.3% straight to the strong model" in estimate.method
    assert "25.0% of those escalated" in estimate.method
    spent_cascade, cascaded = run_tenant("cascaded", "large", "ka", prompts, answer,
                                         substitution_tenants=["acme"], **cascade)
    with cascaded.connect() as conn:  # the cheap attempts' cost is in what acme spent
        attempts = conn.scalar(select(func.count()).where(
            RequestLog.route_reason.startswith("cascade: cheap attempt escalated")))
    assert attempts == 5
    # the estimate spreads skips and escalations over all prompts; the skipped (hard)
    # prompts are two tokens (of about 23) longer than the easy ones
    assert spent_explicit - spent_cascade == pytest.approx(estimate.window_saving_usd, rel=0.1)
