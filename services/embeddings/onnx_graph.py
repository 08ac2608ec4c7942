"""all-MiniLM-L6-v2 as an ONNX graph, built from the bundled safetensors weights.

No exporter and no torch: the graph is written node by node with ``onnx.helper``, the
same BERT forward as the NumPy reference (``minilm.py``), using ONNX Runtime's fused CPU
kernels where they exist (``SkipLayerNormalization`` = bias + residual + LayerNorm,
``BiasGelu`` = bias + exact GELU). With ``int8=True`` the four projections of each layer
become ``MatMulNBits`` nodes: weights quantized symmetrically to int8 in blocks of
``BLOCK`` input rows (one scale per block and output column), activations quantized per
block inside the kernel (``accuracy_level=4``, integer dot products on AVX-512 VNNI/AVX2).
Building is deterministic: the same weights give byte-identical models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

BLOCK = 64  # int8 weight block; measured: 32 / 64 / 128 give mean cosine 0.9997 / 0.9996 / 0.9993
MS = "com.microsoft"


def quantize_int8_blocks(weight: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` (K, N) for ``x @ weight`` -> MatMulNBits' uint8 (N, K/block, block) codes
    (zero point 128) and float32 (N * K/block) scales."""
    k, n = weight.shape
    if k % block:
        raise ValueError(f"input size {k} is not a multiple of the block size {block}")
    blocks = np.ascontiguousarray(weight.T, dtype=np.float32).reshape(n, k // block, block)
    absmax = np.abs(blocks).max(-1)
    scales = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(blocks / scales[..., None]), -127, 127) + 128
    return codes.astype(np.uint8), scales.reshape(-1)


def dequantize_int8_blocks(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The (K, N) weight MatMulNBits computes with; inverse of ``quantize_int8_blocks``."""
    n, blocks, block = codes.shape
    values = (codes.astype(np.float32) - 128) * scales.reshape(n, blocks, 1)
    return values.reshape(n, blocks * block).T


class _Graph:
    """Collects nodes and initializers; each method returns its output's name."""

    def __init__(self, *, int8: bool) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.int8 = int8

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, domain: str = "", **attrs: object) -> str:
        out = f"{op_type}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], domain=domain, **attrs))
        return out

    def project(self, x: str, name: str, weight: np.ndarray) -> str:
        """``x @ weight`` with ``weight`` of shape (K, N)."""
        if not self.int8:
            return self.op("MatMul", x, self.const(name, weight.astype(np.float32)))
        codes, scales = quantize_int8_blocks(weight)
        k, n = weight.shape
        return self.op("MatMulNBits", x, self.const(name + ".codes", codes),
                       self.const(name + ".scales", scales), domain=MS, K=k, N=n, bits=8,
                       block_size=BLOCK, accuracy_level=4)


