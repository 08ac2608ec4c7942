"""Deployments and API-triggered flows against a real Prefect server.

``prefect.yaml`` must match the registry in ``flows/deployments.py`` and give every flow
a deployment; ``optengine flows deploy`` registers them and starts a process worker;
the gateway's admin API starts runs that the worker runs to completion; batches take
the same path; bad names, bad parameters and a server that is down get clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from flows.deployments import DEPLOYMENTS, FLOWS, PREFECT_YAML, WORK_POOL, render_prefect_yaml
from migrations import upgrade_to_head
from models import create_store_engine
from services.batch import store as batch_store
from services.batch.launcher import BatchLauncher
from services.orchestration import FlowRuns
from services.workers import free_port
from tests.support.gateway import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_every_flow_has_its_deployment_in_prefect_yaml() -> None:
    declared = yaml.safe_load(PREFECT_YAML.read_text())
    assert PREFECT_YAML.read_text() == render_prefect_yaml(), (
        "prefect.yaml is stale: run `python -m flows.deployments`")
    deployed_functions = {d["entrypoint"].rsplit(":", 1)[1] for d in declared["deployments"]}
    for name, flow in FLOWS.items():
        assert flow.name == name
        assert any(d.flow == name for d in DEPLOYMENTS), f"flow {name} has no deployment"
        assert flow.fn.__name__ in deployed_functions, f"{name} is missing from prefect.yaml"
    assert all(d["work_pool"]["name"] == WORK_POOL for d in declared["deployments"])
    assert {d.flow for d in DEPLOYMENTS} <= set(FLOWS)


def test_deploy_without_a_worker_registers_and_exits(prefect_server: str, tmp_path: Path
                                                    ) -> None:
    """What infra/ runs once per release (compose's deploy-flows, the Kubernetes Job):
    registers every deployment and returns, starting no worker of its own."""
    env = {**os.environ, "PREFECT_API_URL": prefect_server,
           "OPTENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
           "OPTENGINE_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "services.cli", "flows", "deploy",
                           "--no-wait", "--no-worker"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(DEPLOYMENTS)} deployments registered" in done.stdout
    assert "started a process worker" not in done.stdout
    assert not (tmp_path / "logs" / "prefect-worker.log").exists()


@pytest.fixture(scope="module")
def deploy(prefect_server: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``optengine flows deploy`` against the session's server, left running (with the
    worker it started) for this module's tests; stopped like Ctrl-C afterwards."""
    tmp_path = tmp_path_factory.mktemp("deploy")
    database_url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_to_head(database_url)
    env = {**os.environ, "PREFECT_API_URL": prefect_server,
           "OPTENGINE_DATABASE_URL": database_url, "OPTENGINE_DATA_DIR": str(tmp_path),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    out = tmp_path / "deploy.out"
    with out.open("wb") as stdout:
        process = subprocess.Popen([sys.executable, "-m", "services.cli", "flows", "deploy"],
                                   cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        assert wait_for(lambda: "Prefect UI at" in out.read_text() or process.poll() is not None,
                        timeout_s=300), out.read_text()
        assert process.poll() is None, out.read_text()
        yield database_url, out.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_deployed_flows_run_when_the_admin_api_starts_them(  # type: ignore[no-untyped-def]
        prefect_server, deploy, make_settings, start_gateway) -> None:
    database_url, printed = deploy
    assert f"Prefect UI at {prefect_server.removesuffix('/api')}" in printed
    assert "started a process worker" in printed
    deployments = httpx.post(f"{prefect_server}/deployments/filter", json={}).json()
    assert sorted(d["name"] for d in deployments) == sorted(d.name for d in DEPLOYMENTS)
    every_5 = next(d for d in deployments if d["name"] == "every-5-minutes")
    assert every_5["schedules"][0]["schedule"]["interval"] == 300
    assert every_5["work_pool_name"] == WORK_POOL

    gateway = start_gateway(make_settings(database_url=database_url,
                                          prefect_api_url=prefect_server))
    reply = httpx.post(f"{gateway.url}/admin/flows/model_routing/runs",
                       json={"parameters": {"min_labels": 1_000_000}})
    assert reply.status_code == 201, reply.text
    run = reply.json()
    assert run["flow"] == "model_routing" and run["deployment"] == "daily"
    assert run["parameters"] == {"min_labels": 1_000_000} and run["state"] == "SCHEDULED"

    def state() -> dict:
        return httpx.get(f"{gateway.url}/admin/flows/runs/{run['id']}").json()

    assert wait_for(lambda: state()["final"], timeout_s=240), state()
    final = state()
    assert final["state"] == "COMPLETED", final
    assert final["start_time"] and final["end_time"]

    # a batch goes through the same path: a run of parallel_execution with its id
    engine = create_store_engine(database_url)
    stored = batch_store.create_file(engine, tenant="t", filename="b.jsonl", purpose="batch",
                                     content=b"")
    batch = batch_store.create_batch(engine, tenant="t", input_file_id=stored.id,
                                     endpoint="/v1/chat/completions")
    settings = make_settings(database_url=database_url, prefect_api_url=prefect_server)
    launcher = BatchLauncher(settings, engine, FlowRuns(prefect_server))
    assert launcher.launch(batch.id)
    assert not launcher._processes  # nothing spawned here: the work pool runs it
    runs = httpx.post(f"{prefect_server}/flow_runs/filter", json={
        "flows": {"name": {"any_": ["parallel_execution"]}}}).json()
    assert [r["parameters"] for r in runs] == [{"batch_id": batch.id}]
    engine.dispose()


def test_bad_flow_names_parameters_and_runs_are_clear_errors(  # type: ignore[no-untyped-def]
        prefect_server, deploy, make_settings, start_gateway) -> None:
    database_url, _ = deploy
    gateway = start_gateway(make_settings(database_url=database_url,
                                          prefect_api_url=prefect_server))
    reply = httpx.post(f"{gateway.url}/admin/flows/no_such_flow/runs", json={})
    assert reply.status_code == 404
    assert "cache_optimization" in reply.json()["error"]["message"]  # says what exists
    reply = httpx.post(f"{gateway.url}/admin/flows/model_routing/runs",
                       json={"parameters": {"window_days": 3}})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "parameters"
    assert "min_labels" in reply.json()["error"]["message"]
    reply = httpx.post(f"{gateway.url}/admin/flows/parallel_execution/runs", json={})
    assert reply.status_code == 400 and "batch_id" in reply.json()["error"]["message"]
    reply = httpx.get(f"{gateway.url}/admin/flows/runs/00000000-0000-0000-0000-000000000000")
    assert reply.status_code == 404
    assert httpx.get(f"{gateway.url}/admin/flows/runs/not-a-uuid").status_code in (400, 422)


@pytest.mark.parametrize("configured", [True, False])
def test_a_prefect_server_that_is_down_is_a_503(configured: bool, make_settings,  # type: ignore[no-untyped-def]
                                                start_gateway) -> None:
    down = f"http://127.0.0.1:{free_port()}/api" if configured else ""
    gateway = start_gateway(make_settings(prefect_api_url=down))
    reply = httpx.post(f"{gateway.url}/admin/flows/cache_optimization/runs", json={})
    assert reply.status_code == 503
    error = reply.json()["error"]
    assert error["code"] == "prefect_unavailable"
    assert (down in error["message"]) if configured else ("PREFECT_API_URL" in error["message"])


def test_the_admin_key_guards_flow_runs(make_settings, start_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(make_settings(admin_api_key="admin-secret"))
    reply = httpx.post(f"{gateway.url}/admin/flows/cache_optimization/runs", json={})
    assert reply.status_code == 401


def test_a_batch_runs_here_when_prefect_is_down(make_settings, tmp_path: Path) -> None:
    settings = make_settings(prefect_api_url=f"http://127.0.0.1:{free_port()}/api")
    upgrade_to_head(settings.database_url)
    engine = create_store_engine(settings.database_url)
    stored = batch_store.create_file(engine, tenant="t", filename="b.jsonl", purpose="batch",
                                     content=b"")
    batch = batch_store.create_batch(engine, tenant="t", input_file_id=stored.id,
                                     endpoint="/v1/chat/completions")
    launcher = BatchLauncher(settings, engine, FlowRuns(settings.prefect_api_url))
    assert launcher.launch(batch.id)
    process = launcher._processes[batch.id]  # spawned locally: nothing is lost
    process.terminate()
    process.wait(timeout=30)
    engine.dispose()
