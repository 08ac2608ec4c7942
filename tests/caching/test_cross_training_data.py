"""The cross-encoder student's training data: neighbour pairs and distillation rows (no
model runs here: the teacher and the encoder are stand-ins with the same shapes, the rows
are checked for what they must hold)."""

from __future__ import annotations

import json

import numpy as np

from services.caching.semantic.corpus import Pair
from services.caching.semantic.cross_data import distillation_examples, neighbour_pairs


def unit_rows(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_neighbour_pairs_are_each_texts_nearest_others_once_and_never_itself() -> None:
    texts = ["a", "b", "c", "d"]
    vectors = unit_rows([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99]])
    assert neighbour_pairs(texts, vectors, per_text=1) == [("a", "b"), ("c", "d")]
    # a chunk boundary between a text and its neighbour changes nothing
    assert neighbour_pairs(texts, vectors, per_text=1, chunk=1) == [("a", "b"), ("c", "d")]
    two = neighbour_pairs(texts, vectors, per_text=2)
    assert all(a != b for a, b in two) and len(set(two)) == len(two)


def test_distillation_rows_carry_the_teachers_logit_and_drop_unjudged_neighbours() -> None:
    pairs = [Pair("How do I learn Python quickly?", "How can I learn Python fast?", 1),
             Pair("What is the capital of France?", "What is the capital of Spain?", 0),
             Pair("Why is the sky blue?", "What makes the sky look blue?", 1)]
    seen: list[tuple[str, str]] = []

    def teacher(batch: list[tuple[str, str]]) -> np.ndarray:
        seen.extend(batch)
        # the teacher cannot judge pairs that mention Spain (NaN: too long for its window)
        return np.array([np.nan if "Spain" in a + b else 1.5 for a, b in batch])

    def embed(texts):
        return unit_rows([[len(t), i + 1.0] for i, t in enumerate(texts)])

    rows = distillation_examples(pairs, teacher, embed, per_kind=1, per_text=1)
    assert {(r["a"], r["b"]) for r in rows} <= set(seen)  # the teacher saw every row
    labelled = [r for r in rows if r["label"] is not None]
    assert {(r["a"], r["b"]) for r in labelled if r["kind"] == "qqp"} == {
        (p.text_a, p.text_b) for p in pairs}
    neighbours = [r for r in rows if r["kind"] == "neighbour"]
    assert neighbours and all(r["label"] is None and r["teacher"] == 1.5 for r in neighbours)
    # a labelled row the teacher could not judge stays, trained on its label alone
    spain = next(r for r in rows if r["kind"] == "qqp" and "Spain" in str(r["b"]))
    assert spain["teacher"] is None and spain["label"] == 0
    # no neighbour repeats a labelled pair, in either order
    known = {(r["a"], r["b"]) for r in labelled} | {(r["b"], r["a"]) for r in labelled}
    assert not any((r["a"], r["b"]) in known for r in neighbours)
    json.dumps(rows)  # the training script reads them as JSON lines
