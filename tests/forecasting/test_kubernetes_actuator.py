"""The Kubernetes actuator, with the official client, against a small fake API server
that answers the Deployment ``scale`` subresource as the API does: autoscaling/v1
``Scale`` objects, patch content types, ``Status`` bodies with 404 / 409 / 415 / 422."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from services.forecasting.actuators import ActuatorError, KubernetesActuator

PATCH_TYPES = {"application/merge-patch+json", "application/strategic-merge-patch+json",
               "application/json-patch+json"}


class FakeApi:
    def __init__(self) -> None:
        self.replicas = {("prod", "vllm-small"): 2}
        self.version = 1
        self.conflicts = 0  # answer this many PATCHes with 409 first
        self.requests: list[tuple[str, str, str | None]] = []


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _target(self) -> tuple[str, str] | None:
            parts = self.path.split("?")[0].strip("/").split("/")
            # apis/apps/v1/namespaces/{ns}/deployments/{name}/scale
            if len(parts) == 8 and parts[:3] == ["apis", "apps", "v1"] and \
                    parts[3] == "namespaces" and parts[5] == "deployments" and parts[7] == "scale":
                return parts[4], parts[6]
            return None

        def _scale(self, key: tuple[str, str]) -> dict:
            n = api.replicas[key]
            return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                    "metadata": {"name": key[1], "namespace": key[0],
                                 "resourceVersion": str(api.version)},
                    "spec": {"replicas": n}, "status": {"replicas": n, "selector": "app=vllm"}}

        def _lookup(self) -> tuple[str, str] | None:
            key = self._target()
            if key is None or key not in api.replicas:
                name = key[1] if key else self.path
                self._send(404, status(404, "NotFound", f'deployments.apps "{name}" not found'))
                return None
            return key

        def do_GET(self) -> None:  # noqa: N802
            api.requests.append(("GET", self.path, None))
            key = self._lookup()
            if key is not None:
                self._send(200, self._scale(key))

        def do_PATCH(self) -> None:  # noqa: N802
            kind = self.headers.get("Content-Type", "").split(";")[0]
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"null")
            api.requests.append(("PATCH", self.path, kind))
            key = self._lookup()
            if key is None:
                return
            if kind not in PATCH_TYPES:
                self._send(415, status(415, "UnsupportedMediaType",
                                       f"the body of the request was in an unknown format - "
                                       f"accepted media types include: {sorted(PATCH_TYPES)}"))
                return
            if api.conflicts:
                api.conflicts -= 1
                api.version += 1
                self._send(409, status(409, "Conflict", "the object has been modified; please "
                                       "apply your changes to the latest version and try again"))
                return
            if kind == "application/json-patch+json":
                replicas = next(op["value"] for op in body if op["path"] == "/spec/replicas")
            else:
                replicas = body["spec"]["replicas"]
            if not isinstance(replicas, int) or replicas < 0:
                self._send(422, status(422, "Invalid", "spec.replicas: Invalid value: must be "
                                       "greater than or equal to 0"))
                return
            api.replicas[key] = replicas
            api.version += 1
            self._send(200, self._scale(key))

    return Handler


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeApi, client.AppsV1Api]]:
    api = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(api))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    apps = client.AppsV1Api(client.ApiClient(config))
    try:
        yield api, apps
    finally:
        server.shutdown()
        server.server_close()


def test_reads_and_patches_the_scale_subresource(fake_api) -> None:
    api, apps = fake_api
    actuator = KubernetesActuator({"small": "vllm-small"}, namespace="prod", api=apps)
    assert actuator.current("small") == 2
    actuator.scale("small", 5)
    assert api.replicas[("prod", "vllm-small")] == 5 and actuator.current("small") == 5
    method, path, kind = api.requests[1]
    assert method == "PATCH" and path.endswith("/namespaces/prod/deployments/vllm-small/scale")
    assert kind in PATCH_TYPES


def test_a_conflict_is_retried_once(fake_api) -> None:
    api, apps = fake_api
    actuator = KubernetesActuator({"small": "vllm-small"}, namespace="prod", api=apps)
    api.conflicts = 1
    actuator.scale("small", 3)
    assert api.replicas[("prod", "vllm-small")] == 3
    api.conflicts = 2
    with pytest.raises(ActuatorError, match="409"):
        actuator.scale("small", 4)
    assert api.replicas[("prod", "vllm-small")] == 3


def test_errors_are_clear(fake_api) -> None:
    api, apps = fake_api
    actuator = KubernetesActuator({"small": "vllm-small", "gone": "vllm-gone"},
                                  namespace="prod", api=apps)
    with pytest.raises(ActuatorError, match="404"):
        actuator.current("gone")
    with pytest.raises(ActuatorError, match="404"):
        actuator.scale("gone", 1)
    with pytest.raises(ActuatorError, match="422"):
        actuator.scale("small", -1)
    with pytest.raises(ActuatorError, match="no Deployment configured"):
        actuator.scale("unknown-model", 1)
    assert api.replicas[("prod", "vllm-small")] == 2
