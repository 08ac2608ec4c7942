"""The semantic index persisted in the store: batched upserts, and a replica rebuilt from
the rows (static vectors as they are, rows of the MiniLM index re-embedded)."""

from __future__ import annotations

from services.caching.semantic import EMBEDDING_MODEL, SemanticCache, SemanticRow
from services.caching.semantic_store import SemanticStore

SCOPE = ("tenant/a", "ctx")


def test_rows_saved_in_one_batch_rebuild_a_replica(any_store) -> None:
    cache = SemanticCache(verifier_kind="features")
    rows = [cache.add(SCOPE, "a", "What is the best way to learn Python?"),
            cache.add(SCOPE, "b", "How do I reset my password?", ttl_s=3600)]
    replaced = cache.add(SCOPE, "a", "What's the best way to learn Python?")
    legacy_text = "How can I lose weight quickly?"
    legacy = SemanticRow(*SCOPE, "c", legacy_text, cache.embed(legacy_text).tobytes(),
                         rows[0].created_at, None, EMBEDDING_MODEL)
    store = SemanticStore(any_store)
    store.save_many([*rows, replaced, legacy])  # "a" twice in one batch: the last one wins
    store.save_many([])

    stored = {r.digest: r for r in store.rows_since(None)}
    assert set(stored) == {"a", "b", "c"}
    assert stored["a"].text == "What's the best way to learn Python?"
    assert stored["a"].embedding_model == cache.static_model
    assert stored["b"].expires_at is not None and stored["c"].embedding_model == EMBEDDING_MODEL

    replica = SemanticCache(verifier=cache.verifier)
    assert replica.load(stored.values()) == 3
    assert replica.dense_known("c") and not replica.dense_known("a")
    match = replica.lookup(SCOPE, "how do i reset my password")
    assert match is not None and match.digest == "b"
    match = replica.lookup(SCOPE, "How can I lose weight quickly")
    assert match is not None and match.digest == "c"


def test_a_refresh_reads_only_the_rows_a_replica_lacks(any_store) -> None:
    cache = SemanticCache(verifier_kind="features")
    store = SemanticStore(any_store)
    store.save_many([cache.add(SCOPE, f"d{i}", f"question number {i}") for i in range(1200)])
    replica = SemanticCache(verifier=cache.verifier)
    assert replica.load(store.rows_since(None, known=replica.holds)) == 1200  # 3 chunks
    store.save(cache.add(SCOPE, "new", "How do I reset my password?"))
    fresh = store.rows_since(None, known=replica.holds)
    assert [r.digest for r in fresh] == ["new"]
    assert len(store.rows_since(None)) == 1201  # without ``known``: every live row
