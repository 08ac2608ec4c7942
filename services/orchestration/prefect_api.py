"""A small client of Prefect's REST API: start a deployment's run, read a run's state.

Plain HTTP (httpx) rather than Prefect's own client: the gateway needs three calls, a
per-call timeout and errors in the platform's tree, without Prefect's global settings
context. Every failure maps to ``services.errors``:

- no server configured, or it cannot be reached -> ``UpstreamUnavailable`` (503, code
  ``prefect_unavailable``), with what to do about it;
- a flow with no deployment on the server, an unknown run -> ``NotFound`` (404);
- parameters the server refuses -> ``InvalidRequest`` (400, param ``parameters``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from services.errors import InvalidRequest, NotFound, UpstreamError, UpstreamUnavailable


@dataclass
class FlowRun:
    id: str
    name: str
    flow: str
    deployment: str | None
    state: str  # SCHEDULED | PENDING | RUNNING | COMPLETED | FAILED | CRASHED | CANCELLED ...
    state_name: str | None
    message: str | None
    parameters: dict[str, Any]
    start_time: str | None
    end_time: str | None

    @property
    def final(self) -> bool:
        return self.state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "flow": self.flow,
                "deployment": self.deployment, "state": self.state,
                "state_name": self.state_name, "message": self.message,
                "parameters": self.parameters, "start_time": self.start_time,
                "end_time": self.end_time, "final": self.final}


class FlowRuns:
    """Runs of the deployments on one Prefect server (blocking: call it in a thread)."""

    def __init__(self, api_url: str, *, timeout_s: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self._client = httpx.Client(base_url=self.api_url + "/", timeout=timeout_s,
                                    transport=transport)

    def close(self) -> None:
        self._client.close()

    def start(self, flow: str, parameters: dict[str, Any] | None = None,
              deployment: str | None = None) -> FlowRun:
        """Create a run of ``flow``'s deployment (its only one, or the one named) with
        ``parameters`` over the deployment's defaults; a worker of its pool runs it."""
        found = self._deployments(flow)
        if deployment is not None:
            found = [d for d in found if d["name"] == deployment]
        if not found:
            which = f"deployment {deployment!r} of flow {flow!r}" if deployment else (
                f"flow {flow!r}")
            raise NotFound(f"no {which} is deployed on the Prefect server at {self.api_url}: "
                           f"run `optengine flows deploy`, or see {self._known()}",
                           param="name")
        chosen = found[0]
        _check_parameters(flow, chosen.get("parameter_openapi_schema") or {},
                          parameters or {}, chosen.get("parameters") or {})
        response = self._call("POST", f"deployments/{chosen['id']}/create_flow_run",
                              json={"parameters": parameters or {}})
        if response.status_code in (400, 409, 422):
            raise InvalidRequest(f"Prefect refused the parameters: {_detail(response)}",
                                 param="parameters")
        run = self._json(response)
        return self._run(run, flow=flow, deployment=chosen["name"])

    def get(self, run_id: str) -> FlowRun:
        response = self._call("GET", f"flow_runs/{run_id}")
        if response.status_code in (404, 422):
            raise NotFound(f"no flow run {run_id} on the Prefect server", param="run_id")
        run = self._json(response)
        flow = self._json(self._call("GET", f"flows/{run['flow_id']}"))["name"]
        deployment = None
        if run.get("deployment_id"):
            reply = self._call("GET", f"deployments/{run['deployment_id']}")
            deployment = self._json(reply)["name"] if reply.status_code == 200 else None
        return self._run(run, flow=flow, deployment=deployment)

    def _deployments(self, flow: str) -> list[dict[str, Any]]:
        response = self._call("POST", "deployments/filter", json={
            "flows": {"name": {"any_": [flow]}}, "limit": 50, "sort": "NAME_ASC"})
        return self._json(response)  # type: ignore[no-any-return]

    def _known(self) -> str:
        response = self._call("POST", "flows/filter", json={"limit": 50})
        names = sorted(f["name"] for f in self._json(response))
        return "deployed flows: " + (", ".join(names) if names else "none")

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if not self.api_url:
            raise UpstreamUnavailable(
                "no Prefect server is configured: set PREFECT_API_URL (or "
                "OPTENGINE_PREFECT_API_URL); `optengine flows deploy` starts one and prints it",
                code="prefect_unavailable")
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(
                f"the Prefect server at {self.api_url} cannot be reached "
                f"({type(exc).__name__}): start it (`optengine flows deploy`) or check "
                "PREFECT_API_URL", code="prefect_unavailable") from None

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 500:
            raise UpstreamUnavailable(f"the Prefect server at {self.api_url} failed: "
                                      f"{response.status_code} {_detail(response)}",
                                      code="prefect_unavailable")
        if response.status_code >= 400:
            raise UpstreamError(f"the Prefect server at {self.api_url} answered "
                                f"{response.status_code}: {_detail(response)}")
        return response.json()

    @staticmethod
    def _run(run: dict[str, Any], *, flow: str, deployment: str | None) -> FlowRun:
        state = run.get("state") or {}
        return FlowRun(
            id=run["id"], name=run["name"], flow=flow, deployment=deployment,
            state=state.get("type") or run.get("state_type") or "UNKNOWN",
            state_name=state.get("name") or run.get("state_name"),
            message=state.get("message"), parameters=run.get("parameters") or {},
            start_time=run.get("start_time"), end_time=run.get("end_time"),
        )


def _check_parameters(flow: str, schema: dict[str, Any], parameters: dict[str, Any],
                      defaults: dict[str, Any]) -> None:
    """Names the flow does not take, or required ones missing, are refused before a run
    exists (Prefect would create it and let it crash)."""
    accepted = schema.get("properties") or {}
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        raise InvalidRequest(f"flow {flow!r} takes no parameter {', '.join(unknown)}; it "
                             f"takes: {', '.join(accepted) or 'none'}", param="parameters")
    missing = [name for name in schema.get("required") or []
               if name not in parameters and name not in defaults]
    if missing:
        raise InvalidRequest(f"flow {flow!r} needs the parameter {', '.join(missing)}",
                             param="parameters")


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return str(detail)[:500]
