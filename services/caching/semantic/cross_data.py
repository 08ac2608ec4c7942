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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

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