def build_minilm(model_dir: Path, *, int8: bool) -> onnx.ModelProto:
    """Inputs ``input_ids`` (int64, batch x length) and ``attention_bias`` (float32,
    batch x 1 x 1 x length: 0 for tokens, -1e9 for padding); output ``hidden``."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden = int(config["hidden_size"])
    w = load_file(str(model_dir / "model.safetensors"))
    g = _Graph(int8=int8)
    word = g.op("Gather", g.const("word", w["embeddings.word_embeddings.weight"]), "input_ids")
    segment = g.const("token_type", w["embeddings.token_type_embeddings.weight"][0])
    x = _encoder(g, w, config, word, segment)
    g.nodes.append(helper.make_node("Identity", [x], ["hidden"]))
    graph = helper.make_graph(
        g.nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
         helper.make_tensor_value_info("attention_bias", TensorProto.FLOAT,
                                       ["batch", 1, 1, "length"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "length", hidden])],
        g.initializers,
    )
    return _model(graph)


def build_pair_classifier(model_dir: Path, *, max_positions: int = 128) -> onnx.ModelProto:
    """A fine-tuned BERT pair classifier (``BertForSequenceClassification``, one logit)
    as an int8 graph small enough to ship: projections as ``MatMulNBits``, the word
    embedding table as uint8 rows with one scale per row (gathered, then dequantised),
    positions, segments and the head in float32.

    Inputs ``input_ids`` and ``token_type_ids`` (int64, batch x length) and
    ``attention_bias`` (as ``build_minilm``); output ``logits`` (batch): the logit of
    "same question" from the [CLS] token through the pooler and the classifier.
    Only the first ``max_positions`` position embeddings are kept (inputs are no longer).
    """
    config = json.loads((model_dir / "config.json").read_text())
    w = load_file(str(model_dir / "model.safetensors"))
    w = {k.removeprefix("bert."): v for k, v in w.items()}
    positions = "embeddings.position_embeddings.weight"
    w[positions] = np.ascontiguousarray(w[positions][:max_positions])
    g = _Graph(int8=True)
    table = w["embeddings.word_embeddings.weight"].astype(np.float32)
    absmax = np.abs(table).max(1)
    row_scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    codes = (np.clip(np.rint(table / row_scale[:, None]), -127, 127) + 128).astype(np.uint8)
    gathered = g.op("Cast", g.op("Gather", g.const("word.codes", codes), "input_ids"),
                    to=TensorProto.FLOAT)
    scales = g.op("Unsqueeze", g.op("Gather", g.const("word.scales", row_scale), "input_ids"),
                  g.const("last", np.array([-1], np.int64)))
    word = g.op("Mul", g.op("Sub", gathered, g.const("word.zero", np.array(128, np.float32))),
                scales)
    segment = g.op("Gather", g.const("token_type", w["embeddings.token_type_embeddings.weight"]),
                   "token_type_ids")
    x = _encoder(g, w, config, word, segment)
    cls = g.op("Gather", x, "zero", axis=1)  # the [CLS] row
    pooler = g.const("pooler.w", np.ascontiguousarray(w["pooler.dense.weight"].T))
    pooled = g.op("Tanh", g.op("Add", g.op("MatMul", cls, pooler),
                               g.const("pooler.b", w["pooler.dense.bias"])))
    head = g.const("classifier.w", np.ascontiguousarray(w["classifier.weight"].T))
    logit = g.op("Add", g.op("MatMul", pooled, head), g.const("classifier.b", w["classifier.bias"]))
    squeeze = g.const("squeeze", np.array([1], np.int64))
    g.nodes.append(helper.make_node("Squeeze", [logit, squeeze], ["logits"]))
    graph = helper.make_graph(
        g.nodes, "minilm-pair-classifier",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
         helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "length"]),
         helper.make_tensor_value_info("attention_bias", TensorProto.FLOAT,
                                       ["batch", 1, 1, "length"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch"])],
        g.initializers,
    )
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(MS, 1)])
    model.ir_version = 9
    return model


def _encoder(g: _Graph, w: dict[str, np.ndarray], config: dict[str, object], word: str,
             segment: str) -> str:
    """Embeddings (word + position + segment, LayerNorm) and the transformer layers;
    returns the last hidden state's name. ``word`` and ``segment`` are the looked-up
    (or constant) embedding rows."""
    hidden, heads = int(str(config["hidden_size"])), int(str(config["num_attention_heads"]))
    eps = float(str(config["layer_norm_eps"]))
    e = "embeddings."
    one = g.const("one", np.array(1, np.int64))
    length = g.op("Gather", g.op("Shape", "input_ids"), one)
    positions = g.op("Range", g.const("zero", np.array(0, np.int64)), length, one)
    x = g.op("Add", word,
             g.op("Gather", g.const("position", w[e + "position_embeddings.weight"]), positions))
    x = g.op("Add", x, segment)
    x = g.op("LayerNormalization", x, g.const("ln.g", w[e + "LayerNorm.weight"]),
             g.const("ln.b", w[e + "LayerNorm.bias"]), axis=-1, epsilon=eps)
    head_dim = hidden // heads
    split_heads = g.const("split_heads", np.array([0, 0, 3, heads, head_dim], np.int64))
    merge_heads = g.const("merge_heads", np.array([0, 0, hidden], np.int64))
    scale = g.const("scale", np.array(1 / np.sqrt(head_dim), np.float32))
    first = g.const("first", np.array([0], np.int64))

    def skip_norm(out: str, residual: str, prefix: str, bias: str) -> str:
        return g.op("SkipLayerNormalization", out, residual,
                    g.const(prefix + "g", w[prefix + "LayerNorm.weight"]),
                    g.const(prefix + "b", w[prefix + "LayerNorm.bias"]),
                    g.const(bias, w[bias]), domain=MS, epsilon=eps)

    for i in range(int(str(config["num_hidden_layers"]))):
        p = f"encoder.layer.{i}."
        a = p + "attention."
        names = ("query", "key", "value")
        wqkv = np.concatenate([w[f"{a}self.{n}.weight"].T for n in names], axis=1)
        bqkv = np.concatenate([w[f"{a}self.{n}.bias"] for n in names])
        qkv = g.op("Add", g.project(x, p + "qkv", wqkv), g.const(p + "qkv.bias", bqkv))
        qkv = g.op("Transpose", g.op("Reshape", qkv, split_heads), perm=[2, 0, 3, 1, 4])
        split = f"{p}split"
        g.nodes.append(helper.make_node("Split", [qkv], [f"{split}.q", f"{split}.k", f"{split}.v"],
                                        axis=0, num_outputs=3))
        q, k, v = (g.op("Squeeze", f"{split}.{n}", first) for n in "qkv")
        scores = g.op("MatMul", g.op("Mul", q, scale), g.op("Transpose", k, perm=[0, 1, 3, 2]))
        probs = g.op("Softmax", g.op("Add", scores, "attention_bias"), axis=-1)
        context = g.op("Reshape", g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3]),
                       merge_heads)
        out = g.project(context, a + "output.dense", w[a + "output.dense.weight"].T)
        x = skip_norm(out, x, a + "output.", a + "output.dense.bias")
        inner = g.op("BiasGelu", g.project(x, p + "intermediate",
                                           w[p + "intermediate.dense.weight"].T),
                     g.const(p + "intermediate.bias", w[p + "intermediate.dense.bias"]), domain=MS)
        out = g.project(inner, p + "output.dense", w[p + "output.dense.weight"].T)
        x = skip_norm(out, x, p + "output.", p + "output.dense.bias")
    return x
