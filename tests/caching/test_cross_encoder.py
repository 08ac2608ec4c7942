"""The cross-encoder verifier: the shipped ONNX model (no PyTorch), the two-stage lookup
with its guards, questions too long to judge, and the embedding batcher."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from services.caching.semantic import SemanticCache, load_verifier
from services.caching.semantic.cross_encoder import (
    MODEL_PATH,
    SPEC_PATH,
    SPEC_PATHS,
    CrossEncoderVerifier,
    guard_refuses,
)
from services.embeddings.batcher import EmbeddingBatcher
from services.settings import Settings

SCOPE = ("tenant/a", "ctx")
REPO = Path(__file__).resolve().parents[2]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def cache() -> SemanticCache:
    return SemanticCache()  # the default: the shipped cross-encoder at its threshold


def lookup(cache: SemanticCache, stored: str, asked: str) -> str | None:
    cache.index.clear()
    cache.add(SCOPE, digest(stored), stored)
    match = cache.lookup(SCOPE, asked)
    return match.digest if match else None


def test_the_shipped_model_is_small_recorded_and_loads_without_torch() -> None:
    spec = json.loads(SPEC_PATH.read_text())
    data = MODEL_PATH.read_bytes()
    assert len(data) <= 25 * 10**6 == 25_000_000
    assert hashlib.sha256(data).hexdigest() == spec["model"]["sha256"]
    assert isinstance(spec["training"]["run"]["seed"], int)
    assert spec["training"]["pairs_file"] == "qqp_pairs_dev.json"
    assert 0.0 < spec["threshold"] < 1.0
    assert {"calibrated_precision", "recall", "target_reached"} <= spec["calibration"].keys()
    # a fresh interpreter scores pairs with ONNX Runtime, reproduces the logits PyTorch
    # gave at training time, and never imports PyTorch
    code = (
        "import json, sys\n"
        "from services.caching.semantic.cross_encoder import SPEC_PATH, CrossEncoder\n"
        "checks = json.loads(SPEC_PATH.read_text())['model']['checks']\n"
        "z = CrossEncoder().logits([(a, b) for a, b, _, _ in checks])\n"
        "assert all(abs(x - c[2]) < 0.05 for x, c in zip(z, checks)), (z, checks)\n"
        "p = CrossEncoder().probabilities([(a, b) for a, b, _, _ in checks])\n"
        "assert all(0 < x < 1 for x in p), p\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_record_is_the_build_scripts_recipe_run_to_the_end() -> None:
    """The shipped weights come from scripts/build_cross_encoder.sh as it stands: the
    student's flags (the script's last training run), the whole schedule, its teacher
    recorded, and a threshold chosen by the calibration's rule."""
    spec = json.loads(SPEC_PATH.read_text())
    run = spec["training"]["run"]
    script = (REPO / "scripts" / "build_cross_encoder.sh").read_text()
    flags = dict(re.findall(
        r"--(epochs|max-length|freeze-layers|lr|threads|layers|teacher-weight) (\S+)", script))
    assert float(flags["epochs"]) == run["epochs"] and float(flags["lr"]) == run["lr"]
    assert int(flags["max-length"]) == run["max_length"] == spec["max_tokens"]
    assert int(flags["freeze-layers"]) == run["freeze_layers"]
    assert int(flags["threads"]) == run["threads"]
    assert flags["layers"] == run["layers"] and "layers 0,2,4" in spec["training"]["base"]
    assert float(flags["teacher-weight"]) == run["teacher_weight"]
    assert re.search(r"SEED=\$\{SEED:-(\d+)\}", script)[1] == str(run["seed"])
    assert "--stop-after-steps" not in script and run["steps"] == run["planned_steps"]
    assert spec["training"]["examples_sha256"] == run["examples_sha256"]
    # the student learnt from a six-layer teacher whose graph and calibration are recorded
    teacher = spec["training"]["teacher"]
    assert teacher["model"]["sha256"] != spec["model"]["sha256"]
    assert teacher["model"]["bytes"] > spec["model"]["bytes"]
    assert isinstance(teacher["combine"], dict) and 0.0 < teacher["threshold"] < 1.0
    calibration = spec["calibration"]
    assert calibration["target_reached"] == (
        calibration["calibrated_precision"] >= spec["target_precision"])
    assert isinstance(spec["combine"], dict) and spec["combine"]["fitted_on_pairs"] > 0
    # the threshold's point on the recorded curve is no better than the recorded one
    # (the curve is on a 0.01 grid; the threshold between two of its points)
    below = [r for r in calibration["curve"] if r["threshold"] <= spec["threshold"]]
    assert below and below[-1]["recall"] >= calibration["recall"]


