"""Carrying out a scaling decision: local ``optengine worker`` processes, or a Kubernetes
Deployment's ``scale`` subresource. (On Kubernetes, KEDA or an HPA can instead act on
``optengine_desired_replicas`` from the gateway's ``/metrics``; see
``infra/kubernetes/keda-scaledobject.yaml``.)

Both are stateless between calls: the count of workers comes from the store (local) or
the API server (Kubernetes) every time, so a retried ``scale`` after a failure never
starts a worker twice.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from models import Worker, WorkerLaunch
from services.workers.launcher import free_port

log = logging.getLogger(__name__)


class ActuatorError(RuntimeError):
    """The actuator could not carry out the decision (the flow retries the step)."""


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # our own child that exited is a zombie until reaped: not alive
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (started by an earlier flow run)
        return True
    return reaped == 0


class LocalActuator:
    """Starts and stops ``optengine worker`` processes on this machine.

    A worker started here is a detached ``optengine worker --model DIR --port P`` (its own
    session, so it outlives the flow run that started it); it registers itself in the
    shared ``workers`` table once healthy, and on SIGTERM deregisters, drains its
    requests in flight and stops: the existing registry does the routing side. Each
    start is a ``worker_launches`` row: the active count is launches not stopped whose
    process is alive (starting or serving), so a retry sees the workers it already
    started. A launch whose process died before it became healthy is marked failed (the
    cold-start estimate counts it) and is replaced by the next decision.
    """

    def __init__(
        self,
        engine: Engine,
        model_dirs: Mapping[str, Path],
        *,
        command: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        pid_alive: Callable[[int | None], bool] = _pid_alive,
    ) -> None:
        self.engine = engine
        self.model_dirs = dict(model_dirs)
        self.command = list(command or [sys.executable, "-m", "services.cli", "worker"])
        self.extra_args = list(extra_args)
        self.env = dict(env) if env is not None else None
        self.log_dir = log_dir
        self.pid_alive = pid_alive

    def _refresh(self, session: Session, model: str) -> list[WorkerLaunch]:
        """Live launches of ``model``, oldest first; marks healthy and failed ones."""
        now = datetime.now(UTC)
        launches = session.scalars(
            select(WorkerLaunch).where(WorkerLaunch.model == model,
                                       WorkerLaunch.stopped_at.is_(None),
                                       WorkerLaunch.failed_at.is_(None))
            .order_by(WorkerLaunch.requested_at, WorkerLaunch.id)).all()
        live = []
        for launch in launches:
            registered = session.scalar(select(Worker).where(
                Worker.url == launch.url, Worker.deregistered_at.is_(None)))
            if launch.healthy_at is None and registered is not None:
                launch.healthy_at = registered.registered_at or now
            if not self.pid_alive(launch.pid):
                if launch.healthy_at is None:
                    launch.failed_at = now
                    log.warning("worker for %s (pid %s) died before it was healthy",
                                model, launch.pid)
                else:
                    launch.stopped_at = now
                continue
            live.append(launch)
        return live

    def current(self, model: str) -> int:
        with Session(self.engine) as session, session.begin():
            return len(self._refresh(session, model))

    def scale(self, model: str, desired: int) -> None:
        if desired < 0:
            raise ValueError("desired must be >= 0")
        with Session(self.engine) as session, session.begin():
            live = self._refresh(session, model)
            if desired > len(live):
                if model not in self.model_dirs:
                    raise ActuatorError(f"no model folder configured for {model!r} "
                                        "(scaling_model_dirs)")
                for _ in range(desired - len(live)):
                    session.add(self._start(model))
            for launch in reversed(live[desired:]):  # newest first
                self._stop(launch)

    def _start(self, model: str) -> WorkerLaunch:
        port = free_port()
        argv = [*self.command, "--model", str(self.model_dirs[model]), "--port", str(port),
                "--served-model-name", model, *self.extra_args]
        safe = model.replace("/", "_")
        log_path = (self.log_dir or Path("data") / "logs") / f"worker-{safe}-{port}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with log_path.open("ab") as out:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        env=self.env)
        except OSError as exc:
            raise ActuatorError(f"could not start a worker for {model}: {exc}") from exc
        log.info("started worker for %s on port %d (pid %d), log %s", model, port, proc.pid,
                 log_path)
        return WorkerLaunch(model=model, url=f"http://127.0.0.1:{port}", pid=proc.pid,
                            requested_at=datetime.now(UTC))

    def _stop(self, launch: WorkerLaunch) -> None:
        """SIGTERM: the worker deregisters, drains and exits by itself."""
        log.info("stopping worker %s (pid %s)", launch.url, launch.pid)
        if launch.pid is not None:
            try:
                os.kill(launch.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        launch.stopped_at = datetime.now(UTC)


class KubernetesActuator:
    """Sets ``spec.replicas`` of a model's Deployment through the ``scale`` subresource
    (official ``kubernetes`` client), as ``kubectl scale`` does; the cluster's own
    Deployment controller does the rest. An optimistic-concurrency conflict (409) is
    retried once with the fresh resourceVersion."""

    def __init__(self, deployments: Mapping[str, str], namespace: str = "default",
                 api: Any = None) -> None:
        self.deployments = dict(deployments)
        self.namespace = namespace
        self._api = api

    @property
    def api(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = client.AppsV1Api()
        return self._api

    def _name(self, model: str) -> str:
        try:
            return self.deployments[model]
        except KeyError:
            raise ActuatorError(f"no Deployment configured for {model!r} "
                                "(scaling_k8s_deployments)") from None

    def current(self, model: str) -> int:
        from kubernetes.client.exceptions import ApiException

        try:
            scale = self.api.read_namespaced_deployment_scale(self._name(model), self.namespace)
        except ApiException as exc:
            raise ActuatorError(f"reading the scale of {self._name(model)}: {exc.status} "
                                f"{exc.reason}") from exc
        return int(scale.spec.replicas or 0)

    def scale(self, model: str, desired: int) -> None:
        from kubernetes.client.exceptions import ApiException

        name = self._name(model)
        for attempt in (1, 2):
            try:
                self.api.patch_namespaced_deployment_scale(
                    name, self.namespace, {"spec": {"replicas": int(desired)}})
                return
            except ApiException as exc:
                if exc.status == 409 and attempt == 1:
                    continue
                raise ActuatorError(f"scaling {name} to {desired}: {exc.status} "
                                    f"{exc.reason}") from exc
