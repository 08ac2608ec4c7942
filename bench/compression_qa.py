"""Long-context QA answer recall under compression (LLM-free, exact).

For each question: its gold passage plus N distractor passages (other rows' gold
passages), gold at a random position; distractors either random or the ones BM25 ranks
highest for the question ("hard"). A distractor holding one of the answers is dropped.
Each method cuts the context to at most tokens/ratio tokens (checked: never over);
answer recall = some answer string survives. Methods: this compressor (``optengine``:
BM25 + MiniLM passage scores, passages then sentences; ``optengine-lexical``: BM25
only, the gateway default), truncation, random passage / sentence dropping, BM25
passage ranking and embedding passage ranking.

Embeddings of the distractor pool are computed once and shared; each embedding method
is charged the measured encoding time of every passage it scores, so its
``ms_per_1k_tokens`` is what it would cost without that cache.

    .venv/bin/python bench/compression_qa.py \
        --data ../shared/data/compression/nq_open_oracle_dev.jsonl --limit 60
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.tokens import compress, text_counter  # noqa: E402
from services.tokens.counting import encoding  # noqa: E402
from services.tokens.evaluation import has_answer, passage_text  # noqa: E402
from services.tokens.extractive import sentences  # noqa: E402
from services.tokens.relevance import bm25, terms  # noqa: E402

Count = Callable[[str], int]


class Bm25Index:
    """BM25 over the pool, built once (the per-question ranking of hard distractors)."""

    def __init__(self, docs: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        import math
        from collections import Counter

        self.docs = [Counter(terms(d)) for d in docs]
        self.lengths = [sum(d.values()) for d in self.docs]
        avg = sum(self.lengths) / len(self.docs)
        df: Counter[str] = Counter()
        for d in self.docs:
            df.update(d.keys())
        n = len(docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        self.norm = [k1 * (1 - b + b * length / avg) for length in self.lengths]
        self.k1 = k1

    def top(self, query: str) -> list[int]:
        q = set(terms(query))
        scores = []
        for i, doc in enumerate(self.docs):
            s = sum(self.idf[t] * doc[t] * (self.k1 + 1) / (doc[t] + self.norm[i])
                    for t in q if t in doc)
            scores.append((-s, i))
        return [i for _, i in sorted(scores)]


class Embedder:
    """MiniLM vectors memoised by text, each remembering what it cost to compute."""

    def __init__(self, count: Count) -> None:
        from services.embeddings import default_encoder

        self.encoder = default_encoder()
        self.count = count
        self.vectors: dict[str, np.ndarray] = {}
        self.cost_s: dict[str, float] = {}
        self.charged_s = 0.0

    def precompute(self, texts: Sequence[str], batch: int = 32) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            began = time.perf_counter()
            vectors = self.encoder.encode(chunk)
            spent = time.perf_counter() - began
            tokens = [max(1, self.count(t)) for t in chunk]
            for text, vector, n in zip(chunk, vectors, tokens, strict=True):
                self.vectors[text] = vector
                self.cost_s[text] = spent * n / sum(tokens)

    def load(self, path: Path) -> None:
        """Vectors and their measured costs from an earlier run (``--embedding-cache``)."""
        if path.exists():
            data = np.load(path, allow_pickle=False)
            for text, vector, cost in zip(data["texts"], data["vectors"], data["costs"],
                                          strict=True):
                self.vectors[str(text)] = vector
                self.cost_s[str(text)] = float(cost)

    def save(self, path: Path) -> None:
        texts = list(self.vectors)
        np.savez(path, texts=np.array(texts), costs=np.array([self.cost_s[t] for t in texts]),
                 vectors=np.stack([self.vectors[t] for t in texts]))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self.vectors]
        if missing:
            self.precompute(missing)
        self.charged_s += sum(self.cost_s[t] for t in texts)
        return np.stack([self.vectors[t] for t in texts])


def within(text: str, budget: int, count: Count) -> str:
    """Guard: a method's output must never exceed the budget."""
    tokens = count(text)
    if tokens > budget:
        raise AssertionError(f"method went over budget: {tokens} > {budget}")
    return text


def keep_in_order(units: list[str], order: list[int], budget: int, count: Count,
                  sep: str) -> str:
    kept: set[int] = set()
    used = 0
    for i in order:
        cost = count(units[i]) + 1
        if used + cost <= budget:
            kept.add(i)
            used += cost
    text = sep.join(units[i] for i in sorted(kept))
    while count(text) > budget and kept:  # seams can add a token
        kept.discard(max(kept, key=lambda i: order.index(i)))
        text = sep.join(units[i] for i in sorted(kept))
    return text