def test_the_gateway_default_is_the_feature_verifier_and_a_bad_name_is_refused(
        monkeypatch) -> None:
    # the cross-encoder is an option: on LLM rewordings its calibrated threshold serves
    # less than the feature verifier's (docs/benchmarks.md, "Semantic cache")
    monkeypatch.delenv("OPTENGINE_CACHE_SEMANTIC_VERIFIER", raising=False)
    assert Settings().cache_semantic_verifier == "features"
    monkeypatch.setenv("OPTENGINE_CACHE_SEMANTIC_VERIFIER", "cross-encoder")
    assert Settings().cache_semantic_verifier == "cross-encoder"
    monkeypatch.setenv("OPTENGINE_CACHE_SEMANTIC_VERIFIER", "cosine")
    with pytest.raises(ValidationError, match="cache_semantic_verifier"):
        Settings()
    with pytest.raises(ValueError, match="unknown semantic verifier 'cosine'"):
        load_verifier("cosine")  # type: ignore[arg-type]


def test_the_graph_reproduces_the_trainers_logits() -> None:
    spec = json.loads(SPEC_PATH.read_text())
    verifier = CrossEncoderVerifier.load()
    checks = spec["model"]["checks"]
    ours = verifier.encoder.logits([(a, b) for a, b, _, _ in checks])
    torch_logits = np.array([x for _, _, x, _ in checks])
    assert np.abs(ours - torch_logits).max() <= spec["model"]["largest_logit_drift"] + 1e-3


def test_a_paraphrase_is_served_through_the_model(cache: SemanticCache) -> None:
    stored = "What are the symptoms of diabetes?"
    asked = "What are the signs of diabetes?"
    assert lookup(cache, stored, asked) == digest(stored)
    match = cache.score(SCOPE, asked)
    assert match is not None and cache.threshold <= match.probability < 1.0  # the model's


def test_an_unrelated_question_in_the_scope_is_refused(cache: SemanticCache) -> None:
    assert lookup(cache, "What is the best way to learn Python?",
                  "What is the best way to learn guitar?") is None


@pytest.mark.parametrize(("stored", "asked", "guard"), [
    ("How many calories are in 2 eggs?", "How many calories are in 3 eggs?", "numbers"),
    ("Can I take ibuprofen with alcohol?", "Can I not take ibuprofen with alcohol?",
     "negation"),
    ("Why is my phone not charging?", "Why is my phone charging?", "negation"),
    ("How do I get a visa for Canada?", "How do I get a visa for Australia?", "entities"),
])
def test_guards_refuse_before_the_model_even_at_a_low_threshold(
        cache: SemanticCache, stored: str, asked: str, guard: str) -> None:
    assert guard_refuses(asked, stored) == guard
    low = SemanticCache(verifier=cache.verifier.with_threshold(0.01), index=cache.index)
    cache.index.clear()
    cache.add(SCOPE, digest(stored), stored)
    assert low.lookup(SCOPE, asked) is None
    scored = low.score(SCOPE, asked)
    assert scored is not None and scored.probability == 0.0


def test_same_words_are_the_same_question(cache: SemanticCache) -> None:
    stored = "How do I reset my password?"
    assert lookup(cache, stored, "how do I reset my password") == digest(stored)


def test_questions_too_long_for_the_window_are_not_served(cache: SemanticCache) -> None:
    short = "How do I reset my password?"
    long = " ".join(["Please read this long description of my problem carefully."] * 12)
    assert cache.serves(short)
    assert not cache.serves(long)
    assert not cache.serves("x" * 10_000)  # refused before tokenizing
    # a stored question that leaves no room for the asked one is never scored
    cache.index.clear()
    cache.add(SCOPE, digest(long), long)
    scored = cache.score(SCOPE, long + " Thanks!")
    assert scored is None or scored.probability == 0.0


# --- the embedding batcher ---------------------------------------------------------------


class _CountingEncoder:
    def __init__(self) -> None:
        self.calls: list[int] = []
        self.release = threading.Event()

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        self.release.wait(5)  # hold the first pass so that the others queue up
        return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)


