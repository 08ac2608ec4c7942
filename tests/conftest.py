"""Session-wide real components: one vLLM-CPU worker on the tiny model (started once,
25-60 s), PostgreSQL (the machine's, else a throwaway cluster), and factories for
gateways and settings that keep every test's state in its own folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from migrations import upgrade_to_head
from models import create_store_engine
from services.settings import Settings, load_settings
from services.workers import VllmWorker, free_port, make_test_model
from tests.support.gateway import RunningGateway
from tests.support.postgres import (
    STORE_KINDS,
    ThrowawayPostgres,
    create_database,
    drop_database,
    reachable,
)

ROOT = Path(__file__).resolve().parents[1]
TEST_MODEL_DIR = ROOT / "data" / "test-models" / "tiny-llama"


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return make_test_model(TEST_MODEL_DIR)


@pytest.fixture(scope="session")
def vllm_worker(tiny_model: Path) -> Iterator[VllmWorker]:
    """One real vLLM-CPU worker shared by every test that needs inference."""
    worker = VllmWorker(
        tiny_model,
        python=ROOT / ".venv-vllm" / "bin" / "python",
        log_path=ROOT / "data" / "logs" / "vllm-tests.log",
        startup_timeout_s=300,
    )
    with worker:
        yield worker


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database."""
    configured = os.environ.get("OPTENGINE_TEST_POSTGRES_URL")
    if configured:
        yield configured
        return
    if reachable("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    cluster = ThrowawayPostgres(free_port())
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty Postgres database for one test."""
    url = create_database(postgres_server)
    try:
        yield url
    finally:
        drop_database(postgres_server, url)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings isolated in the test's own folder (SQLite store, spill file)."""

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "env": "test",
            "data_dir": tmp_path / "data",
            "health_interval_s": 0.5,
            "telemetry_spill_replay_interval_s": 0.5,
        }
        values.update(overrides)
        return load_settings(**values)

    return build


@pytest.fixture
def start_gateway() -> Iterator[Callable[[Settings], RunningGateway]]:
    started: list[RunningGateway] = []

    def start(settings: Settings) -> RunningGateway:
        gateway = RunningGateway(settings).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def vllm_gateway(
    vllm_worker: VllmWorker,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[[Settings], RunningGateway],
) -> RunningGateway:
    """A gateway (SQLite store, dev mode) in front of the shared vLLM worker."""
    return start_gateway(make_settings(workers=[vllm_worker.base_url]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the vLLM worker, so ``-m 'not vllm'`` runs in seconds,
    and every test that needs a PostgreSQL server (``-m 'not postgres'``)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "vllm_worker" in fixtures:
            item.add_marker(pytest.mark.vllm)
        if "postgres_server" in fixtures:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test harness (temporary database, ephemeral API) for the session."""
    from flows.prefect_env import apply_prefect_defaults

    apply_prefect_defaults()
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A migrated SQLite store that code reading its store from settings (flows,
    retraining) finds through ``OPTENGINE_DATABASE_URL``."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_to_head(url)
    monkeypatch.setenv("OPTENGINE_DATABASE_URL", url)
    engine = create_store_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture(params=STORE_KINDS)
def each_store_url(request, tmp_path, monkeypatch) -> str:
    """A migrated store of each kind (SQLite, then PostgreSQL, marked ``postgres``), also
    found by code that reads its store from settings (the CLI) through
    ``OPTENGINE_DATABASE_URL``."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url").replace(
            "postgresql://", "postgresql+psycopg://")
    upgrade_to_head(url)
    monkeypatch.setenv("OPTENGINE_DATABASE_URL", url)
    return url


@pytest.fixture
def any_store(each_store_url):
    """A migrated store, once on SQLite and once on PostgreSQL (marked ``postgres``)."""
    engine = create_store_engine(each_store_url)
    yield engine
    engine.dispose()
