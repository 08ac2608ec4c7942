"""The fp32 encoders (NumPy and ONNX Runtime) give the reference model's embeddings.

The reference is the same checkpoint run by transformers + torch, which live only in the
vLLM venv (the app venv has no torch), so it runs there as a subprocess. The int8 encoder
is checked against the fp32 ones in ``test_onnx_encoder.py``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from services.embeddings import ENCODER_KINDS, bundled_model_dir, default_encoder

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"

SENTENCES = [
    "How do I reset my password?",
    "How can I change my password?",
    "What is the capital of France?",
    "",
    "A much longer sentence " * 40,  # past the 256-token limit: truncated the same way
    "Ünïcödé and emoji 🚀 and numbers 3.14159",
]

REFERENCE = """
import json, sys, torch
from transformers import AutoModel, AutoTokenizer
path, sentences = sys.argv[1], json.loads(sys.stdin.read())
tok = AutoTokenizer.from_pretrained(path)
model = AutoModel.from_pretrained(path).eval()
batch = tok(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
with torch.no_grad():
    hidden = model(**batch).last_hidden_state
mask = batch["attention_mask"][..., None].float()
pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
print(json.dumps(pooled.tolist()))
"""


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    result = subprocess.run(
        [str(VLLM_PYTHON), "-c", REFERENCE, str(bundled_model_dir())],
        input=json.dumps(SENTENCES), capture_output=True, text=True, check=True, timeout=300,
    )
    return np.array(json.loads(result.stdout.strip().splitlines()[-1]), dtype=np.float32)


@pytest.mark.parametrize("kind", ["numpy", "onnx-fp32"])
def test_matches_the_reference_implementation(reference: np.ndarray, kind: str) -> None:
    ours = default_encoder(kind).encode(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384)
    assert np.abs(ours - reference).max() < 1e-4


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_batched_and_single_encodings_agree(kind: str) -> None:
    encoder = default_encoder(kind)
    batch = encoder.encode(SENTENCES[:3], batch_size=2)
    for row, sentence in zip(batch, SENTENCES[:3], strict=True):
        assert np.allclose(row, encoder.encode_one(sentence), atol=1e-5)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_paraphrases_are_closer_than_unrelated_questions(kind: str) -> None:
    a, b, c = default_encoder(kind).encode(SENTENCES[:3])
    assert a @ b > 0.8 > 0.2 > a @ c
