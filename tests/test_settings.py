"""Settings: environment, YAML file, normalisation and the refusals outside dev."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.settings import Settings


def test_defaults_run_with_no_setup(monkeypatch) -> None:
    for name in (
        "OPTENGINE_DATABASE_URL",
        "OPTENGINE_WORKERS",
        "OPTENGINE_API_KEYS",
        "OPTENGINE_CONFIG",
        "OPTENGINE_ENV",
        "OPTENGINE_DATA_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url == "sqlite:///data/optengine.db"
    assert settings.auth_required is False and settings.workers == []


def test_environment_lists_and_urls(monkeypatch) -> None:
    monkeypatch.setenv("OPTENGINE_WORKERS", "http://a:8000/v1, http://b:9000/")
    monkeypatch.setenv("OPTENGINE_API_KEYS", "k1:team-a,k2")
    monkeypatch.setenv("OPTENGINE_DATABASE_URL", "postgres://u@db:5432/x")
    settings = Settings()
    assert settings.workers == ["http://a:8000", "http://b:9000"]
    assert settings.api_keys == ["k1:team-a", "k2"] and settings.auth_required
    assert settings.database_url == "postgresql+psycopg://u@db:5432/x"


def test_yaml_file_with_environment_on_top(monkeypatch, tmp_path) -> None:
    config = tmp_path / "optengine.yaml"
    config.write_text(
        "port: 9100\nbaseline_model: gpt-4o\n"
        "price_overrides:\n  my-model: {input_per_mtok: 1, output_per_mtok: 2}\n"
    )
    monkeypatch.setenv("OPTENGINE_CONFIG", str(config))
    monkeypatch.setenv("OPTENGINE_PORT", "9200")
    settings = Settings()
    assert settings.port == 9200 and settings.baseline_model == "gpt-4o"
    assert settings.price_overrides["my-model"].output_per_mtok == 2


def test_bad_values_fail_clearly(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("OPTENGINE_WORKERS", "localhost:8000")
    with pytest.raises(ValidationError, match="must start with http"):
        Settings()
    monkeypatch.delenv("OPTENGINE_WORKERS")
    monkeypatch.setenv("OPTENGINE_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError):
        Settings()


def test_prod_refuses_dev_conveniences(monkeypatch) -> None:
    monkeypatch.delenv("OPTENGINE_API_KEYS", raising=False)
    with pytest.raises(ValidationError, match="require_auth=false"):
        Settings(env="prod", require_auth=False)
    with pytest.raises(ValidationError, match="default dev API keys"):
        Settings(env="prod", api_keys=["sk-dev"])
    assert Settings(env="prod").auth_required
