"""The semantic cache: hits on paraphrases, refusals of the known false hits, scoping,
the index against brute force, and the shipped feature verifier model."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from services.caching.semantic import (
    EMBEDDING_MODEL,
    SemanticCache,
    SemanticRow,
    SemanticVerifier,
    VectorIndex,
)
from services.caching.semantic.features import FEATURE_NAMES, pair_features
from services.caching.semantic.train import MANIFEST_NAME, PACKAGE_DIR, train
from services.caching.semantic.verifier import MODEL_PATH

TENANT_A = ("tenant/a", "ctx-model-x-temp0-system-1")
TENANT_B = ("tenant/b", "ctx-model-x-temp0-system-1")
OTHER_MODEL = ("tenant/a", "ctx-model-y-temp0-system-1")
OTHER_PREFIX = ("tenant/a", "ctx-model-x-temp0-system-1-earlier-turns-differ")


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# the feature verifier's behaviour (the cross-encoder's: test_cross_encoder.py)
@pytest.fixture(scope="module")
def cache() -> SemanticCache:
    return SemanticCache(verifier_kind="features")


@pytest.fixture(scope="module")
def permissive() -> SemanticCache:
    """A threshold far below the calibrated one: the guards must hold on their own."""
    return SemanticCache(min_probability=0.5, verifier_kind="features")


def store_and_lookup(cache: SemanticCache, stored: str, asked: str,
                     scope: tuple[str, str] = TENANT_A) -> str | None:
    cache.index.clear()
    cache.add(scope, digest(stored), stored)
    match = cache.lookup(TENANT_A, asked)
    return match.digest if match else None


# --- behaviour ---------------------------------------------------------------------------


def test_paraphrase_hits_at_the_default_threshold(cache: SemanticCache) -> None:
    stored = "What is the best way to learn Python?"
    assert store_and_lookup(cache, stored, "What's the best way to learn Python?") == \
        digest(stored)


def test_same_words_in_another_case_or_punctuation_always_hit(cache: SemanticCache) -> None:
    stored = "How do I reset my password?"
    assert store_and_lookup(cache, stored, "how do I reset my password") == digest(stored)
    assert cache.verifier.probability("how do i reset my password", stored, 0.99) == 1.0


def test_a_lookup_may_bring_its_own_threshold(cache: SemanticCache) -> None:
    stored, asked = "How do I reset my password?", "How can I reset the password of my account?"
    assert store_and_lookup(cache, stored, asked) is None  # below the calibrated threshold
    match = cache.score(TENANT_A, asked)
    assert match is not None and not match.accepted
    looser = cache.lookup(TENANT_A, asked, min_probability=match.probability)
    assert looser is not None and looser.digest == digest(stored)
    assert cache.lookup(TENANT_A, asked, min_probability=min(1.0, match.probability + 1e-6)
                        ) is None


@pytest.mark.parametrize(("stored", "asked"), [
    ("How can I lose weight quickly?", "How can I lose weight fast?"),
    ("What are the symptoms of diabetes?", "What are the signs of diabetes?"),
    ("How do I improve my English speaking skills?",
     "How can I improve my English speaking skills?"),
])
def test_paraphrases_hit_at_a_lower_threshold(permissive: SemanticCache, stored: str,
                                              asked: str) -> None:
    assert store_and_lookup(permissive, stored, asked) == digest(stored)


@pytest.mark.parametrize(("stored", "asked"), [
    ("What is 15% of 200?", "What is 20% of 200?"),                        # number
    ("How many calories are in 2 eggs?", "How many calories are in 3 eggs?"),
    ("Why is my phone not charging?", "Why is my phone charging?"),        # negation
    ("Can I take ibuprofen with alcohol?", "Can I not take ibuprofen with alcohol?"),
    ("How do I make pancakes without eggs?", "How do I make pancakes with eggs?"),
    ("How do I get a visa for Canada?", "How do I get a visa for Australia?"),  # entity
    ("Who is the CEO of Google?", "Who is the CEO of Microsoft?"),
    ("How do I reset my iPhone?", "How do I reset my iPad?"),
])
def test_known_false_hits_are_refused_even_at_a_low_threshold(
        permissive: SemanticCache, stored: str, asked: str) -> None:
    permissive.index.clear()
    permissive.add(TENANT_A, digest(stored), stored)
    assert permissive.lookup(TENANT_A, asked) is None
    scored = permissive.score(TENANT_A, asked)
    assert scored is not None and not scored.accepted and scored.probability < 0.5


@pytest.mark.parametrize("scope", [TENANT_B, OTHER_MODEL, OTHER_PREFIX])
def test_another_scope_never_matches_even_the_same_text(permissive: SemanticCache,
                                                        scope: tuple[str, str]) -> None:
    text = "What is the best way to learn Python?"
    assert store_and_lookup(permissive, text, text, scope=scope) is None
    assert permissive.score(TENANT_A, text) is None  # not even a candidate


def test_rows_round_trip_and_expired_entries_are_not_served(cache: SemanticCache) -> None:
    stored = "What is the best way to learn Python?"
    asked = "What's the best way to learn Python?"
    cache.index.clear()
    vector = cache.static_embed(stored)
    cache.add(TENANT_A, "fresh", stored, vector=vector, ttl_s=60, now=1000.0)
    cache.add(TENANT_B, "old", stored, vector=vector, ttl_s=60, now=0.0)
    rows = cache.snapshot()
    assert {r.digest for r in rows} == {"fresh", "old"}
    assert all(len(r.embedding) == 4 * cache.index.dimension for r in rows)
    assert {r.embedding_model for r in rows} == {cache.static_model}

    rebuilt = SemanticCache(verifier=cache.verifier)
    assert rebuilt.load(rows, now=1030.0) == 1  # "old" expired at 60
    match = rebuilt.lookup(TENANT_A, asked, now=1030.0)
    assert match is not None and match.digest == "fresh"
    assert rebuilt.lookup(TENANT_A, asked, now=1061.0) is None  # expired since
    assert len(rebuilt) == 0  # and dropped from the index

    foreign = SemanticRow("tenant/a", "ctx", "x", stored, rows[0].embedding, 0.0, None,
                          embedding_model="another-model")
    assert rebuilt.load([foreign]) == 0


def test_rows_of_the_minilm_index_are_reembedded_statically_and_keep_their_vector(
        cache: SemanticCache) -> None:
    """Rows written before the static stage hold MiniLM vectors: they are indexed by their
    static vector and their MiniLM one is reused, so a lookup embeds only the question."""
    stored = "What is the best way to learn Python?"
    old = SemanticRow(*TENANT_A, "old-row", stored, cache.embed(stored).astype("<f4").tobytes(),
                      0.0, None, embedding_model=EMBEDDING_MODEL)
    wrong_size = SemanticRow(*TENANT_A, "cut-row", stored, b"\0" * 16, 0.0, None,
                             embedding_model=EMBEDDING_MODEL)
    rebuilt = SemanticCache(verifier=cache.verifier)
    assert rebuilt.load([old, wrong_size]) == 1
    assert rebuilt.dense_known("old-row")
    before = rebuilt.dense_texts
    match = rebuilt.lookup(TENANT_A, "What's the best way to learn Python?")
    assert match is not None and match.digest == "old-row"
    assert rebuilt.dense_texts - before == 1  # the question only
    assert rebuilt.snapshot()[0].embedding_model == rebuilt.static_model


# --- the static candidate stage ----------------------------------------------------------


def test_storing_never_runs_minilm(cache: SemanticCache) -> None:
    cache.index.clear()
    before = cache.dense_texts
    row = cache.add(TENANT_A, "a", "How do I make pancakes without eggs?")
    assert cache.dense_texts == before
    assert not cache.dense_known("a")
    assert np.allclose(row.vector(), cache.static_embed("How do I make pancakes without eggs?"))


@pytest.mark.parametrize(("stored", "asked"), [
    ("How many calories are in 2 eggs?", "How many calories are in 3 eggs?"),
    ("Why is my phone not charging?", "Why is my phone charging?"),
    ("How do I get a visa for Canada?", "How do I get a visa for Australia?"),
    ("Summarise this ticket #1041", "Summarise this ticket #1042"),
])
def test_a_rule_refuses_without_a_transformer_pass(permissive: SemanticCache, stored: str,
                                                   asked: str) -> None:
    permissive.index.clear()
    permissive.add(TENANT_A, digest(stored), stored)
    before = permissive.dense_texts
    found = permissive.candidates(TENANT_A, asked)
    assert found.decided and found.match is not None and not found.match.accepted
    assert found.match.digest == digest(stored)  # it was a candidate, refused by a rule
    assert permissive.lookup(TENANT_A, asked) is None
    assert permissive.dense_texts == before


def test_a_candidate_keeps_its_minilm_vector(permissive: SemanticCache) -> None:
    stored, asked = "How can I lose weight quickly?", "How can I lose weight fast?"
    permissive.index.clear()
    permissive.add(TENANT_A, digest(stored), stored)
    before = permissive.dense_texts
    assert permissive.lookup(TENANT_A, asked) is not None
    assert permissive.dense_texts - before == 2  # the question and the candidate
    assert permissive.dense_known(digest(stored))
    assert permissive.lookup(TENANT_A, "How do I lose weight fast?") is not None
    assert permissive.dense_texts - before == 3  # then the question only


def test_candidates_under_the_static_floor_are_not_verified(cache: SemanticCache) -> None:
    cache.index.clear()
    cache.add(TENANT_A, "a", "What is the capital of France?")
    found = cache.candidates(TENANT_A, "How do I fix a flat bicycle tyre?")
    assert found.decided and found.match is None and not found.admitted


def test_adds_from_threads_while_searching() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(exact_limit=500)  # crosses into the projected scan mid-run

    def writer(start: int) -> None:
        for i in range(start, 2000, 4):
            index.add(TENANT_A, str(i), f"text {i}", vectors[i])

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        index.search(TENANT_A, vectors[0], k=4)
    for t in threads:
        t.join()
    assert len(index) == 2000 and index.scope_size(TENANT_A) == 2000
    assert index.search(TENANT_A, vectors[1234], k=1)[0].digest == "1234"


# --- index -------------------------------------------------------------------------------


def unit_rows(rng: np.random.Generator, n: int, dim: int = 384) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_scan_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    data, queries = unit_rows(rng, 3000), unit_rows(rng, 50)
    index = VectorIndex()
    for i, v in enumerate(data):
        index.add(TENANT_A, str(i), "", v)
    for q in queries:
        truth = np.argsort(-(data @ q))[:5]
        found = index.search(TENANT_A, q, k=5)
        assert [int(n.digest) for n in found] == truth.tolist()
        assert np.allclose([n.cosine for n in found], (data @ q)[truth], atol=1e-5)


def test_projected_scan_finds_the_near_duplicates_a_cache_looks_for() -> None:
    """Above ``exact_limit`` the scan runs on a PCA projection and re-ranks exactly; the
    neighbours a cache can use (cosine >= 0.8) must come out as brute force finds them."""
    rng = np.random.default_rng(0)
    centres = unit_rows(rng, 40)  # clustered data, like sentence embeddings
    data = centres[rng.integers(0, 40, 6000)] + 0.03 * rng.standard_normal((6000, 384))
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    index = VectorIndex(exact_limit=1000, reduced_dims=64, candidates=256)
    for i, v in enumerate(data):
        index.add(TENANT_A, str(i), "", v)
    assert index.stats().vector_bytes > data.nbytes  # the projection exists
    picks = rng.integers(0, 6000, 100)
    queries = data[picks] + 0.02 * rng.standard_normal((100, 384)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for q in queries:
        scores = data @ q
        best = int(np.argmax(scores))
        assert scores[best] >= 0.8
        assert index.search(TENANT_A, q, k=4)[0].digest == str(best)


def test_remove_replace_and_move_keep_the_index_consistent() -> None:
    rng = np.random.default_rng(3)
    data = unit_rows(rng, 10)
    index = VectorIndex()
    for i, v in enumerate(data):
        index.add(TENANT_A, str(i), f"t{i}", v)
    assert index.remove("0") and not index.remove("0")
    assert index.search(TENANT_A, data[0], k=10)[0].digest != "0"
    assert index.search(TENANT_A, data[9], k=1)[0].digest == "9"  # moved into slot 0
    index.add(TENANT_A, "5", "replaced", data[5])
    assert index.search(TENANT_A, data[5], k=1)[0].text == "replaced"
    index.add(TENANT_B, "5", "moved", data[5])  # a digest lives in one scope
    assert index.scope_size(TENANT_A) == 8 and index.scope_size(TENANT_B) == 1
    assert len(index) == 9
    with pytest.raises(ValueError):
        index.add(TENANT_A, "bad", "", np.zeros(10))


# --- verifier ----------------------------------------------------------------------------


def test_shipped_verifier_loads_and_is_deterministic() -> None:
    spec = json.loads(MODEL_PATH.read_text())
    assert tuple(spec["features"]) == FEATURE_NAMES
    assert 0.5 < spec["threshold"] < 1.0
    a, b = SemanticVerifier.load(), SemanticVerifier.load()
    candidates = [("How do I learn Python?", 0.93), ("How do I learn Java?", 0.81),
                  ("What is 2+2?", 0.2)]
    pa = a.probabilities("What is the best way to learn Python?", candidates)
    assert pa == b.probabilities("What is the best way to learn Python?", candidates)
    assert all(0.0 <= p <= 1.0 for p in pa) and pa[0] > pa[1] > pa[2]
    assert SemanticVerifier.load(threshold=0.25).threshold == 0.25
    assert a.accept("What's the best way to learn Python?",
                    "What is the best way to learn Python?", 0.998)


def test_manifest_matches_the_model() -> None:
    spec = json.loads(MODEL_PATH.read_text())
    text = (PACKAGE_DIR / MANIFEST_NAME).read_text()
    assert hashlib.sha256(text.encode()).hexdigest() == spec["training"]["manifest_sha256"]
    hashes = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(hashes) == len(set(hashes)) == spec["training"]["pairs"]


def test_features_are_symmetric() -> None:
    a, b = "Who won the 2014 World Cup in Brazil?", "Who didn't win the world cup in 2018?"
    assert pair_features(a, b, 0.8) == pair_features(b, a, 0.8)


def _bag_of_words(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in encoder: hashed bag of words, unit length."""
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            out[row, int(hashlib.md5(word.encode()).hexdigest()[:6], 16) % 384] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _toy_pairs(path: Path) -> Path:
    topics = ["python", "java", "cooking", "running", "guitar", "chess", "painting", "french",
              "tax", "sleep", "coffee", "gardening", "travel", "music", "math", "physics"]
    rows = []
    for i, topic in enumerate(topics * 8):
        rows.append({"text_a": f"How do I learn {topic} fast? ({i})",
                     "text_b": f"How can I learn {topic} quickly? ({i})", "label": 1})
        rows.append({"text_a": f"How do I learn {topic} in {i} days?",
                     "text_b": f"How do I learn {topic} in {i + 1} days?", "label": 0})
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("kind", ["logistic", "gbdt"])
def test_training_regenerates_the_same_files(tmp_path: Path, kind: str) -> None:
    pairs = _toy_pairs(tmp_path / "pairs.json")
    outputs = []
    for run in ("one", "two"):
        out = tmp_path / run
        train(pairs, out_dir=out, model_kind=kind, target=0.9, folds=2, k=4, min_cosine=0.0,
              trees=20, depth=2, learning_rate=0.1, min_hits=1, hard_negatives_per_kind=5,
              embeddings_cache=None, encode=_bag_of_words)
        outputs.append(((out / "verifier.json").read_bytes(),
                        (out / MANIFEST_NAME).read_bytes()))
    assert outputs[0] == outputs[1]
    verifier = SemanticVerifier.load(tmp_path / "one" / "verifier.json")
    assert verifier.kind == kind