def make_methods(count: Count, enc_name: str, embedder: Embedder | None, rng: random.Random,
                 options: dict[str, float]) -> dict[str, Callable[[list[str], str, int], str]]:
    enc = encoding(enc_name)

    def truncation(ps: list[str], q: str, budget: int) -> str:
        ids = enc.encode("\n\n".join(ps), disallowed_special=())[:budget]
        text = enc.decode(ids)
        while count(text) > budget:
            ids = ids[:-1]
            text = enc.decode(ids)
        return text

    def random_passage(ps: list[str], q: str, budget: int) -> str:
        order = list(range(len(ps)))
        rng.shuffle(order)
        return keep_in_order(ps, order, budget, count, "\n\n")

    def random_sentence(ps: list[str], q: str, budget: int) -> str:
        units = [s for p in ps for s in sentences(p)]
        order = list(range(len(units)))
        rng.shuffle(order)
        return keep_in_order(units, order, budget, count, " ")

    def bm25_passage(ps: list[str], q: str, budget: int) -> str:
        scores = bm25(q, ps)
        order = sorted(range(len(ps)), key=lambda i: -scores[i])
        return keep_in_order(ps, order, budget, count, "\n\n")

    def embedding_passage(ps: list[str], q: str, budget: int) -> str:
        assert embedder is not None
        vectors = embedder([q, *ps])
        scores = vectors[1:] @ vectors[0]
        order = sorted(range(len(ps)), key=lambda i: -scores[i])
        return keep_in_order(ps, order, budget, count, "\n\n")

    def optengine(ps: list[str], q: str, budget: int) -> str:
        return compress("\n\n".join(ps), q, budget, count, embed=embedder, **options)

    def optengine_lexical(ps: list[str], q: str, budget: int) -> str:
        return compress("\n\n".join(ps), q, budget, count,
                        passage_share=options.get("passage_share", 1.0))

    methods = {"optengine": optengine, "optengine-lexical": optengine_lexical,
               "truncation": truncation, "random_passage": random_passage,
               "random_sentence": random_sentence, "bm25_passage": bm25_passage,
               "embedding_passage": embedding_passage}
    if embedder is None:
        del methods["optengine"], methods["embedding_passage"]
    return methods


def build_cases(rows: list[dict], questions: range, pool_size: int, n_distractors: int,
                rng: random.Random) -> dict[str, list[tuple[dict, list[str]]]]:
    pool = rows[:pool_size]
    texts = [passage_text(r["ctxs"][0]) for r in pool]
    index = Bm25Index(texts)
    cases: dict[str, list[tuple[dict, list[str]]]] = {"random": [], "hard": []}
    for qi in questions:
        row = rows[qi]
        gold = passage_text(row["ctxs"][0])
        usable = [i for i in range(len(pool)) if texts[i] != gold
                  and not has_answer(texts[i], row["answers"])]
        randoms = rng.sample(usable, n_distractors)
        allowed = set(usable)
        hard = [i for i in index.top(row["question"]) if i in allowed][:n_distractors]
        for setting, chosen in (("random", randoms), ("hard", hard)):
            ps = [texts[i] for i in chosen]
            ps.insert(rng.randrange(len(ps) + 1), gold)
            cases[setting].append((row, ps))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=60, help="questions per setting")
    parser.add_argument("--offset", type=int, default=0, help="skip this many questions")
    parser.add_argument("--pool", type=int, default=500,
                        help="rows whose gold passages serve as distractors")
    parser.add_argument("--distractors", type=int, default=19)
    parser.add_argument("--ratios", default="2,5,10,20")
    parser.add_argument("--settings", default="random,hard")
    parser.add_argument("--methods", default="", help="comma list; default all")
    parser.add_argument("--encoding", default="cl100k_base")
    parser.add_argument("--no-embeddings", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lexical-weight", type=float, default=0.25,
                        help="optengine: BM25's weight beside the embedding score")
    parser.add_argument("--passage-share", type=float, default=1.0,
                        help="optengine: budget share whole passages may take")
    parser.add_argument("--embedding-cache", type=Path,
                        help="npz of passage vectors and their measured encoding times, "
                             "reused across runs (each method is still charged that time)")
    args = parser.parse_args()

    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    rng = random.Random(args.seed)
    count = text_counter(args.encoding)
    questions = range(args.offset, min(len(rows), args.offset + args.limit))
    cases = build_cases(rows, questions, args.pool, args.distractors, rng)
    embedder = None
    if not args.no_embeddings:
        embedder = Embedder(count)
        if args.embedding_cache:
            embedder.load(args.embedding_cache)
        began = time.perf_counter()
        embedder.precompute([p for s in cases.values() for _, ps in s for p in ps])
        if args.embedding_cache:
            embedder.save(args.embedding_cache)
        print(f"embedded {len(embedder.vectors)} passages in "
              f"{time.perf_counter() - began:.0f} s", file=sys.stderr)
    options = {"lexical_weight": args.lexical_weight, "passage_share": args.passage_share}
    methods = make_methods(count, args.encoding, embedder, random.Random(args.seed + 1),
                           options)
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods.split(",")}
    ratios = [float(r) for r in args.ratios.split(",")]
    results = []
    print(f"{'setting':8} {'method':18} {'ratio':>5} {'reduction':>9} {'recall':>7} "
          f"{'ms/1k tok':>9}")
    for setting in args.settings.split(","):
        for ratio in ratios:
            for name, method in methods.items():
                hits, reductions, spent, tokens_in = 0, [], 0.0, 0
                for row, ps in cases[setting]:
                    context = "\n\n".join(ps)
                    before = count(context)
                    budget = int(before // ratio)
                    charged = embedder.charged_s if embedder else 0.0
                    began = time.perf_counter()
                    out = within(method(ps, row["question"], budget), budget, count)
                    spent += time.perf_counter() - began
                    if embedder is not None:
                        spent += embedder.charged_s - charged
                    tokens_in += before
                    reductions.append(1 - count(out) / before)
                    hits += has_answer(out, row["answers"])
                result = {
                    "method": name, "distractors": setting, "target_ratio": ratio,
                    "token_reduction": round(statistics.mean(reductions), 4),
                    "answer_recall": round(hits / len(cases[setting]), 4),
                    "ms_per_1k_tokens": round(spent * 1000 / (tokens_in / 1000), 3),
                }
                results.append(result)
                print(f"{setting:8} {name:18} {ratio:5g} {result['token_reduction']:9.1%} "
                      f"{result['answer_recall']:7.1%} {result['ms_per_1k_tokens']:9.2f}",
                      flush=True)
    print(json.dumps({"questions": len(questions), "offset": args.offset, "pool": args.pool,
                      "encoding": args.encoding, "results": results}))


if __name__ == "__main__":
    main()