def test_waiting_texts_are_embedded_together_and_each_gets_its_row() -> None:
    encoder = _CountingEncoder()
    batcher = EmbeddingBatcher(encoder, max_wait_s=0.001)

    async def main() -> list[np.ndarray]:
        first = asyncio.ensure_future(batcher.embed("a"))
        while not encoder.calls:  # the worker is inside the first pass
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.embed("b" * n)) for n in range(2, 12)]
        await asyncio.sleep(0)  # let every request enqueue
        encoder.release.set()
        return await asyncio.gather(first, *rest)

    try:
        vectors = asyncio.run(main())
    finally:
        batcher.close()
    assert [v[0] for v in vectors] == [1.0, *range(2, 12)]
    assert encoder.calls[0] == 1 and sum(encoder.calls) == 11
    assert len(encoder.calls) < 11  # the ten that waited shared passes
    assert batcher.texts == 11 and batcher.batches == len(encoder.calls)


def test_a_failed_pass_fails_its_callers_and_the_batcher_goes_on() -> None:
    fail = {"on": True}

    def encode(texts: list[str]) -> np.ndarray:
        if fail["on"]:
            raise RuntimeError("encoder broke")
        return np.ones((len(texts), 2), dtype=np.float32)

    batcher = EmbeddingBatcher(encode)

    async def main() -> np.ndarray:
        with pytest.raises(RuntimeError, match="encoder broke"):
            await batcher.embed("a")
        fail["on"] = False
        return await batcher.embed("b")

    try:
        assert asyncio.run(main()).tolist() == [1.0, 1.0]
    finally:
        batcher.close()


# --- the combiner on the static cosine (no MiniLM pass) -----------------------------------


@pytest.fixture(scope="module")
def static_cache() -> SemanticCache:
    # a low threshold, so that the model's verdict decides, not the rules
    return SemanticCache(verifier_kind="cross-encoder-static", min_probability=0.3)


def test_the_static_calibration_is_the_same_model_refitted_and_recorded() -> None:
    minilm, static = (json.loads(SPEC_PATHS[c].read_text()) for c in ("minilm", "static"))
    assert static["cosine"] == "static" and minilm.get("cosine", "minilm") == "minilm"
    assert static["model"] == minilm["model"] and static["training"] == minilm["training"]
    assert isinstance(static["combine"], dict) and static["combine"] != minilm["combine"]
    assert 0.0 < static["threshold"] < 1.0
    calibration = static["calibration"]
    assert "static vectors" in calibration["method"]
    assert calibration["target_reached"] == (
        calibration["calibrated_precision"] >= static["target_precision"])


def test_a_lookup_on_the_static_cosine_runs_no_minilm_pass(
        static_cache: SemanticCache, cache: SemanticCache) -> None:
    stored, asked = "What are the symptoms of diabetes?", "What are the signs of diabetes?"
    static_cache.index.clear()
    static_cache.add(SCOPE, digest(stored), stored)
    passes, scored = static_cache.dense_texts, static_cache.verifier.pairs_scored
    match = static_cache.score(SCOPE, asked)
    assert match is not None and match.digest == digest(stored)
    assert 0.0 < match.probability < 1.0  # the model's, combined with the static cosine
    assert match.cosine == pytest.approx(float(
        static_cache.static_embed(stored) @ static_cache.static_embed(asked)), abs=1e-5)
    found_match, found = asyncio.run(static_cache.lookup_async(SCOPE, asked))
    assert found_match is not None and found.dense is None
    assert static_cache.verifier.pairs_scored == scored + 2
    assert static_cache.dense_texts == passes  # neither path ran MiniLM
    # the same lookup through the calibration on MiniLM cosines does run a pass
    cache.index.clear()
    cache.add(SCOPE, digest(stored), stored)
    before = cache.dense_texts
    cache.score(SCOPE, asked)
    assert cache.dense_texts - before == 2  # the question and the candidate


def test_the_static_option_is_a_setting_and_a_bad_cosine_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("OPTENGINE_CACHE_SEMANTIC_VERIFIER", "cross-encoder-static")
    assert Settings().cache_semantic_verifier == "cross-encoder-static"
    spec = dict(json.loads(SPEC_PATHS["static"].read_text()), cosine="bm25")
    with pytest.raises(ValueError, match="cosine 'bm25'"):
        CrossEncoderVerifier(spec)
