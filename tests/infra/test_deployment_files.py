"""infra/: the files that run the platform on more than one machine are checked offline.

docker-compose validates the compose file (no daemon, nothing pulled); every Kubernetes
manifest validates against the API's own schemas (kubernetes-validate, strict: a
misspelt field fails); and the settings they pass are settings the app has.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
KUBE = INFRA / "kubernetes"
KUBERNETES_VERSION = "1.33.0"
# custom resources (KEDA) have no schema in kubernetes-validate's bundle
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication"}
COMPOSE_ENV = {
    "POSTGRES_PASSWORD": "pw", "OPTENGINE_ADMIN_API_KEY": "admin",
    "DASHBOARD_DB_PASSWORD": "ro", "MODELS_DIR": "/srv/models",
}
SETTINGS = {f"OPTENGINE_{name.upper()}" for name in Settings.model_fields}


def manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name == "kustomization.yaml":  # kustomize's own file, not an API object
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc.get('metadata', {}).get('name', '')}",
                             doc))
    return docs


def validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def compose_config() -> dict:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed (scripts/test.sh installs it)"
    result = subprocess.run(
        [binary, "-f", str(INFRA / "docker-compose.yml"), "config"],
        env={**os.environ, **COMPOSE_ENV}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.mark.parametrize(("name", "doc"), manifests(), ids=[n for n, _ in manifests()])
def test_every_manifest_validates_against_the_kubernetes_schemas(name: str, doc: dict) -> None:
    if doc["kind"] in CUSTOM_KINDS:
        pytest.skip(f"{doc['kind']} is a custom resource")
    validate(doc)


def test_a_malformed_manifest_fails_validation() -> None:
    gateway = next(doc for name, doc in manifests() if name == "gateway.yaml:Deployment/gateway")
    wrong_type = copy.deepcopy(gateway)
    wrong_type["spec"]["replicas"] = "two"
    misspelt = copy.deepcopy(gateway)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = (
        misspelt["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe"))
    for broken in (wrong_type, misspelt):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(broken)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"])
    files = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml",
                                                       "secret.example.yaml"}
    assert listed == files


def test_probes_use_the_gateways_health_endpoints() -> None:
    docs = dict(manifests())
    container = docs["gateway.yaml:Deployment/gateway"]["spec"]["template"]["spec"][
        "containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "HorizontalPodAutoscaler" in {d["kind"] for d in docs.values()}
    budgets = [d for d in docs.values() if d["kind"] == "PodDisruptionBudget"]
    assert {b["metadata"]["name"] for b in budgets} >= {"gateway", "vllm-gemma"}


def test_vllm_workers_ask_for_gpus_and_register_themselves() -> None:
    docs = dict(manifests())
    pod = docs["vllm-gemma.yaml:Deployment/vllm-gemma"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["lifecycle"]["preStop"]["exec"]["command"][-1] == "drain"
    hooks = docs["worker-hooks.yaml:ConfigMap/optengine-worker-hooks"]["data"]
    # the hook script is valid Python and calls the admin API the gateway serves
    compile(hooks["worker_hooks.py"], "worker_hooks.py", "exec")
    assert "/admin/workers/drain" in hooks["worker_hooks.py"]


def test_compose_file_validates_and_runs_two_gateway_replicas() -> None:
    config = compose_config()
    services = config["services"]
    assert services["gateway"]["deploy"]["replicas"] == 2
    gpu = services["vllm-gemma"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert {"postgres", "redis", "lb", "prefect-server", "prefect-worker", "dashboard",
            "prometheus", "migrate"} <= set(services)


def test_compose_refuses_to_start_without_its_secrets() -> None:
    binary = shutil.which("docker-compose")
    assert binary
    env = {k: v for k, v in {**os.environ, **COMPOSE_ENV}.items() if k != "POSTGRES_PASSWORD"}
    result = subprocess.run([binary, "-f", str(INFRA / "docker-compose.yml"), "config", "-q"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr


def test_every_optengine_variable_is_a_setting_the_app_reads() -> None:
    """A misspelt OPTENGINE_ name would be silently ignored by the app (extra=ignore)."""
    text = (INFRA / "docker-compose.yml").read_text() + "".join(
        p.read_text() for p in KUBE.glob("*.yaml"))
    used = set(re.findall(r"\b(OPTENGINE_[A-Z0-9_]+)\b", text)) - {"OPTENGINE_IMAGE"}
    assert used and used <= SETTINGS, sorted(used - SETTINGS)


def test_dockerfile_copies_what_exists() -> None:
    for line in (INFRA / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def deploy_command_parses(command: list[str]) -> None:
    """The command is ``optengine flows deploy`` with options the CLI has (click raises
    for an unknown one)."""
    from typer.main import get_command

    from services.cli import app

    assert command[:3] == ["optengine", "flows", "deploy"], command
    group = get_command(app)
    flows = group.get_command(group.make_context("optengine", ["flows"]), "flows")
    deploy = flows.get_command(flows.make_context("flows", ["deploy"]), "deploy")
    params = deploy.make_context("deploy", list(command[3:])).params
    assert params["wait"] is False and params["worker"] is False, params


def test_compose_registers_the_deployments_once_the_prefect_server_is_up() -> None:
    services = compose_config()["services"]
    deploy = services["deploy-flows"]
    deploy_command_parses(deploy["command"])
    assert deploy["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert deploy["restart"] == "on-failure"  # until the server answers
    assert deploy["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert "/api/health" in " ".join(services["prefect-server"]["healthcheck"]["test"])


def test_kubernetes_runs_a_job_that_registers_the_deployments() -> None:
    docs = dict(manifests())
    job = docs["deploy-flows-job.yaml:Job/optengine-deploy-flows"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    deploy_command_parses(container["command"])
    assert {"configMapRef": {"name": "optengine-config"}} in container["envFrom"]
    config = docs["configmap.yaml:ConfigMap/optengine-config"]["data"]
    assert config["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_a_deploy_command_with_an_unknown_option_is_refused() -> None:
    with pytest.raises(Exception, match="No such option: --no-workers"):
        deploy_command_parses(["optengine", "flows", "deploy", "--no-wait", "--no-workers"])
