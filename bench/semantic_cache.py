"""Semantic cache: precision and recall against GPTCache's method, and lookup latency.

Quality (default mode)::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/semantic_cache.py \\
        --pairs ../shared/data/cache/qqp_pairs_dev.json

Reads pairs in QQP format ``{text_a, text_b, label}`` or GPTCache's mock format
``{origin, similar}`` (every pair a true duplicate). Every ``text_a`` goes into ONE index
(one scope), every ``text_b`` is looked up. A hit is correct only when it returns its
own pair's entry on a duplicate pair; a hit on a label-0 pair ("wrong_own") or on any
other entry ("wrong_other") is a wrong answer. Texts are entries by identity: equal
``text_a`` strings are one entry, and a query whose text is itself an entry is an exact
repeat that the exact tiers answer, so it is counted and left out. For QQP, the pairs the
verifier was trained on (its manifest) are left out, inserts and queries alike.

Side by side on the same embeddings: our lookup (static candidates, the rules, then the
verifier over MiniLM cosines, accepted at the calibrated threshold), the same verifier
over a search of the MiniLM vectors themselves (the lookup before the static candidate
stage), and GPTCache's method (the nearest MiniLM entry, accepted when cosine >= 2t - 1
for its threshold t). The candidate stage's loss is counted: hits of the MiniLM search
whose entry is not among the static candidates.

Floor (``--floor``): the static cosine of the QQP training-half pairs each verifier
accepts, the data the static floor is chosen on.

Latency (``--latency``): lookups on one scope of 10k and 100k entries built from the
pairs' texts plus deterministic rewordings, indexed by their static vectors, with the
static embedding, the search, the rules, the MiniLM pass and the verification timed
separately (other encoders named in ``--encoders`` embed every query too, for a
side-by-side), and the index designs compared on the same static vectors (exact float32
scan vs the PCA prefilter; FAISS and HNSW run in their own environment by
``bench/semantic_ann.py`` on vectors ``--export`` writes).

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from harness import machine_info, markdown_table, print_json_line

from services.caching.semantic import (
    VERIFIER_KINDS,
    Neighbor,
    SemanticCache,
    VectorIndex,
    load_verifier,
)
from services.caching.semantic.corpus import Pair, encode_cached, load_pairs
from services.caching.semantic.train import (
    MANIFEST_NAME,
    PACKAGE_DIR,
    Outcome,
    precision_curve,
)
from services.embeddings import (
    DEFAULT_ENCODER,
    ENCODER_KINDS,
    SentenceEncoder,
    default_encoder,
    default_static_encoder,
)

SCOPE = ("bench", "bench")
CACHE_DIR = Path.home() / ".cache" / "optengine"
GPTCACHE_T = (0.95, 0.9, 0.8)
RECALL_LEVELS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _manifest() -> set[str]:
    path = PACKAGE_DIR / MANIFEST_NAME
    return {ln.strip() for ln in path.read_text().splitlines() if ln and not ln.startswith("#")}


SameQuestion = Callable[[str, str], bool]


def _kind(returned: str, pair: Pair, same_question: SameQuestion | None = None) -> str:
    if returned == pair.text_a:
        return "correct" if pair.label == 1 else "wrong_own"
    if same_question is not None and same_question(returned, pair.text_b):
        return "other_labelled"  # still wrong by the rule; the labels call it a duplicate
    return "wrong_other"


def labelled_same_question(pairs: Sequence[Pair]) -> SameQuestion:
    """Whether the file's own labels say two texts ask the same question: joined by a
    chain of label-1 pairs (anywhere in the file, training half included).

    A hit on another pair's entry is wrong by the benchmark's rule, but Quora asks most
    questions many times; where a chain of duplicate labels joins the query to the
    returned entry, the data itself says the answer served was the right one.
    """
    parent: dict[str, str] = {}

    def root(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for pair in pairs:
        if pair.label == 1:
            parent[root(pair.text_a)] = root(pair.text_b)
    return lambda a, b: a == b or (a in parent and b in parent and root(a) == root(b))


def _labelled_right(r: dict[str, Any]) -> float:
    """Precision when hits on another entry that the labels join to the query count as
    right (they are still counted wrong everywhere else)."""
    return (r["correct"] + r["other_labelled"]) / r["hits"] if r["hits"] else 1.0


def _labelled(r: dict[str, Any]) -> float:
    """Precision over the hits a label can judge: the query's own pair."""
    judged = r["correct"] + r["wrong_own"]
    return r["correct"] / judged if judged else 1.0


