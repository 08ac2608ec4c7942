#!/usr/bin/env bash
# Reproduce the shipped cross-encoder verifier (services/caching/semantic/cross_encoder.*)
# from the QQP dev pairs, with a fixed seed:
#   scripts/build_cross_encoder.sh [PAIRS] [WORKDIR]
# 1. the app venv writes the fine-tune examples (training half minus the calibration
#    fifth, plus synthetic hard negatives);
# 2. the PyTorch venv (.venv-vllm: CPU torch + transformers) fine-tunes all-MiniLM-L6-v2
#    as a pair classifier: seed 17, schedule planned for 0.5 epoch (154 steps of 32
#    pairs), embeddings and the four lower layers frozen. The shipped model stopped at
#    its 30-minute budget after 43 steps (the shared machine gave it a tenth of a core);
#    --stop-after-steps 43 reproduces it, STEPS=154 runs the whole schedule;
# 3. the app venv builds the int8 ONNX graph, checks it against PyTorch's logits and
#    calibrates the threshold on the calibration pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-../shared/data/cache/qqp_pairs_dev.json}
WORK=${2:-$(mktemp -d /tmp/cross-encoder.XXXXXX)}
TORCH_PYTHON=${TORCH_PYTHON:-.venv-vllm/bin/python}
SEED=${SEED:-17}
MODEL_DIR=$(.venv/bin/python -c "from services.embeddings import bundled_model_dir; print(bundled_model_dir())")
.venv/bin/python -m services.caching.semantic.cross_build --pairs "$PAIRS" \
    --examples-out "$WORK/examples.jsonl"
"$TORCH_PYTHON" scripts/train_cross_encoder.py --examples "$WORK/examples.jsonl" \
    --model-dir "$MODEL_DIR" --out "$WORK/model" --seed "$SEED" --epochs 0.5 --max-length 96 \
    --freeze-layers 4 --threads 2 --stop-after-steps "${STEPS:-43}"
.venv/bin/python -m services.caching.semantic.cross_build --pairs "$PAIRS" \
    --trained "$WORK/model" --target-precision 0.95
echo "built services/caching/semantic/cross_encoder.onnx and cross_encoder.json (work: $WORK)"
