"""The static token table distilled from all-MiniLM-L6-v2: what ships is what the recipe
makes from the model, and its sentence vectors behave like sentence vectors."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from services.embeddings import StaticEncoder, default_encoder, default_static_encoder
from services.embeddings.static import RECIPE_PATH, TABLE_PATH


@pytest.fixture(scope="module")
def static() -> StaticEncoder:
    return default_static_encoder()


def test_the_shipped_table_is_small_and_recorded(static: StaticEncoder) -> None:
    assert TABLE_PATH.stat().st_size <= 8 * 10**6
    recipe = json.loads(RECIPE_PATH.read_text())
    with np.load(TABLE_PATH) as stored:
        rows = stored["rows"]
        assert rows.dtype == np.int8
        assert hashlib.sha256(rows.tobytes()).hexdigest() == recipe["sha256_rows"]
    assert rows.shape == (recipe["vocab"], recipe["dims"]) == (30522, static.dimension)
    assert static.name.startswith(f"all-MiniLM-L6-v2-static{static.dimension}-")
    assert len(static.name) <= 64  # the store's embedding_model column


def test_rows_are_the_recipe_applied_to_the_model(static: StaticEncoder) -> None:
    """Any row can be rebuilt from MiniLM's output for its token and the shipped
    projection. ONNX Runtime's int8 kernels round differently by CPU: where the table
    was built the rebuilt rows matched to its int8 rounding, on an AVX2-only AMD EPYC
    they are at cosine 0.998-0.99997 and up to 7 int8 steps away. So the rebuilt rows
    are held to the stored ones' direction and length: a wrong projection turns the
    direction, a wrong weight changes the length."""
    ids = np.array([1996, 2003, 4083, 7592, 12345, 29000])  # the, is, ... rare pieces
    states = default_encoder("onnx-int8").single_token_states(ids)
    expected = static.projection.rows(states, ids)
    got = static._table[ids]
    norms = np.linalg.norm(got, axis=1), np.linalg.norm(expected, axis=1)
    cosines = np.sum(got * expected, axis=1) / (norms[0] * norms[1])
    assert np.all(cosines >= 0.998), cosines
    assert np.allclose(norms[0] / norms[1], 1, atol=0.01), norms


def test_vectors_are_deterministic_and_unit_norm(static: StaticEncoder) -> None:
    texts = ["How do I reset my password?", "what is 2+2", "Ünïcödé façade ☃"]
    a = static.encode(texts)
    b = StaticEncoder().encode(texts)  # a second load of the table
    assert a.dtype == np.float32 and a.shape == (3, static.dimension)
    assert np.array_equal(a, b)
    assert np.array_equal(a[0], static.encode_one(texts[0]))
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_a_text_without_word_pieces_is_the_zero_vector(static: StaticEncoder) -> None:
    vector = static.encode_one("")
    assert not np.isnan(vector).any() and not vector.any()


def test_similar_questions_are_closer_than_unrelated_ones(static: StaticEncoder) -> None:
    v = static.encode([
        "How can I lose weight quickly?",
        "What is the fastest way to lose weight?",
        "What are the symptoms of diabetes?",
        "What are the signs of diabetes?",
        "How do I change a flat bicycle tyre?",
    ])
    sims = v @ v.T
    assert sims[0, 1] > max(sims[0, 2], sims[0, 3], sims[0, 4])
    assert sims[2, 3] > max(sims[2, 0], sims[2, 1], sims[2, 4])
