"""The vLLM command line, environment and process handling, without vLLM or a GPU.

A fake interpreter (a small Python script standing in for ``.venv-vllm/bin/python``)
plays the server, so start/ready/stop, the fail-fast path and the process-group kill are
exercised for real in well under a minute.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from services.workers import (
    VllmWorker,
    WorkerStartError,
    build_vllm_command,
    detect_gpus,
    free_port,
    vllm_env,
)
from services.workers.launcher import DEFAULT_MAX_MODEL_LEN


def _model_dir(tmp_path: Path, name: str = "my-model", max_pos: int | None = 2048) -> Path:
    model = tmp_path / name
    model.mkdir()
    config = {"model_type": "llama"}
    if max_pos is not None:
        config["max_position_embeddings"] = max_pos
    (model / "config.json").write_text(json.dumps(config))
    return model


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_cpu_command(tmp_path: Path) -> None:
    model = _model_dir(tmp_path)
    cmd = build_vllm_command(model, port=8123, gpu_count=0, python="/venv/bin/python")

    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(cmd, "--model") == str(model)
    assert _flag(cmd, "--served-model-name") == "my-model"
    assert _flag(cmd, "--host") == "127.0.0.1"
    assert _flag(cmd, "--port") == "8123"
    assert _flag(cmd, "--dtype") == "bfloat16"
    assert _flag(cmd, "--max-model-len") == "2048"  # the model's own limit, below the default
    assert "--enforce-eager" in cmd
    assert "--enable-prefix-caching" in cmd
    assert "--tensor-parallel-size" not in cmd
    assert "--gpu-memory-utilization" not in cmd


def test_gpu_command_uses_every_gpu(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, max_pos=131072)
    cmd = build_vllm_command(
        model, port=9000, host="0.0.0.0", gpu_count=4, served_model_name="llama-70b"
    )

    assert _flag(cmd, "--tensor-parallel-size") == "4"
    assert _flag(cmd, "--gpu-memory-utilization") == "0.9"
    assert _flag(cmd, "--dtype") == "auto"
    assert _flag(cmd, "--served-model-name") == "llama-70b"
    assert _flag(cmd, "--host") == "0.0.0.0"
    assert _flag(cmd, "--max-model-len") == str(DEFAULT_MAX_MODEL_LEN)
    assert "--enforce-eager" not in cmd
    assert "--enable-prefix-caching" in cmd


def test_command_options_and_overrides(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, max_pos=None)
    cmd = build_vllm_command(model, port=1, gpu_count=0)
    assert "--max-model-len" not in cmd  # unknown limit: leave it to vLLM
    assert "--disable-uvicorn-access-log" in cmd

    cmd = build_vllm_command(
        model,
        port=1,
        gpu_count=0,
        max_model_len=512,
        dtype="float32",
        access_log=True,
        extra_args=["--max-num-seqs", "8"],
    )
    assert _flag(cmd, "--max-model-len") == "512"
    assert _flag(cmd, "--dtype") == "float32"
    assert "--disable-uvicorn-access-log" not in cmd
    assert cmd[-2:] == ["--max-num-seqs", "8"]  # last, so they override earlier choices

    with pytest.raises(ValueError):
        build_vllm_command(model, port=1, gpu_count=-1)


def test_env_for_cpu_and_gpu() -> None:
    cpu = vllm_env(0, kvcache_gib=3, cpu_threads="0-1", base={"PATH": "/bin"})
    assert cpu["PATH"] == "/bin"
    assert cpu["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert cpu["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert cpu["HF_HUB_OFFLINE"] == "1"

    default_bind = vllm_env(0, base={})["VLLM_CPU_OMP_THREADS_BIND"]
    assert default_bind.replace("-", ",").replace(",", "").isdigit()

    gpu = vllm_env(2, base={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert gpu["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "VLLM_CPU_KVCACHE_SPACE" not in gpu
    assert "VLLM_CPU_OMP_THREADS_BIND" not in gpu


def test_detect_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == 0  # no nvidia-smi at all

    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'echo "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-aaaa)"\n'
        'echo "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-bbbb)"\n'
    )
    smi.chmod(0o755)
    assert detect_gpus() == 2

    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert detect_gpus() == 0


def test_free_port_can_be_served_on() -> None:
    port = free_port()
    assert 1024 < port < 65536
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))  # raises if another socket holds it
        server.listen(1)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"ping")
                assert accepted.recv(4) == b"ping"


# --- process handling, with a fake interpreter -------------------------------------------

_FAKE_SERVER = """
    import http.server, os, subprocess, sys, time

    args = sys.argv[1:]
    assert args[:2] == ["-m", "vllm.entrypoints.openai.api_server"], args
    port = int(args[args.index("--port") + 1])
    # a grandchild in the same process group, like vLLM's engine-core process
    child = subprocess.Popen(["sleep", "300"])
    with open(os.environ["FAKE_CHILD_PID_FILE"], "w") as f:
        f.write(str(child.pid))
    print("fake vLLM starting", flush=True)
    time.sleep(1.0)  # not ready at once: wait_ready must poll

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *a):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def _fake_python(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return script


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is dead for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_worker_lifecycle_and_group_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.workers.launcher")
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("FAKE_CHILD_PID_FILE", str(pid_file))
    worker = VllmWorker(
        _model_dir(tmp_path),
        python=_fake_python(tmp_path, _FAKE_SERVER),
        gpu_count=0,
        log_path=tmp_path / "logs" / "vllm.log",
        startup_timeout_s=30,
    )
    assert worker.pid is None and not worker.is_running()
    assert worker.base_url == f"http://127.0.0.1:{worker.port}"
    assert worker.served_model_name == "my-model"

    with worker:
        assert worker.is_running()
        assert httpx.get(f"{worker.base_url}/health").status_code == 200
        child = int(pid_file.read_text())
        assert _alive(child)
        assert "fake vLLM starting" in worker.log_tail()
    started = [r.getMessage() for r in caplog.records if "starting vLLM" in r.getMessage()]
    assert started and "--enforce-eager" in started[0] and "threads" in started[0]
    assert not worker.is_running() and worker.pid is None
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the grandchild must die with the process group"
    assert worker.stop() is None  # idempotent


def test_worker_fails_fast_with_log_tail(tmp_path: Path) -> None:
    crash = """
        import sys
        print("loading model ...")
        print("RuntimeError: no kernel for this CPU", file=sys.stderr)
        sys.exit(3)
    """
    worker = VllmWorker(
        _model_dir(tmp_path),
        python=_fake_python(tmp_path, crash),
        gpu_count=0,
        log_path=tmp_path / "vllm.log",
        startup_timeout_s=120,
    )
    started = time.monotonic()
    with pytest.raises(WorkerStartError) as info:
        with worker:
            pass
    assert time.monotonic() - started < 30  # did not wait out the timeout
    assert "code 3" in str(info.value)
    assert "no kernel for this CPU" in str(info.value)
    assert not worker.is_running()


def test_worker_timeout_then_sigkill(tmp_path: Path) -> None:
    stubborn = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("never ready", flush=True)
        time.sleep(300)
    """
    worker = VllmWorker(
        _model_dir(tmp_path),
        python=_fake_python(tmp_path, stubborn),
        gpu_count=0,
        log_path=tmp_path / "vllm.log",
        stop_grace_s=1.0,
    )
    worker.start()
    try:
        with pytest.raises(TimeoutError, match="never ready"):
            worker.wait_ready(timeout=2)
    finally:
        code = worker.stop()
    assert code == -signal.SIGKILL


def test_worker_refuses_missing_parts(tmp_path: Path) -> None:
    model = _model_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="setup_vllm_venv"):
        VllmWorker(model, python=tmp_path / "nope" / "python", gpu_count=0).start()
    with pytest.raises(FileNotFoundError, match="config.json"):
        VllmWorker(tmp_path / "empty", python=sys.executable, gpu_count=0).start()
    with pytest.raises(RuntimeError, match="before start"):
        VllmWorker(model, python=sys.executable, gpu_count=0).wait_ready(1)


def test_from_settings(tmp_path: Path) -> None:
    from services.settings import load_settings

    settings = load_settings(
        vllm_python=tmp_path / "py", vllm_cpu_kvcache_gib=5, vllm_startup_timeout_s=42
    )
    worker = VllmWorker.from_settings(settings, _model_dir(tmp_path), port=1234, gpu_count=0)
    assert worker.python == tmp_path / "py"
    assert worker.kvcache_gib == 5
    assert worker.startup_timeout_s == 42
    assert worker.port == 1234
    assert worker.command[0] == str(tmp_path / "py")


# --- GPU-aware command line, speculative decoding, draining ---------------------------


def test_detected_gpus_set_tensor_parallelism(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="services.workers.launcher")
    model = _model_dir(tmp_path)
    worker = VllmWorker(model, python=sys.executable, detect=lambda: 8,
                        speculative_config={"method": "ngram", "num_speculative_tokens": 4},
                        extra_args=["--max-num-seqs", "64"])
    cmd = worker.command
    assert worker.gpu_count == 8
    assert _flag(cmd, "--tensor-parallel-size") == "8"
    assert _flag(cmd, "--gpu-memory-utilization") == "0.9"
    assert "--enable-prefix-caching" in cmd and "--enforce-eager" not in cmd
    assert json.loads(_flag(cmd, "--speculative-config")) == {
        "method": "ngram", "num_speculative_tokens": 4
    }
    assert cmd[-2:] == ["--max-num-seqs", "64"]

    on_cpu = VllmWorker(model, python=sys.executable, detect=lambda: 0).command
    assert "--enforce-eager" in on_cpu and "--tensor-parallel-size" not in on_cpu
    assert "--speculative-config" not in on_cpu

    overridden = VllmWorker(model, python=sys.executable, gpu_count=2,
                            detect=lambda: pytest.fail("an explicit count skips detection"))
    assert _flag(overridden.command, "--tensor-parallel-size") == "2"


def test_settings_carry_speculation_and_extra_args(tmp_path: Path) -> None:
    from services.settings import load_settings

    settings = load_settings(
        vllm_speculative_config='{"method": "ngram", "prompt_lookup_max": 4}',
        vllm_extra_args="--max-num-seqs 32 --swap-space '4'",
    )
    worker = VllmWorker.from_settings(settings, _model_dir(tmp_path), gpu_count=1)
    cmd = worker.command
    assert json.loads(_flag(cmd, "--speculative-config"))["method"] == "ngram"
    assert cmd[-4:] == ["--max-num-seqs", "32", "--swap-space", "4"]


def test_cli_prints_the_command_line_for_a_gpu_override(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from services.cli import app

    model = _model_dir(tmp_path)
    result = CliRunner().invoke(
        app, ["worker", "--model", str(model), "--gpus", "4", "--port", "9001", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    cmd = result.output.split()
    assert _flag(cmd, "--tensor-parallel-size") == "4" and _flag(cmd, "--port") == "9001"
    refused = CliRunner().invoke(app, ["worker", "--model", str(model), "--gpus", "-1"])
    assert refused.exit_code != 0


_BUSY_SERVER = """
    import http.server, os, sys

    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    busy_file = os.environ["FAKE_BUSY_FILE"]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/metrics":
                running = open(busy_file).read().strip()
                body = (f"vllm:num_requests_running{{model_name=\\"m\\"}} {running}\\n"
                        "vllm:num_requests_waiting{model_name=\\"m\\"} 0.0\\n").encode()
            else:
                body = b""
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def test_drain_waits_until_vllm_has_no_request(tmp_path: Path, monkeypatch) -> None:
    busy = tmp_path / "busy"
    busy.write_text("2.0")
    monkeypatch.setenv("FAKE_BUSY_FILE", str(busy))
    worker = VllmWorker(_model_dir(tmp_path), python=_fake_python(tmp_path, _BUSY_SERVER),
                        gpu_count=0, log_path=tmp_path / "vllm.log")
    with worker:
        assert worker.requests_in_flight() == 2
        assert worker.drain(notice_s=0, timeout_s=0.5, poll_s=0.1) is False  # still busy
        threading.Timer(0.5, busy.write_text, ["0.0"]).start()
        assert worker.drain(notice_s=0, timeout_s=30, poll_s=0.1) is True
    assert worker.requests_in_flight() is None  # stopped: nothing to wait for
