#!/usr/bin/env bash
# Reproduce the shipped cross-encoder verifier (services/caching/semantic/cross_encoder.*)
# from the QQP dev pairs, with a fixed seed:
#   scripts/build_cross_encoder.sh [PAIRS] [WORKDIR]
# The shipped model is a three-layer student distilled from a six-layer teacher:
# 1. the app venv writes the fine-tune examples (training half minus the calibration
#    fifth, plus synthetic hard negatives);
# 2. the PyTorch venv (.venv-vllm: CPU torch + transformers) fine-tunes all-MiniLM-L6-v2
#    as the teacher: seed 17, 2 epochs (616 steps of 32 pairs, batches of similar
#    length), learning rate 5e-5, embeddings and the two lower layers frozen, one thread
#    (the result depends on the thread count); 30 minutes at load 6-15;
# 3. the app venv builds the teacher's int8 graph and its combiner on the MiniLM cosine
#    (in WORK/teacher, not shipped);
# 4. the app venv writes the student's examples: the fine-tune examples plus each
#    fine-tune text's two nearest others by the static vectors (unlabelled), each with the
#    teacher's combined log-odds (its logit and the MiniLM cosine), so that the student
#    learns what both decide and a lookup needs no MiniLM pass;
# 5. the PyTorch venv trains the student: layers 0, 2 and 4 of all-MiniLM-L6-v2, seed 17,
#    2 epochs (1,760 steps of 32), learning rate 8e-5, only the embeddings frozen, target
#    the mean of the label and the teacher's probability, two threads; 22 minutes at
#    load 2-4;
# 6. the app venv builds the shipped int8 graph from the student, checks it against
#    PyTorch's logits and calibrates the thresholds on the calibration pairs (both
#    combiners: MiniLM cosine and static cosine).
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-../shared/data/cache/qqp_pairs_dev.json}
WORK=${2:-$(mktemp -d /tmp/cross-encoder.XXXXXX)}
TORCH_PYTHON=${TORCH_PYTHON:-.venv-vllm/bin/python}
SEED=${SEED:-17}
MODEL_DIR=$(.venv/bin/python -c "from services.embeddings import bundled_model_dir; print(bundled_model_dir())")
BUILD=(.venv/bin/python -m services.caching.semantic.cross_build --pairs "$PAIRS")
"${BUILD[@]}" --examples-out "$WORK/examples.jsonl"
"$TORCH_PYTHON" scripts/train_cross_encoder.py --examples "$WORK/examples.jsonl" \
    --model-dir "$MODEL_DIR" --out "$WORK/teacher-weights" --seed "$SEED" --epochs 2 \
    --max-length 96 --freeze-layers 2 --lr 5e-5 --threads 1
"${BUILD[@]}" --trained "$WORK/teacher-weights" --out-dir "$WORK/teacher" --target-precision 0.95
"${BUILD[@]}" --examples-out "$WORK/student.jsonl" \
    --distill-from "$WORK/teacher/cross_encoder.onnx" "$WORK/teacher/cross_encoder.json"
"$TORCH_PYTHON" scripts/train_cross_encoder.py --examples "$WORK/student.jsonl" \
    --model-dir "$MODEL_DIR" --out "$WORK/student-weights" --seed "$SEED" --layers 0,2,4 \
    --teacher-weight 0.5 --epochs 2 --max-length 96 --freeze-layers 0 --lr 8e-5 --threads 2
"${BUILD[@]}" --trained "$WORK/student-weights" --teacher "$WORK/teacher/cross_encoder.json" \
    --target-precision 0.95
# the same model's combiner on the static cosine (cross-encoder-static: no MiniLM pass)
"${BUILD[@]}" --recalibrate --cosine static --target-precision 0.95
echo "built services/caching/semantic/cross_encoder.onnx, cross_encoder.json and" \
    "cross_encoder_static.json (work: $WORK)"
