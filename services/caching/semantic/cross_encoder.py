"""The cross-encoder verifier: a transformer that reads both questions together.

A verifier built on one bi-encoder's features tops out near 0.92 precision at recall
0.25 on Quora's pairs (docs/benchmarks.md): two embeddings computed apart cannot see
which words answer which. ``cross_encoder.onnx`` is a three-layer pair classifier
(layers 0, 2 and 4 of all-MiniLM-L6-v2) distilled from a six-layer one, all-MiniLM-L6-v2
fine-tuned on the training half of the QQP dev pairs plus synthetic hard negatives
(``cross_data.py``, ``scripts/build_cross_encoder.sh``): half the layers, about half the
CPU per pair, within 0.02 of its precision on held-out pairs. int8, run by ONNX Runtime on one
thread: no PyTorch in the app. ``cross_encoder.json`` next to it records its
training data, seed, calibrated threshold and scores.

A lookup is two-stage: the vector index proposes the nearest entries in the scope, and
``CrossEncoderVerifier.best`` decides. Cheap rules run first and refuse a candidate
without the model when a number, a negation or a named entity differs (the known false
hits of semantic caches, which Quora's pairs rarely teach); the same words in the same
order are the same question; the model scores the nearest ``model_k`` (shipped: 1) candidates
the rules let through, in one batch, and the most probable is the answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from services.caching.semantic.features import GUARDS, guard_refuses, same_words_key
from services.caching.semantic.index import Neighbor

MODEL_PATH = Path(__file__).with_name("cross_encoder.onnx")
SPEC_PATH = Path(__file__).with_name("cross_encoder.json")
# the combiner's cosine -> the calibration of the shipped model for it
COSINES = ("minilm", "static")
SPEC_PATHS = {"minilm": SPEC_PATH, "static": Path(__file__).with_name("cross_encoder_static.json")}
__all__ = ["COSINES", "GUARDS", "SPEC_PATHS", "CrossEncoder", "CrossEncoderVerifier",
           "guard_refuses"]


class CrossEncoder:
    """The ONNX pair classifier and its tokenizer; thread-safe, one pass at a time."""

    def __init__(self, model_path: Path | None = None, *, max_tokens: int = 96) -> None:
        from services.embeddings import bundled_model_dir

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = model_path or MODEL_PATH
        if not path.exists():
            raise FileNotFoundError(f"{path}: cross-encoder model missing; build it with "
                                    "scripts/build_cross_encoder.sh")
        self._session = ort.InferenceSession(str(path), options,
                                             providers=["CPUExecutionProvider"])
        # the checkpoint's WordPiece vocabulary, [CLS] a [SEP] b [SEP] with segment ids
        self._tokenizer = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.max_tokens = max_tokens
        self._lock = threading.Lock()
        self._count = lru_cache(maxsize=65536)(self._count_tokens)

    def _count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def tokens(self, text: str) -> int:
        """Word pieces of ``text`` alone (memoised: stored entries come back often)."""
        with self._lock:
            return self._count(text)

    def fits(self, query: str, candidate: str) -> bool:
        """Whether the pair fits the model's window whole; a cut pair would compare
        prefixes and call two long prompts that differ at the end the same."""
        return self.tokens(query) + self.tokens(candidate) + 3 <= self.max_tokens

    def logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            encodings = self._tokenizer.encode_batch(list(pairs))
            length = max(len(e.ids) for e in encodings)
            ids = np.zeros((len(pairs), length), dtype=np.int64)
            types = np.zeros_like(ids)
            mask = np.zeros((len(pairs), length), dtype=np.float32)
            for row, enc in enumerate(encodings):
                ids[row, : len(enc.ids)] = enc.ids
                types[row, : len(enc.ids)] = enc.type_ids
                mask[row, : len(enc.ids)] = 1.0
            bias = ((1.0 - mask) * -1e9)[:, None, None, :]
            out = self._session.run(["logits"], {"input_ids": ids, "token_type_ids": types,
                                                 "attention_bias": bias})[0]
        return np.asarray(out, dtype=np.float32)

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """P(same question) per (query, stored question) pair. One order only: training
        showed each pair in a random order, and a second pass would double the cost."""
        z = self.logits(pairs)
        return [float(p) for p in 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))]


class CrossEncoderVerifier:
    """Same surface as ``SemanticVerifier`` (``best``, ``threshold``, ``spec``), the
    cross-encoder behind the guards. Thread-safe."""

    kind = "cross-encoder"
    skips_refused = True  # the model scores the nearest candidates the rules let through

    def __init__(self, spec: dict[str, Any], *, encoder: CrossEncoder | None = None,
                 threshold: float | None = None) -> None:
        self.spec = spec
        self.encoder = encoder or CrossEncoder(max_tokens=int(spec["max_tokens"]))
        self.guards = tuple(spec.get("guards", GUARDS))
        self.calibrated_threshold = float(spec["threshold"])
        self.threshold = self.calibrated_threshold if threshold is None else float(threshold)
        self.min_cosine = float(spec.get("min_cosine", 0.0))
        self.model_k = int(spec.get("model_k", 1))
        # which cosine the combiner was fitted on: the static vectors' (the candidate stage
        # has it, so a lookup needs no MiniLM pass) or MiniLM's (the format before)
        cosine = spec.get("cosine", "minilm")
        if cosine not in COSINES:
            raise ValueError(f"cross-encoder spec: cosine {cosine!r}, expected one of {COSINES}")
        self.cosine = cosine
        self.needs_dense = cosine == "minilm"
        # optional: P = sigmoid(a * logit + b * cosine + c), fitted on the calibration
        # pairs (the cosine adds what the bi-encoder learnt from a billion pairs)
        combine = spec.get("combine")
        if not isinstance(combine, dict):  # none, or not fitted yet: the model alone
            combine = {"logit": 1.0, "cosine": 0.0, "bias": 0.0}
        self._combine = (float(combine["logit"]), float(combine["cosine"]),
                         float(combine["bias"]))
        self.pairs_scored = 0  # pairs that reached the model (benchmarks read it)

    @classmethod
    def load(cls, path: Path | None = None, *, threshold: float | None = None
             ) -> CrossEncoderVerifier:
        spec = json.loads((path or SPEC_PATH).read_text())
        return cls(spec, threshold=threshold)

    def with_threshold(self, threshold: float) -> CrossEncoderVerifier:
        """The same model (shared, not reloaded) with another acceptance threshold."""
        return CrossEncoderVerifier(self.spec, encoder=self.encoder, threshold=threshold)

    def serves(self, text: str) -> bool:
        """Whether a question can be looked up (or stored) at all: it must leave room in
        the model's window for a stored question of its own length."""
        if len(text) > 8 * self.encoder.max_tokens:  # cheap bound before tokenizing
            return False
        return 2 * self.encoder.tokens(text) + 3 <= self.encoder.max_tokens

    def admits(self, query: str, candidate: str) -> bool:
        """Whether a candidate is worth a transformer pass: no guard refuses it and the
        pair fits the model's window (otherwise ``probabilities`` gives it 0)."""
        return (guard_refuses(query, candidate, self.guards) is None
                and self.encoder.fits(query, candidate))

    def combined(self, logits: Sequence[float], cosines: Sequence[float]) -> list[float]:
        a, b, c = self._combine
        z = a * np.asarray(logits, dtype=np.float64) + b * np.asarray(cosines) + c
        return [float(p) for p in 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))]

    def probabilities(self, query: str, candidates: Sequence[str],
                      cosines: Sequence[float] | None = None) -> list[float]:
        """P(same question) per candidate (nearest first): 1 for the same words, 0 where a
        guard refuses or the pair does not fit the window, else the model's, for the
        ``model_k`` nearest the rules let through (0 for the others: each pair costs
        about 4 ms of CPU)."""
        out = [0.0] * len(candidates)
        words = same_words_key(query)
        scored: list[int] = []
        for i, text in enumerate(candidates):
            if same_words_key(text) == words:
                out[i] = 1.0
            elif (len(scored) < self.model_k and guard_refuses(query, text, self.guards) is None
                  and self.encoder.fits(query, text)):
                scored.append(i)
        if scored:
            self.pairs_scored += len(scored)
            logits = self.encoder.logits([(query, candidates[i]) for i in scored])
            cos = [1.0 if cosines is None else cosines[i] for i in scored]
            for i, p in zip(scored, self.combined(logits.tolist(), cos), strict=True):
                out[i] = p
        return out

    def best(self, query: str, neighbors: Sequence[Neighbor]) -> tuple[Neighbor, float] | None:
        """The most probable of the search's candidates (ties: the nearer), accepted or
        not; None when none reaches ``min_cosine``."""
        pool = [n for n in neighbors if n.cosine >= self.min_cosine]
        if not pool:
            return None
        scores = self.probabilities(query, [n.text for n in pool], [n.cosine for n in pool])
        i = max(range(len(pool)), key=lambda j: (scores[j], pool[j].cosine))
        return pool[i], scores[i]
