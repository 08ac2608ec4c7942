"""The complexity router: decisions of the shipped model on fixed prompts, the data
loader on RouteLLM-format files, and training on a small synthetic set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.routing.data import load_routing_data
from services.routing.features import N_FEATURES, featurize
from services.routing.router import ComplexityRouter
from services.routing.train import cheapest_at, routing_curve, train_router

HARD = (
    "Let p = (1, 2, 5, 4)(2, 3) in S_5 . Find the index of <p> in S_5.\n"
    "A. 8\nB. 2\nC. 24\nD. 120\nAnswer:"
)
EASY = "Translate 'good morning' into Spanish."


@pytest.fixture(scope="module")
def shipped() -> ComplexityRouter:
    return ComplexityRouter.load()


def test_shipped_router_sends_group_theory_to_the_strong_tier(shipped: ComplexityRouter) -> None:
    assert shipped.decide(HARD, 0.95, cost_aware=False).strong
    assert shipped.decide(HARD, 0.90, cost_aware=False).strong


def test_shipped_router_keeps_a_simple_request_on_the_cheap_tier(
    shipped: ComplexityRouter,
) -> None:
    assert not shipped.decide(EASY, 0.95, cost_aware=False).strong
    assert not shipped.decide(EASY, 0.90, cost_aware=False).strong


def test_a_higher_quality_target_never_routes_less_to_the_strong_tier(
    shipped: ComplexityRouter,
) -> None:
    for cost_aware in (False, True):
        assert shipped.threshold(0.99, cost_aware=cost_aware) <= shipped.threshold(
            0.95, cost_aware=cost_aware
        ) <= shipped.threshold(0.90, cost_aware=cost_aware)


def test_cost_aware_ranking_prefers_the_strong_tier_for_cheap_prompts(
    shipped: ComplexityRouter,
) -> None:
    short = shipped.decide(HARD)
    long = shipped.decide(HARD + "\n" + "Consider the group carefully. " * 100)
    assert short.priority > long.priority


def test_features_are_deterministic_and_in_range() -> None:
    columns, values = featurize(HARD)
    again = featurize(HARD)
    assert np.array_equal(columns, again[0]) and np.array_equal(values, again[1])
    assert columns.max() < N_FEATURES and len(columns) == len(values)
    assert featurize("")[0].size > 0  # structure features even for an empty prompt


def test_save_and_load_round_trip(shipped: ComplexityRouter, tmp_path: Path) -> None:
    path = tmp_path / "router.npz"
    shipped.save(path)
    loaded = ComplexityRouter.load(path)
    assert loaded.thresholds == shipped.thresholds
    assert loaded.p_strong(HARD) == pytest.approx(shipped.p_strong(HARD))


def test_loading_a_model_with_other_features_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trained with other features"):
        ComplexityRouter(np.zeros(3, np.float32), 0.0, {0.95: 0.5}, {0.95: 0.5})


def _write_subject(folder: Path, name: str, rows: list[tuple[str, bool, bool]]) -> None:
    lines = ["prompt,weak-model,strong-model,notes"]
    lines += [f'"{p}",{w},{s},x' for p, w, s in rows]
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")


def test_training_learns_which_prompts_the_weak_model_fails(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for subject in range(6):
        rows = []
        for i in range(60):
            hard = i % 2 == 0
            prompt = (f"compute the eigenvalue integral {i} of matrix {subject}" if hard
                      else f"name a colour of fruit {i} in basket {subject}")
            rows.append((prompt, (not hard) or rng.random() < 0.1, True))
        _write_subject(tmp_path, f"subject{subject}", rows)
    data = load_routing_data(tmp_path)
    assert data.pick_pair() == ("weak-model", "strong-model")
    router, oof = train_router(data, folds=3)
    weak_ok, strong_ok = data.correct["weak-model"], data.correct["strong-model"]
    ones = np.ones(len(oof))
    point = cheapest_at(routing_curve(oof, weak_ok, strong_ok, 0 * ones, ones), 0.95)
    assert point.strong_fraction < 0.6  # the hard half (and a little more), not everything
    assert router.decide("compute the eigenvalue integral 7 of matrix 9", cost_aware=False).strong
    assert not router.decide("name a colour of fruit 8 in basket 2", cost_aware=False).strong


def test_loader_rejects_files_without_a_prompt_column(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("question,a,b\nx,True,False\n")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        load_routing_data(tmp_path)