def _best_precision_at(curve: Sequence[dict[str, Any]], recall: float, *,
                       precision: Callable[[dict[str, Any]], float] = lambda r: r["precision"]
                       ) -> dict[str, Any] | None:
    """The most precise point of a curve whose recall reaches ``recall``."""
    eligible = [r for r in curve if r["recall"] >= recall and r["hits"]]
    if not eligible:
        return None
    return max(eligible, key=lambda r: (precision(r), r["recall"]))


# --- quality -----------------------------------------------------------------------------


def quality(args: argparse.Namespace) -> dict[str, Any]:
    fmt, pairs = load_pairs(args.pairs)
    manifest = _manifest() if fmt == "qqp" else set()
    evaluated = [p for p in pairs if p.digest[:16] not in manifest]
    entries = sorted({p.text_a for p in evaluated})
    entry_set = set(entries)
    queries = [p for p in evaluated if p.text_b not in entry_set]
    repeats = len(evaluated) - len(queries)
    positives = sum(p.label for p in queries)
    same_question = labelled_same_question(pairs) if fmt == "qqp" else None

    encoder = default_encoder(args.encoders[0])
    texts = sorted(entry_set | {p.text_b for p in queries})
    t0 = time.perf_counter()
    cache_path = _embeddings_cache(args, encoder)
    vectors = encode_cached(encoder.encode, texts, cache_path)
    embed_s = time.perf_counter() - t0
    row = {t: i for i, t in enumerate(texts)}

    cache = SemanticCache(encoder=encoder, min_probability=args.threshold,
                          verifier_kind=args.verifier)
    # "before" verifies over MiniLM cosines: the verifier itself, or for one that reads the
    # static cosine the shipped cross-encoder on MiniLM's (today's lookup), each at its
    # own threshold
    old_verifier = (cache.verifier if cache.verifier.needs_dense
                    else load_verifier("cross-encoder", threshold=args.threshold))
    # the lookup before the static stage, side by side: MiniLM vectors searched directly
    dense_index = VectorIndex(encoder.dimension)
    for text in entries:
        vector = vectors[row[text]]
        dense_index.add(SCOPE, _digest(text), text, vector)
        # the entries' MiniLM vectors are what a lookup would compute for them; given here
        # so that the run embeds each text once
        cache.add(SCOPE, _digest(text), text, dense=vector)
    ours: list[Outcome | None] = []
    before: list[Outcome | None] = []
    cosine_only: list[Outcome | None] = []
    stage = {"lookups": len(queries), "transformer_lookups": 0, "minilm_lookups": 0,
             "before_hits": 0,
             "lost_candidates": 0, "lost_correct": 0, "lost_under_floor": 0}
    t0 = time.perf_counter()
    for pair in queries:
        vector = vectors[row[pair.text_b]]
        nearest = dense_index.search(SCOPE, vector, k=cache.search_k)
        if nearest:
            kind = _kind(nearest[0].text, pair, same_question)
            cosine_only.append(Outcome(nearest[0].cosine, nearest[0].cosine, kind))
        else:
            cosine_only.append(None)
        old = old_verifier.best(pair.text_b, nearest)
        before.append(Outcome(old[1], old[0].cosine, _kind(old[0].text, pair, same_question))
                      if old else None)
        found = cache.candidates(SCOPE, pair.text_b)
        match = found.match
        if not found.decided:
            stage["transformer_lookups"] += 1
            texts = cache.missing_dense(found)
            stage["minilm_lookups"] += bool(texts)
            match = cache.verify(SCOPE, found, np.stack([vectors[row[t]] for t in texts])
                                 if texts else None)
        ours.append(Outcome(match.probability, match.cosine,
                            _kind(match.text, pair, same_question)) if match else None)
        if old and old[1] >= old_verifier.threshold:  # a hit before: can the static stage find it?
            stage["before_hits"] += 1
            static = cache.index.search(SCOPE, found.vector, k=cache.candidate_k)
            kept = {n.digest for n in static if n.cosine >= cache.static_floor}
            if old[0].digest not in kept:
                stage["lost_candidates"] += 1
                stage["lost_correct"] += before[-1] is not None and before[-1].kind == "correct"
                stage["lost_under_floor"] += old[0].digest in {n.digest for n in static}
    lookup_s = time.perf_counter() - t0

    threshold = cache.threshold
    grid = sorted({round(t, 2) for t in np.arange(0.30, 0.991, 0.01)} | {threshold})
    our_curve = precision_curve(ours, positives, grid)
    t_grid = sorted({round(t, 2) for t in np.arange(0.50, 0.996, 0.01)} | set(GPTCACHE_T))
    gpt_curve = precision_curve(cosine_only, positives, [2 * t - 1 for t in t_grid])
    for r, t in zip(gpt_curve, t_grid, strict=True):
        r["gptcache_t"] = t
    default = next(r for r in our_curve if r["threshold"] == round(threshold, 4))
    before_default = precision_curve(before, positives, [old_verifier.threshold])[0]
    gpt_points = {t: next(r for r in gpt_curve if r["gptcache_t"] == t) for t in GPTCACHE_T}

    print(f"# semantic cache quality: {args.pairs} ({fmt})")
    print(f"pairs {len(pairs)}, left out as verifier training pairs {len(pairs) - len(evaluated)}"
          f", evaluated {len(evaluated)}: {len(entries)} distinct entries, {len(queries)} "
          f"queries ({positives} duplicates), {repeats} exact repeats left to the exact tiers")
    print(f"embedding {embed_s:.1f} s (cache {cache_path}), lookups {lookup_s:.1f} s"
          f"; verifier {cache.verifier.kind}, {cache.search_k} candidates, threshold "
          f"{threshold:.4f} (calibrated {cache.verifier.calibrated_threshold:.4f} for "
          f"precision {cache.verifier.spec.get('target_precision')})\n")
    headers = ["method", "setting", "correct", "wrong (label 0)", "wrong (other entry)",
               "misses", "precision", "recall", "precision, labelled hits"]
    if same_question is not None:
        headers[5:5] = ["other entry, labels say same question"]
        headers.append("precision, those counted right")

    def line(name: str, setting: str, r: dict[str, Any]) -> list[object]:
        cells: list[object] = [
            name, setting, r["correct"], r["wrong_own"], r["wrong_other"],
            len(queries) - r["hits"], f"{r['precision']:.3f}", f"{r['recall']:.3f}",
            f"{_labelled(r):.3f}"]
        if same_question is not None:
            cells[5:5] = [r["other_labelled"]]
            cells.append(f"{_labelled_right(r):.3f}")
        return cells

    rows = [line("ours: static candidates + rules + verifier", f"p >= {threshold:.3f} (default)",
                 default),
            line(f"ours before: MiniLM search + {old_verifier.kind} on MiniLM cosines",
                 f"p >= {old_verifier.threshold:.3f}", before_default)]
    rows += [line("GPTCache method", f"t = {t} (cos >= {2 * t - 1:.2f})", gpt_points[t])
             for t in GPTCACHE_T]
    print(markdown_table(headers, rows))
    print("(precision, labelled hits: hits on the query's own pair only, whose label says "
          "whether they are right; a hit on another entry is unlabelled)")
    if same_question is not None:
        print("(other entry, labels say same question: a chain of label-1 pairs in the file "
              "joins the query to the entry served; still counted wrong in 'precision')")
    print(f"\nstatic candidate stage (top {cache.candidate_k}, static cosine >= "
          f"{cache.static_floor}, then the rules): {stage['transformer_lookups']} of "
          f"{len(queries)} lookups needed the verifier, {stage['minilm_lookups']} a MiniLM "
          f"pass; of the {stage['before_hits']}"
          f" hits of the lookup before it, {stage['lost_candidates']} entries are not among the "
          f"static candidates ({stage['lost_under_floor']} found but under the floor), "
          f"{stage['lost_correct']} of them correct hits")
    print("\nbest precision at a given recall (each method at its own best threshold)")
    matched = []
    for level in RECALL_LEVELS:
        a, b = _best_precision_at(our_curve, level), _best_precision_at(gpt_curve, level)
        la = _best_precision_at(our_curve, level, precision=_labelled)
        lb = _best_precision_at(gpt_curve, level, precision=_labelled)
        if a is None and b is None:
            continue
        matched.append([
            f">= {level:.2f}",
            f"{a['precision']:.3f} (p >= {a['threshold']:.2f})" if a else "-",
            f"{b['precision']:.3f} (t = {b['gptcache_t']:.2f})" if b else "-",
            f"{_labelled(la):.3f} (p >= {la['threshold']:.2f})" if la else "-",
            f"{_labelled(lb):.3f} (t = {lb['gptcache_t']:.2f})" if lb else "-",
        ])
        if same_question is not None:
            ra = _best_precision_at(our_curve, level, precision=_labelled_right)
            matched[-1].append(f"{_labelled_right(ra):.3f} (p >= {ra['threshold']:.2f})"
                               if ra else "-")
    curve_headers = ["recall", "ours: precision", "GPTCache method: precision",
                     "ours: labelled-hit precision", "GPTCache: labelled-hit precision"]
    if same_question is not None:
        curve_headers.append("ours: precision, label-joined other entries right")
    print(markdown_table(curve_headers, matched))
    print("\nprecision/recall curves")
    curve_rows = []
    shown = {r["threshold"]: r for r in [*our_curve[::5], *our_curve[-9:], default]}
    for r in sorted(shown.values(), key=lambda r: r["threshold"]):
        curve_rows.append(["ours", f"p >= {r['threshold']:.2f}", r["hits"], r["correct"],
                           f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{_labelled(r):.3f}"])
    for r in sorted({r["gptcache_t"]: r for r in [*gpt_curve[::5], *gpt_curve[-4:]]}.values(),
                    key=lambda r: r["gptcache_t"]):
        curve_rows.append(["GPTCache", f"t = {r['gptcache_t']:.2f}", r["hits"], r["correct"],
                           f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{_labelled(r):.3f}"])
    print(markdown_table(["method", "setting", "hits", "correct", "precision", "recall",
                          "precision, labelled hits"], curve_rows))
    ceiling = label_ceiling(evaluated, vectors, row) if fmt == "qqp" else []
    if ceiling:
        print("\nhow often the labels call near-identical pairs duplicates (evaluated pairs): "
              "the precision no similarity method can beat on this data")
        print(markdown_table(["pairs", "count", "labelled duplicate"],
                             [[c["pairs"], c["count"], f"{c['duplicate_share']:.3f}"]
                              for c in ceiling]))
    return {
        "mode": "quality", "pairs_file": str(args.pairs), "format": fmt, "pairs": len(pairs),
        "training_pairs_excluded": len(pairs) - len(evaluated), "evaluated_pairs":
        len(evaluated), "entries": len(entries), "queries": len(queries),
        "exact_repeats": repeats, "positives": positives, "threshold": round(threshold, 4),
        "precision": default["precision"], "recall": default["recall"],
        "correct_hits": default["correct"],
        "wrong_hits": default["wrong_own"] + default["wrong_other"],
        "wrong_label0": default["wrong_own"], "wrong_other_entry": default["wrong_other"],
        "wrong_other_entry_labelled_same_question": default["other_labelled"],
        "misses": len(queries) - default["hits"], "label_ceiling": ceiling,
        "gptcache_method": {str(t): {k: v for k, v in gpt_points[t].items()}
                            for t in GPTCACHE_T},
        "precision_labelled_hits": round(_labelled(default), 4),
        "before_static_stage": {k: before_default[k] for k in (
            "precision", "recall", "correct", "hits", "wrong_own", "wrong_other",
            "other_labelled")},
        "candidate_stage": stage | {"candidate_k": cache.candidate_k,
                                    "static_floor": cache.static_floor},
        "curve": [{k: r[k] for k in ("threshold", "precision", "recall", "correct", "hits",
                                     "wrong_own", "other_labelled")} for r in our_curve],
        "gptcache_curve": [{k: r[k] for k in ("gptcache_t", "precision", "recall", "correct",
                                              "hits", "wrong_own")} for r in gpt_curve],
        "machine": machine_info(),
    }


def label_ceiling(pairs: Sequence[Pair], vectors: np.ndarray, row: dict[str, int]
                  ) -> list[dict[str, Any]]:
    """Share of label-1 pairs among pairs that are textually or semantically near-identical.

    Quora's labels are noisy: where even identical wording is labelled "different" one
    time in six, no method can reach a precision above that share at a useful recall.
    """
    def words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    cosines = [float(vectors[row[p.text_a]] @ vectors[row[p.text_b]]) if p.text_b in row
               else -1.0 for p in pairs]
    groups: list[tuple[str, list[Pair]]] = [
        ("same words (case and punctuation aside)",
         [p for p in pairs if words(p.text_a) == words(p.text_b)]),
    ]
    for cut in (0.99, 0.98, 0.95, 0.9):
        groups.append((f"cosine >= {cut}",
                       [p for p, c in zip(pairs, cosines, strict=True) if c >= cut]))
    return [{"pairs": name, "count": len(group),
             "duplicate_share": sum(p.label for p in group) / len(group) if group else 0.0}
            for name, group in groups]


# --- the static candidate floor ------------------------------------------------------------

FLOOR_GRID = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)


def floor(args: argparse.Namespace) -> dict[str, Any]:
    """How low the static cosine of the pairs each verifier accepts goes, on the pairs the
    verifiers were trained and calibrated on (never the evaluation half): the floor of
    the static candidate stage must let (almost) all of them through."""
    fmt, pairs = load_pairs(args.pairs)
    if fmt != "qqp":
        raise SystemExit("--floor reads the QQP pairs: the floor is chosen on their "
                         "training half")
    manifest = _manifest()
    training = [p for p in pairs if p.digest[:16] in manifest]
    encoder = default_encoder(args.encoders[0])
    texts = sorted({t for p in training for t in (p.text_a, p.text_b)})
    row = {t: i for i, t in enumerate(texts)}
    dense = encode_cached(encoder.encode, texts, _embeddings_cache(args, encoder))
    cache = SemanticCache(encoder=encoder, verifier_kind="features")
    static = default_static_encoder().encode(texts)
    result: dict[str, Any] = {"mode": "floor", "pairs": len(training), "verifiers": {}}
    table = []
    for kind in VERIFIER_KINDS:
        verifier = cache.verifier if kind == "features" else load_verifier(kind)
        scored = []  # (probability, static cosine) of every pair the verifier judges
        for p in training:
            a, b = row[p.text_a], row[p.text_b]
            best = verifier.best(p.text_b, [Neighbor("a", p.text_a, float(dense[a] @ dense[b]))])
            if best is not None:
                scored.append((best[1], float(static[a] @ static[b])))
        for label, threshold in (("calibrated", verifier.threshold), ("p >= 0.5", 0.5)):
            values = np.asarray([c for prob, c in scored if prob >= threshold])
            shares = {f: float((values >= f).mean()) if len(values) else 1.0
                      for f in FLOOR_GRID}
            result["verifiers"][f"{kind}, {label}"] = {
                "accepted": len(values), "share_at_or_above": shares,
                "min": float(values.min()) if len(values) else None,
                "p0.5": _pct(values, 0.5) if len(values) else None,
                "p1": _pct(values, 1) if len(values) else None}
            table.append([kind, f"{label} ({threshold:.3f})", len(values),
                          *[f"{shares[f]:.4f}" for f in FLOOR_GRID]])
    print(f"# static cosine of the accepted pairs: {len(training)} training-half QQP pairs")
    print(markdown_table(["verifier", "accepted at", "pairs accepted",
                          *[f"share >= {f}" for f in FLOOR_GRID]], table))
    # how the static vectors rank a duplicate's own entry among all the entries, against
    # MiniLM's (the measure the table's dimensions and weights were chosen by)
    entries = sorted({p.text_a for p in training})
    position = {t: i for i, t in enumerate(entries)}
    duplicates = [p for p in training if p.label == 1 and p.text_b not in position]
    own = np.array([position[p.text_a] for p in duplicates])
    ranks_rows = []
    for name, vectors in (("static", static), ("MiniLM", dense)):
        e = vectors[[row[t] for t in entries]]
        q = vectors[[row[p.text_b] for p in duplicates]]
        scores = q @ e.T
        rank = (scores > scores[np.arange(len(own)), own][:, None]).sum(axis=1)
        recall = {k: float((rank < k).mean()) for k in (1, 4, 8, 16)}
        result[f"own_entry_recall_{name}"] = recall
        ranks_rows.append([name, *[f"{recall[k]:.3f}" for k in (1, 4, 8, 16)]])
    print(f"\n{len(duplicates)} duplicates, their own entry among {len(entries)} entries")
    print(markdown_table(["vectors", "top 1", "top 4", "top 8", "top 16"], ranks_rows))
    return result


# --- latency -----------------------------------------------------------------------------

ENTRY_TEMPLATES = ("{q}", "Quick question: {q}", "{q} Please explain briefly.",
                   "I was wondering: {q}")
QUERY_TEMPLATE = "Can someone tell me: {q}"


def latency_corpus(pairs: Sequence[Pair], size: int) -> tuple[list[str], list[str]]:
    """``size`` distinct entry texts (the pairs' texts, then rewordings of them) and the
    base texts in their deterministic order (hash order, so any prefix is a fair mix)."""
    base = sorted({t for p in pairs for t in (p.text_a, p.text_b)}, key=_digest)
    corpus: list[str] = []
    seen: set[str] = set()
    for template in ENTRY_TEMPLATES:
        for q in base:
            text = template.format(q=q)
            if text not in seen:
                seen.add(text)
                corpus.append(text)
            if len(corpus) == size:
                return corpus, base
    return corpus, base


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def latency(args: argparse.Namespace) -> dict[str, Any]:
    """Lookups on one scope of ``--sizes`` entries, each step timed apart: the static
    embedding, the search, the rules, and (for lookups whose candidates survive the rules)
    the MiniLM pass and the verifier. Entries are indexed by their static vectors, as the
    gateway indexes them; an entry's MiniLM vector is computed the first time it is a
    candidate, as in the gateway (so the figures include those cold passes)."""
    _, pairs = load_pairs(args.pairs)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    corpus, base = latency_corpus(pairs, max(sizes))
    # the first encoder runs step 3; every encoder embeds every query, one after the
    # other, so their times compare
    encoders = [default_encoder(kind) for kind in args.encoders]
    encoder = encoders[0]
    static_encoder = default_static_encoder()
    t0 = time.perf_counter()
    vectors = static_encoder.encode(corpus)
    print(f"# semantic lookup latency: {len(corpus)} entries embedded statically in "
          f"{time.perf_counter() - t0:.1f} s")
    step = max(1, len(base) // args.queries)
    query_texts = [QUERY_TEMPLATE.format(q=q) for q in base[::step][: args.queries]]
    query_vectors = static_encoder.encode(query_texts)
    if args.export:
        args.export.mkdir(parents=True, exist_ok=True)
        np.save(args.export / "entries.npy", vectors)
        np.save(args.export / "queries.npy", query_vectors)
        print(f"exported vectors to {args.export}")
    results: dict[str, Any] = {"mode": "latency", "sizes": {}, "machine": machine_info()}
    rows, design_rows = [], []
    for size in sizes:
        cache = SemanticCache(encoder=encoder, static_encoder=static_encoder,
                              verifier_kind=args.verifier)
        results["verifier"] = cache.verifier.kind
        for i in range(size):
            cache.add(SCOPE, _digest(corpus[i]), corpus[i], vector=vectors[i])
        load_before = os.getloadavg()[0]
        for text in query_texts[:10]:  # warm caches, the encoders and the feature memo
            cache.score(SCOPE, text)
            for other in encoders[1:]:
                other.encode_one(text)
        embed: dict[str, list[float]] = {e.kind: [] for e in encoders[1:]}
        parts: dict[str, list[float]] = {name: [] for name in (
            "static embed", "search", "rules", "MiniLM pass", "verify", "total")}
        hits = dense_lookups = dense_texts = 0
        verified: list[int] = []  # lookups that reached step 3
        verify_cpu = 0.0  # CPU seconds of this thread in step 3 (the verifier's model)
        scored_before = getattr(cache.verifier, "pairs_scored", 0)
        for text in query_texts:
            for other in encoders[1:]:
                a = time.perf_counter()
                other.encode_one(text)
                embed[other.kind].append((time.perf_counter() - a) * 1e3)
            a = time.perf_counter()
            vector = cache.static_embed(text)
            b = time.perf_counter()
            found = cache.candidates(SCOPE, text, vector=vector)
            c = time.perf_counter()
            cache.index.search(SCOPE, vector, k=cache.candidate_k, min_cosine=cache.static_floor)
            search = time.perf_counter() - c
            dense = verify = 0.0
            match = found.match
            if not found.decided:
                texts = cache.missing_dense(found)  # none for a verifier on static cosines
                d = time.perf_counter()
                rows_ = encoder.encode(texts) if texts else None
                e, cpu = time.perf_counter(), time.thread_time()
                match = cache.verify(SCOPE, found, rows_)
                verify_cpu += time.thread_time() - cpu
                dense, verify = e - d, time.perf_counter() - e
                verified.append(len(parts["verify"]))
                dense_lookups += bool(texts)
                dense_texts += len(texts)
            hits += match is not None and match.accepted
            for name, seconds in (("static embed", b - a), ("search", search),
                                  ("rules", max(0.0, c - b - search)), ("MiniLM pass", dense),
                                  ("verify", verify), ("total", c - a + dense + verify)):
                parts[name].append(seconds * 1e3)
        load_after = os.getloadavg()[0]
        # pairs the cross-encoder scored (the rules refuse the rest before it)
        scored = getattr(cache.verifier, "pairs_scored", 0) - scored_before
        stats = cache.stats()
        parts |= {f"embed ({kind}, for comparison)": times for kind, times in embed.items()}
        for name in ("MiniLM pass", "verify", "total"):
            if verified:
                parts[f"{name}, lookups reaching the verifier"] = [parts[name][i]
                                                                   for i in verified]
        point = {
            "entries": size, "queries": len(query_texts), "hits": hits,
            "lookups_needing_minilm": dense_lookups, "minilm_texts": dense_texts,
            "parts_ms": {name: {"p50": _pct(v, 50), "p95": _pct(v, 95)}
                         for name, v in parts.items() if v},
            "index_bytes": stats.vector_bytes, "load_before": load_before,
            "load_after": load_after, "model_pairs": scored,
            "verify_ms_per_model_pair": sum(parts["verify"]) / scored if scored else None,
            "verify_cpu_ms_per_model_pair": verify_cpu * 1e3 / scored if scored else None,
        }
        print(f"{size:,} entries: {dense_lookups} of {len(query_texts)} lookups needed MiniLM "
              f"({dense_texts} texts embedded, the queries and candidates met for the first "
              f"time); the verifier's model scored {scored} pairs"
              + (f", {sum(parts['verify']) / scored:.2f} ms of verification per scored pair "
                 f"({verify_cpu * 1e3 / scored:.2f} ms of CPU)" if scored else ""))
        results["sizes"][str(size)] = point
        for name, figures in point["parts_ms"].items():
            rows.append([f"{size:,}", name, figures["p50"], figures["p95"],
                         f"{load_before:.2f} / {load_after:.2f}"])
        if args.designs:
            design_rows += compare_designs(vectors[:size], corpus[:size], query_vectors, size,
                                           results["sizes"][str(size)])
    print(markdown_table(["entries", "part", "p50 ms", "p95 ms", "load 1-min before/after"],
                         rows))
    if design_rows:
        print("\nindex designs on the same queries (search only, static vectors)")
        print(markdown_table(["entries", "design", "p50 ms", "p95 ms", "top-1 = exact",
                              "top-4 = exact", "memory MB"], design_rows))
    return results


def compare_designs(vectors: np.ndarray, texts: Sequence[str], queries: np.ndarray, size: int,
                    point: dict[str, Any]) -> list[list[object]]:
    """Search-only time and agreement with the exact top-k for index configurations."""
    designs = {
        "exact float32 scan": {"exact_limit": 10**9},
        "PCA-48 scan + exact re-rank of 256": {"exact_limit": 0, "reduced_dims": 48},
        "PCA-64 scan + exact re-rank of 256": {"exact_limit": 0, "reduced_dims": 64},
        "PCA-96 scan + exact re-rank of 256 (the cache's, above 4,096)": {"exact_limit": 0,
                                                                          "reduced_dims": 96},
    }
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :4]
    out = []
    point["designs"] = {}
    for name, params in designs.items():
        index = VectorIndex(vectors.shape[1], **params)
        for i, text in enumerate(texts):
            index.add(SCOPE, str(i), text, vectors[i])
        for q in queries[:10]:
            index.search(SCOPE, q, k=4)
        times, top1, top4 = [], 0, 0
        for qi, q in enumerate(queries):
            a = time.perf_counter()
            found = index.search(SCOPE, q, k=4)
            times.append((time.perf_counter() - a) * 1e3)
            got = [int(n.digest) for n in found]
            top1 += got[0] == exact[qi, 0]
            top4 += set(got) == set(exact[qi].tolist())
        record = {"p50_ms": _pct(times, 50), "p95_ms": _pct(times, 95),
                  "top1_agreement": top1 / len(queries), "top4_agreement": top4 / len(queries),
                  "memory_mb": index.stats().vector_bytes / 2**20}
        point["designs"][name] = record
        out.append([f"{size:,}", name, record["p50_ms"], record["p95_ms"],
                    f"{record['top1_agreement']:.3f}", f"{record['top4_agreement']:.3f}",
                    record["memory_mb"]])
    return out


def _embeddings_cache(args: argparse.Namespace, encoder: SentenceEncoder) -> Path | None:
    """Vectors are kept per encoder: an int8 run must never read fp32 vectors."""
    if args.embeddings_cache is None:
        return CACHE_DIR / f"semantic-embeddings-{encoder.kind}.npz"
    return Path(args.embeddings_cache) if args.embeddings_cache else None


def main(argv: Sequence[str] | None = None) -> int:
    if os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        # one BLAS thread: under load, OpenBLAS threads spin and make every timing a lottery
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--threshold", type=float, default=None,
                        help="verifier probability threshold (default: the calibrated one)")
    parser.add_argument("--embeddings-cache", default=None,
                        help="an .npz keeping text embeddings between runs ('' = none; "
                             f"default {CACHE_DIR}/semantic-embeddings-ENCODER.npz)")
    parser.add_argument("--encoders", default=DEFAULT_ENCODER,
                        type=lambda v: [k for k in v.split(",") if k],
                        help=f"comma-separated, of {', '.join(ENCODER_KINDS)}: the first embeds "
                             "(both modes); --latency also times the others on every query")
    parser.add_argument("--verifier", choices=VERIFIER_KINDS, default="cross-encoder",
                        help="which verifier accepts candidates (setting cache_semantic_verifier)")
    parser.add_argument("--latency", action="store_true", help="measure lookup latency")
    parser.add_argument("--floor", action="store_true",
                        help="static cosine of the pairs the verifiers accept (training half)")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--no-designs", dest="designs", action="store_false",
                        help="latency mode: skip the index-design comparison")
    parser.add_argument("--export", type=Path, default=None,
                        help="latency mode: write entries.npy/queries.npy here")
    args = parser.parse_args(argv)
    unknown = set(args.encoders) - set(ENCODER_KINDS)
    if unknown or not args.encoders:
        parser.error(f"--encoders: expected some of {', '.join(ENCODER_KINDS)}")
    result = latency(args) if args.latency else floor(args) if args.floor else quality(args)
    print()
    print_json_line(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
