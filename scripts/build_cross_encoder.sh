#!/usr/bin/env bash
# Reproduce the shipped cross-encoder verifier (services/caching/semantic/cross_encoder.*)
# from the QQP dev pairs, with a fixed seed:
#   scripts/build_cross_encoder.sh [PAIRS] [WORKDIR]
# 1. the app venv writes the fine-tune examples (training half minus the calibration
#    fifth, plus synthetic hard negatives);
# 2. the PyTorch venv (.venv-vllm: CPU torch + transformers) fine-tunes all-MiniLM-L6-v2
#    as a pair classifier: seed 17, 2 epochs (616 steps of 32 pairs, batches of similar
#    length), learning rate 5e-5, embeddings and the two lower layers frozen, one thread
#    (the result depends on the thread count; two threads waiting on each other on a
#    busy machine also run slower than one); 1.2-3 s per step on a shared 2-core
#    machine, 30 minutes at load 6-15;
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
    --model-dir "$MODEL_DIR" --out "$WORK/model" --seed "$SEED" --epochs 2 --max-length 96 \
    --freeze-layers 2 --lr 5e-5 --threads 1
.venv/bin/python -m services.caching.semantic.cross_build --pairs "$PAIRS" \
    --trained "$WORK/model" --target-precision 0.95
# the same model's combiner on the static cosine (cross-encoder-static: no MiniLM pass)
.venv/bin/python -m services.caching.semantic.cross_build --pairs "$PAIRS" \
    --recalibrate --cosine static --target-precision 0.95
echo "built services/caching/semantic/cross_encoder.onnx, cross_encoder.json and" \
    "cross_encoder_static.json (work: $WORK)"
