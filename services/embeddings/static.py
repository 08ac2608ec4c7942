"""A static distillation of all-MiniLM-L6-v2: a sentence vector without a transformer pass.

Every vocabulary token gets one fixed vector, distilled from the shipped model: MiniLM's
mean-pooled output for ``[CLS] token [SEP]`` alone, centred and projected on its leading
principal directions, then weighted SIF-style by ``r / (r + 100)``, where ``r`` is the
token's rank among words: the WordPiece vocabulary lists words roughly from frequent to
rare from id 1996 ("the") on, after its special tokens and single characters (rank 1), so
a later id is a rarer, more telling token and the commonest pieces weigh almost nothing.
A sentence is the normalised sum of its tokens' rows: one tokenizer call and a small
gather, tens of microseconds, where the transformer costs milliseconds.

It is a candidate generator, not a judge: it ranks stored questions well enough to find
the few a verifier should look at (docs/benchmarks.md, "Semantic cache"), but it cannot
see word order or context, so nothing is ever served on its cosine alone.

The table ships as ``minilm_static.npz`` (int8 rows with a float32 scale per row, and
the projection that made them) and
``minilm_static.json`` records how it was made; ``build_table`` is the deterministic
recipe and ``python -m services.embeddings.static --build`` rewrites both files (about
two CPU-minutes: 30,522 short forward passes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from services.embeddings.encoder import SentenceEncoder, bundled_model_dir

TABLE_PATH = Path(__file__).with_name("minilm_static.npz")
RECIPE_PATH = Path(__file__).with_name("minilm_static.json")
STATIC_DIMENSION = 256
FIRST_WORD_ID = 1996  # "the": the WordPiece vocabulary's words start here, commonest first
SIF_RANK = 100.0  # weight r / (r + SIF_RANK); chosen on the QQP training half (benchmarks)
MAX_STATIC_TOKENS = 512  # longer texts are cut: the semantic stage serves short questions


@dataclass(frozen=True, slots=True)
class Projection:
    """What maps a token's MiniLM state to its row (kept beside the table, so a test can
    check any row against the model without the whole build)."""

    mean: np.ndarray   # (384,) the vocabulary's mean state
    basis: np.ndarray  # (384, dims) leading principal directions

    def rows(self, states: np.ndarray, ids: np.ndarray) -> np.ndarray:
        weights = token_weights(int(np.max(ids)) + 1)[ids]
        return ((states - self.mean) @ self.basis) * weights[:, None]


def build_table(encoder: SentenceEncoder, *, dims: int = STATIC_DIMENSION,
                batch_size: int = 512) -> tuple[np.ndarray, Projection, dict[str, Any]]:
    """The float32 token table (vocabulary x ``dims``), its projection and its recipe.

    Deterministic for a given encoder and weights: forward passes in id order, an exact
    eigendecomposition (no random projection), signs fixed so that each direction's
    largest loading is positive.
    """
    vocab = encoder.vocab_size()
    states = np.empty((vocab, encoder.dimension), dtype=np.float64)
    for start in range(0, vocab, batch_size):
        ids = np.arange(start, min(vocab, start + batch_size))
        states[ids] = encoder.single_token_states(ids)
    mean = states.mean(axis=0)
    centred = states - mean
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred)
    basis = eigvecs[:, ::-1][:, :dims]
    basis *= np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(dims)])
    projection = Projection(mean, basis)
    table = projection.rows(states, np.arange(vocab))
    kept = float(eigvals[::-1][:dims].sum() / eigvals.sum())
    recipe = {
        "source": f"{encoder.name} ({encoder.kind}), mean-pooled output of "
                  "[CLS] token [SEP] for every vocabulary id",
        "projection": f"centred PCA to {dims} dimensions ({kept:.3f} of the variance)",
        "weights": f"r / (r + {SIF_RANK:g}) per row, r = max(1, id - {FIRST_WORD_ID - 1})",
        "sentence": "sum of the rows of the text's word pieces (no special tokens), "
                    "L2-normalised",
        "storage": "int8 rows, float32 scale per row (max |value| / 127)",
        "vocab": vocab, "dims": dims,
        "command": "python -m services.embeddings.static --build",
        "chosen_on": "dimensions, centring and weights by the rank of each QQP training-half "
                     "duplicate's own entry among all training-half entries "
                     "(docs/benchmarks.md, Semantic cache)",
    }
    return table.astype(np.float32), projection, recipe


def token_weights(vocab: int) -> np.ndarray:
    rank = np.maximum(np.arange(vocab, dtype=np.float64) - (FIRST_WORD_ID - 1), 1.0)
    return rank / (rank + SIF_RANK)


def quantize(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(table).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    return np.round(table / scale[:, None]).astype(np.int8), scale.astype(np.float32)


class StaticEncoder:
    """Same surface as ``SentenceEncoder`` (``encode``, ``encode_one``, ``dimension``,
    ``name``); thread-safe."""

    kind = "static"

    def __init__(self, path: Path | None = None, *, model_dir: Path | None = None) -> None:
        path = path or TABLE_PATH
        if not path.exists():
            raise FileNotFoundError(f"{path}: static token table missing; build it with "
                                    "python -m services.embeddings.static --build")
        with np.load(path) as stored:
            rows, scale = stored["rows"], stored["scale"]
            self.projection = Projection(stored["mean"], stored["basis"])
        self._table = rows.astype(np.float32) * scale[:, None]
        self.dimension = int(self._table.shape[1])
        self.digest = hashlib.sha256(rows.tobytes()).hexdigest()[:12]
        # the name goes with every persisted vector: another table is another model
        self.name = f"all-MiniLM-L6-v2-static{self.dimension}-{self.digest[:8]}"
        tokenizer = Tokenizer.from_file(str((model_dir or bundled_model_dir())
                                            / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(MAX_STATIC_TOKENS)
        self._tokenizer = tokenizer
        self._lock = threading.Lock()  # the Rust tokenizer's truncation state is shared

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        with self._lock:
            return [e.ids for e in self._tokenizer.encode_batch(list(texts),
                                                                add_special_tokens=False)]

    def encode(self, texts: Sequence[str], *, batch_size: int = 0) -> np.ndarray:
        """Unit-norm float32 rows (a text without word pieces gets the zero vector)."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, ids in enumerate(self._ids(texts)):
            if ids:
                out[row] = self._table[ids].sum(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


def write_table(encoder: SentenceEncoder, *, dims: int = STATIC_DIMENSION,
                path: Path = TABLE_PATH, recipe_path: Path = RECIPE_PATH) -> dict[str, Any]:
    table, projection, recipe = build_table(encoder, dims=dims)
    rows, scale = quantize(table)
    np.savez_compressed(path, rows=rows, scale=scale, mean=projection.mean,
                        basis=projection.basis)
    recipe["sha256_rows"] = hashlib.sha256(rows.tobytes()).hexdigest()
    recipe_path.write_text(json.dumps(recipe, indent=2) + "\n")
    return recipe


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the static token table.")
    parser.add_argument("--build", action="store_true", required=True)
    parser.add_argument("--dims", type=int, default=STATIC_DIMENSION)
    parser.add_argument("--encoder", default="onnx-int8",
                        help="which MiniLM runtime computes the token states")
    args = parser.parse_args(argv)
    from services.embeddings import default_encoder

    recipe = write_table(default_encoder(args.encoder), dims=args.dims)
    print(json.dumps(recipe, indent=2))  # noqa: T201 - a command-line tool's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
