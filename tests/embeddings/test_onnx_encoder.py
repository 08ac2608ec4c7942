"""The ONNX Runtime encoders: the int8 model stays within the fidelity the semantic cache
is calibrated for (cosine >= 0.99 to fp32 on every sentence), and the graph is built
deterministically from the bundled weights."""

from __future__ import annotations

import numpy as np
import pytest

from services.embeddings import bundled_model_dir, default_encoder
from services.embeddings.onnx_graph import (
    build_minilm,
    dequantize_int8_blocks,
    quantize_int8_blocks,
)

# questions like the cache's traffic: numbers, negations, names, long and short, non-ASCII
SENTENCES = [
    "How do I reset my password?",
    "What is the capital of France?",
    "Why is the sky blue?",
    "How much is 3 + 4 * 12?",
    "Which is better for a beginner, Python 3.12 or Java 21?",
    "I don't want to cancel my subscription, how do I pause it?",
    "Who was the president of the United States in 1984?",
    "What are the best books for physiology, anatomy and biochemistry?",
    "Can someone tell me: how do I learn machine learning if I already know statistics?",
    "Explain the difference between TCP and UDP. Please explain briefly.",
    "Was ist der Unterschied zwischen einem Hund und einer Katze?",
    "Ünïcödé and emoji 🚀 and numbers 3.14159",
    "ok",
    "",
    "A much longer sentence about caches, embeddings and latency " * 12,
]


@pytest.fixture(scope="module")
def fp32() -> np.ndarray:
    return default_encoder("numpy").encode(SENTENCES)


def test_int8_embeddings_stay_close_to_fp32(fp32: np.ndarray) -> None:
    int8 = default_encoder("onnx-int8").encode(SENTENCES)
    cosine = (int8 * fp32).sum(1)
    assert np.allclose(np.linalg.norm(int8, axis=1), 1, atol=1e-5)
    assert cosine.min() >= 0.99, cosine
    assert cosine.mean() >= 0.999, cosine


def test_int8_keeps_the_neighbour_order(fp32: np.ndarray) -> None:
    int8 = default_encoder("onnx-int8").encode(SENTENCES)
    for row in range(len(SENTENCES)):
        ref = np.argsort(-(fp32 @ fp32[row]))[:3]
        got = np.argsort(-(int8 @ int8[row]))[:3]
        assert ref[0] == got[0] == row or SENTENCES[row] == ""
        assert set(ref[:2]) == set(got[:2])


def test_block_quantization_round_trips_within_half_a_step() -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(128, 24)).astype(np.float32)
    weight[:, 3] = 0.0  # an all-zero block must not divide by zero
    codes, scales = quantize_int8_blocks(weight, block=64)
    assert codes.shape == (24, 2, 64) and codes.dtype == np.uint8 and scales.shape == (48,)
    step = np.repeat(scales.reshape(24, 2), 64, axis=1).T  # (K, N): each weight's step
    assert np.all(np.abs(dequantize_int8_blocks(codes, scales) - weight) <= step / 2 + 1e-7)
    with pytest.raises(ValueError, match="multiple of the block size"):
        quantize_int8_blocks(weight[:100], block=64)


def test_the_graph_is_built_deterministically() -> None:
    first = build_minilm(bundled_model_dir(), int8=True).SerializeToString()
    assert first == build_minilm(bundled_model_dir(), int8=True).SerializeToString()


def test_unknown_encoder_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown embedding encoder 'bert'"):
        default_encoder("bert")  # type: ignore[arg-type]


def test_token_states_average_to_the_sentence_embedding() -> None:
    encoder = default_encoder("onnx-int8")
    states = encoder.token_states(SENTENCES)
    pooled = encoder.encode(SENTENCES)
    assert len(states) == len(SENTENCES)
    for (ids, hidden), text, vector in zip(states, SENTENCES, pooled, strict=True):
        assert ids[0] == encoder._tokenizer.token_to_id("[CLS]"), text
        assert hidden.shape == (len(ids), encoder.dimension)
        mean = hidden.mean(axis=0)
        assert float(mean @ vector / np.linalg.norm(mean)) > 0.9999, text
