"""The cross-encoder verifier's data: which QQP pairs it learns from, which calibrate it.

Three disjoint parts of one pairs file, each chosen by a hash rule so that the training
script, the calibration and the benchmark agree without sharing state:

- **evaluation**: the pairs outside ``corpus.SPLIT_RULE``'s training half. Nothing here
  ever sees them; ``bench/semantic_cache.py`` measures on them.
- **calibration**: the training-half pairs with ``int(digest[8:16], 16) % 5 == 0`` (a
  fifth). The cross-encoder never trains on them; its threshold is chosen on them.
- **fine-tune**: the rest of the training half, plus synthetic hard negatives made from
  their texts only (``augment.hard_negatives``: a number changed, a negation flipped, a
  name swapped), because Quora's pairs rarely teach those.

``write_training_file`` writes the fine-tune examples as JSON lines for the training
script (``scripts/train_cross_encoder.py``, run in the PyTorch environment).

The shipped model is a small student distilled from a six-layer teacher:
``distillation_examples`` adds, to the fine-tune examples, the pairs the cache would put
before the verifier (each fine-tune text and its nearest other fine-tune texts by the
static vectors, unlabelled), and the teacher's logit on every example.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from services.caching.semantic.augment import DEFAULT_KINDS, hard_negatives
from services.caching.semantic.corpus import Pair, is_training_pair, load_pairs

CALIBRATION_RULE = ("calibration pair iff training pair and "
                    "int(sha256(text_a + '\\n' + text_b)[8:16], 16) % 5 == 0")
HARD_NEGATIVES_PER_KIND = 600


def is_calibration_pair(pair: Pair) -> bool:
    return is_training_pair(pair) and int(pair.digest[8:16], 16) % 5 == 0


def split(pairs: Sequence[Pair]) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(fine-tune, calibration, evaluation) parts of ``pairs``."""
    fine_tune = [p for p in pairs if is_training_pair(p) and not is_calibration_pair(p)]
    calibration = [p for p in pairs if is_calibration_pair(p)]
    evaluation = [p for p in pairs if not is_training_pair(p)]
    return fine_tune, calibration, evaluation


def fine_tune_examples(pairs: Sequence[Pair], *,
                       per_kind: int = HARD_NEGATIVES_PER_KIND) -> list[dict[str, object]]:
    """Real fine-tune pairs then synthetic hard negatives, as ``{a, b, label, kind}``."""
    rows: list[dict[str, object]] = [
        {"a": p.text_a, "b": p.text_b, "label": p.label, "kind": "qqp"} for p in pairs]
    texts = sorted({t for p in pairs for t in (p.text_a, p.text_b)})
    for original, altered, kind in hard_negatives(texts, per_kind=per_kind, kinds=DEFAULT_KINDS):
        rows.append({"a": original, "b": altered, "label": 0, "kind": kind})
    return rows


def write_training_file(pairs_path: Path, out: Path, *,
                        per_kind: int = HARD_NEGATIVES_PER_KIND) -> dict[str, int]:
    """Write the fine-tune examples of ``pairs_path`` to ``out`` (JSON lines)."""
    fmt, pairs = load_pairs(pairs_path)
    if fmt != "qqp":
        raise ValueError(f"{pairs_path}: the cross-encoder trains on labelled (QQP) pairs")
    fine_tune, calibration, evaluation = split(pairs)
    rows = fine_tune_examples(fine_tune, per_kind=per_kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"fine_tune_pairs": len(fine_tune), "calibration_pairs": len(calibration),
            "evaluation_pairs": len(evaluation), "hard_negatives": len(rows) - len(fine_tune),
            "examples": len(rows)}


NEIGHBOURS_PER_TEXT = 2


def neighbour_pairs(texts: Sequence[str], vectors: np.ndarray, *,
                    per_text: int = NEIGHBOURS_PER_TEXT, chunk: int = 2048
                    ) -> list[tuple[str, str]]:
    """Each text with its ``per_text`` nearest others (``vectors`` normalised rows), as
    the candidate stage would propose them; each unordered pair once, in text order."""
    seen: set[tuple[int, int]] = set()
    for start in range(0, len(texts), chunk):
        scores = vectors[start : start + chunk] @ vectors.T
        for row, i in enumerate(range(start, min(start + chunk, len(texts)))):
            scores[row, i] = -np.inf
        nearest = np.argpartition(-scores, per_text, axis=1)[:, :per_text]
        for row, found in enumerate(nearest):
            i = start + row
            seen.update((min(i, int(j)), max(i, int(j))) for j in found
                        if texts[int(j)] != texts[i])
    return [(texts[i], texts[j]) for i, j in sorted(seen)]


def distillation_examples(pairs: Sequence[Pair], teacher: Callable[[list[tuple[str, str]]],
                                                                   np.ndarray],
                          embed: Callable[[Sequence[str]], np.ndarray], *,
                          per_kind: int = HARD_NEGATIVES_PER_KIND,
                          per_text: int = NEIGHBOURS_PER_TEXT) -> list[dict[str, object]]:
    """The fine-tune examples plus the unlabelled neighbour pairs of their texts (label
    None, kind "neighbour"), each with the teacher's logit (``teacher``: pairs to
    logits, NaN for a pair it cannot judge; ``embed``: texts to normalised vectors, the
    cache's candidate stage). A neighbour pair without a logit is left out."""
    rows = fine_tune_examples(pairs, per_kind=per_kind)
    known = {(r["a"], r["b"]) for r in rows} | {(r["b"], r["a"]) for r in rows}
    texts = sorted({t for p in pairs for t in (p.text_a, p.text_b)})
    rows += [{"a": a, "b": b, "label": None, "kind": "neighbour"}
             for a, b in neighbour_pairs(texts, embed(texts), per_text=per_text)
             if (a, b) not in known]
    logits = teacher([(str(r["a"]), str(r["b"])) for r in rows])
    for row, z in zip(rows, logits.tolist(), strict=True):
        row["teacher"] = None if np.isnan(z) else round(float(z), 4)
    return [r for r in rows if r["label"] is not None or r["teacher"] is not None]
