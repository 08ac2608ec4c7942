"""vLLM workers: build the models they serve and start, watch and stop the processes.

vLLM runs in its own venv (``scripts/setup_vllm_venv.sh``) and is only ever a child
process spoken to over HTTP; nothing here imports torch, transformers or vllm.
"""

from services.workers.gemma import prepare_gemma
from services.workers.launcher import (
    VllmWorker,
    WorkerStartError,
    build_vllm_command,
    detect_gpus,
    free_port,
    vllm_env,
)
from services.workers.test_model import make_test_model

__all__ = [
    "VllmWorker",
    "WorkerStartError",
    "build_vllm_command",
    "detect_gpus",
    "free_port",
    "make_test_model",
    "prepare_gemma",
    "vllm_env",
]
