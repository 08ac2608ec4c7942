"""The local actuator: starts ``optengine worker`` processes, sees them register, stops
them through SIGTERM (the worker deregisters and drains itself), never starts twice.

These run a stand-in for the worker command (a small script that registers in the same
``workers`` table the way ``optengine worker`` does, after a moment); the real
``optengine worker`` with the tiny model on vLLM is started, served through the gateway
and drained in ``test_burst_e2e.py``."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from models import Worker, WorkerLaunch, session_factory
from services.forecasting.actuators import ActuatorError, LocalActuator

ROOT = Path(__file__).resolve().parents[2]

STAND_IN = textwrap.dedent('''
    import argparse, signal, sys, threading
    sys.path.insert(0, {root!r})
    from models import create_store_engine, session_factory
    from services.execution import deregister_worker, register_worker
    parser = argparse.ArgumentParser()
    parser.add_argument("--model"); parser.add_argument("--port")
    parser.add_argument("--served-model-name"); parser.add_argument("--die", action="store_true")
    args = parser.parse_args()
    if args.die:
        sys.exit(3)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sessions = session_factory(create_store_engine({url!r}))
    url = f"http://127.0.0.1:{{args.port}}"
    if not stop.wait(0.5):  # "starting up"
        register_worker(sessions, url, source="launched", models=[args.served_model_name])
        stop.wait(120)
    deregister_worker(sessions, url)
''')


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child (exited, not yet reaped) is not alive
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return waited == 0


@pytest.fixture
def stand_in(tmp_path, store) -> list[str]:
    script = tmp_path / "worker.py"
    script.write_text(STAND_IN.format(root=str(ROOT), url=str(store.url)))
    return [sys.executable, str(script)]


def launches(store) -> list[WorkerLaunch]:
    with session_factory(store)() as session:
        return list(session.scalars(select(WorkerLaunch).order_by(WorkerLaunch.id)))


def registered(store) -> list[str]:
    with session_factory(store)() as session:
        return list(session.scalars(select(Worker.url).where(Worker.deregistered_at.is_(None))))


def test_scale_up_registers_and_scale_down_drains(store, stand_in, tmp_path) -> None:
    actuator = LocalActuator(store, {"tiny": tmp_path}, command=stand_in, log_dir=tmp_path)
    actuator.scale("tiny", 2)
    assert actuator.current("tiny") == 2  # starting ones count: a retry starts none
    actuator.scale("tiny", 2)
    assert len(launches(store)) == 2
    wait_for(lambda: len(registered(store)) == 2)
    assert actuator.current("tiny") == 2
    assert all(launch.healthy_at is not None for launch in launches(store))
    first, second = launches(store)
    actuator.scale("tiny", 1)  # the newest goes
    wait_for(lambda: registered(store) == [first.url])
    assert actuator.current("tiny") == 1
    done = {launch.url: launch for launch in launches(store)}
    assert done[second.url].stopped_at is not None and done[first.url].stopped_at is None
    actuator.scale("tiny", 0)
    wait_for(lambda: registered(store) == [] and not alive(first.pid))


def test_a_worker_that_dies_starting_is_marked_failed_and_replaced(store, stand_in,
                                                                   tmp_path) -> None:
    actuator = LocalActuator(store, {"tiny": tmp_path}, command=stand_in,
                             extra_args=["--die"], log_dir=tmp_path)
    actuator.scale("tiny", 1)
    [launch] = launches(store)
    wait_for(lambda: not alive(launch.pid))
    assert actuator.current("tiny") == 0
    [launch] = launches(store)
    assert launch.failed_at is not None and launch.healthy_at is None
    actuator.scale("tiny", 1)  # the next decision replaces it
    assert len(launches(store)) == 2
    wait_for(lambda: actuator.current("tiny") == 0)


def test_unknown_model_and_bad_count_are_refused(store, tmp_path) -> None:
    actuator = LocalActuator(store, {}, log_dir=tmp_path)
    with pytest.raises(ActuatorError, match="scaling_model_dirs"):
        actuator.scale("nope", 1)
    with pytest.raises(ValueError):
        actuator.scale("nope", -1)
    assert launches(store) == []
