"""The cascade's answer judge and the router's novelty detector, without a gateway: the
features an answer is judged on, the shipped judge on answers whose content decides,
training on RouteLLM-format files with answers, and prompts unlike the training data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.routing.answer_features import (
    FEATURE_NAMES,
    answer_features,
    calculations,
    evaluate,
    final_answers,
)
from services.routing.data import concat, load_routing_data, task_family
from services.routing.judge import AnswerJudge
from services.routing.novelty import NoveltyDetector, fit_novelty
from services.routing.train import train_all
from services.routing.train_judge import cascade_threshold, joint_thresholds

PROBLEM = ("A baker makes 12 loaves a day and sells each for $3. How many dollars does "
           "the baker make in 5 days?")
RIGHT = ("Each day the baker makes 12 * 3 = $<<12*3=36>>36.\n"
         "In 5 days that is 36 * 5 = $<<36*5=180>>180.\n#### 180")
WRONG_SUM = ("Each day the baker makes 12 * 3 = $<<12*3=36>>36.\n"
             "In 5 days that is 36 * 5 = $<<36*5=160>>160.\n#### 160")
CONTRADICTS = ("Each day the baker makes 12 x 3 = 36 dollars.\n"
               "In 5 days that is 36 x 5 = 180 dollars.\n#### 150")
FEATURE = {name: i for i, name in enumerate(FEATURE_NAMES)}


def features(prompt: str, answer: str, **kw) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, answer_features(prompt, answer, **kw), strict=True))


def test_arithmetic_is_recomputed_in_annotations_and_plain_text() -> None:
    assert evaluate("2/5*60") == pytest.approx(24)
    assert evaluate("__import__('os')") is None and evaluate("1/0") is None
    checks, results = calculations("She pays 3 x $1,200 = $3,600, then 3600 / 4 = 900.")
    assert checks == [(3600, 3600), (900, 900)] and results == [3600, 900]
    assert final_answers("so the answer is 42.\n#### 42") == [42, 42]
    right, wrong = features(PROBLEM, RIGHT), features(PROBLEM, WRONG_SUM)
    assert right["any_wrong_calculation"] == 0 and wrong["any_wrong_calculation"] == 1
    assert wrong["wrong_calculation_share"] == pytest.approx(0.5)
    assert features(PROBLEM, CONTRADICTS)["final_contradicts_last_result"] == 1
    assert right["final_contradicts_last_result"] == 0


def test_format_against_what_the_prompt_asks() -> None:
    weight = "How much does one loaf weigh if 4 loaves weigh 10 kg?"
    assert features(weight, "10 / 4 = 2.5\n#### 2.5")["count_not_whole"] == 0
    how_many = "How many apples are left if 7 of 10 are eaten?"
    assert features(how_many, "#### 2.5")["count_not_whole"] == 1
    assert features(how_many, "Some apples are left.")["no_final_number"] == 1
    choice = "Which is a mammal?\nA. Trout\nB. Whale\nC. Shark\nD. Eel\nAnswer:"
    assert features(choice, "B")["options_letter_mismatch"] == 0
    assert features(choice, "A or B, hard to say")["options_letter_mismatch"] == 1
    assert features(choice, "I'm not sure, it might be B")["hedging"] == 1
    lp = features(choice, "B", token_logprobs=[-0.1, -3.0])
    assert lp["has_logprobs"] == 1 and lp["min_logprob"] == pytest.approx(-0.3)


def test_the_shipped_judge_trusts_consistent_arithmetic_over_wrong_arithmetic() -> None:
    judge = AnswerJudge.load()
    right = judge.judge(PROBLEM, RIGHT)
    wrong = judge.judge(PROBLEM, WRONG_SUM)
    assert right.score > wrong.score
    assert "wrong arithmetic" in wrong.reasons and "wrong arithmetic" not in right.reasons
    for target in (0.90, 0.95, 0.99):
        assert 0 < judge.threshold(target) <= 1.01
    assert judge.threshold(0.90) <= judge.threshold(0.95) <= judge.threshold(0.99)
    assert judge.meta["rows"] >= 600  # trained on the GSM8K dev answers


def test_judge_files_of_other_features_are_refused(tmp_path: Path) -> None:
    raw = json.loads(AnswerJudge.load().to_json())
    raw["features"] = raw["features"][:-1]
    with pytest.raises(ValueError, match="other features"):
        AnswerJudge.from_json(json.dumps(raw))
    judge = AnswerJudge.load()
    judge.save(tmp_path / "judge.json")
    again = AnswerJudge.load(tmp_path / "judge.json")
    assert again.judge(PROBLEM, RIGHT).score == pytest.approx(judge.judge(PROBLEM, RIGHT).score)
    assert again.router_thresholds == judge.router_thresholds


def test_cascade_thresholds_keep_the_target_at_the_least_cost() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    weak_ok = np.array([True, True, True, False, False, False])
    strong_ok = np.ones(6, bool)
    # accepting the top three keeps 100%; the fourth would cost a right answer
    assert cascade_threshold(scores, weak_ok, strong_ok, 1.0) == pytest.approx(0.7)
    assert cascade_threshold(scores, weak_ok, strong_ok, 0.8) == pytest.approx(0.6)
    router_p = np.array([0.1, 0.1, 0.1, 0.2, 0.9, 0.9])
    direct, judged = joint_thresholds(scores, router_p, weak_ok, strong_ok, 1.0,
                                      cheap_cost=0.05)
    # the router's sure ones (the three the weak model fails) skip the cheap call
    assert direct == pytest.approx(np.quantile(router_p, 0.5))
    assert judged == pytest.approx(0.7)


def test_novel_prompts_are_those_far_from_every_training_topic() -> None:
    prompts = [f"Question about {topic} number {i}: which option is right?\nA. x\nB. y\nAnswer:"
               for topic in ("law", "biology", "history") for i in range(20)]
    groups = [p.split()[2] for p in prompts]
    detector = fit_novelty(prompts, groups, k=5)
    assert not detector.novel("Question about law number 33: which option is right?\n"
                              "A. x\nB. y\nAnswer:")[0]
    novel, similarity = detector.novel("Write a haiku on autumn leaves falling softly")
    assert novel and similarity < detector.threshold
    again = NoveltyDetector.from_bytes(detector.to_bytes())
    assert again.similarity("Write a haiku") == pytest.approx(detector.similarity("Write a haiku"))


def test_the_shipped_detector_knows_mmlu_and_gsm8k_but_not_chat() -> None:
    detector = NoveltyDetector.load()
    assert not detector.novel(PROBLEM)[0]
    assert not detector.novel("Which of these is a primary color?\nA. Green\nB. Red\n"
                              "C. Purple\nD. Orange\nAnswer:")[0]
    assert detector.novel("Translate 'good morning' into Spanish.")[0]


def _write(folder: Path, name: str, rows: list[tuple[str, bool, bool, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["prompt,weak,strong,weak_response"]
    lines += [f'"{p}",{w},{s},"{a}"' for p, w, s, a in rows]
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")


def test_training_on_two_families_with_answers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for family in ("alpha", "beta"):
        rows = []
        for i in range(80):
            a, b = int(rng.integers(2, 30)), int(rng.integers(2, 30))
            ok = bool(rng.random() < 0.6)
            shown = a * b if ok else a * b + int(rng.integers(1, 9))
            rows.append((f"{family} task {i}: how many is {a} times {b}?", ok, True,
                         f"{a} * {b} = <<{a}*{b}={shown}>>{shown}\n#### {shown}"))
        _write(tmp_path / family, f"{family}_set", rows)
    parts = [load_routing_data(tmp_path / f) for f in ("alpha", "beta")]
    data = concat(parts)
    assert len(data.responses["weak"]) == 160 and task_family("alpha_set") == "alpha"
    assert task_family("mmlu_virology") == "mmlu_other"
    trained = train_all(data, weak="weak", strong="strong", folds=3)
    assert trained.router.meta["calibration"] == "leave-family-out"
    assert trained.judge is not None and trained.judge_oof is not None
    weak_ok = data.correct["weak"]
    # the recomputed arithmetic separates right answers from wrong ones out of fold
    assert trained.judge_oof[weak_ok].mean() > trained.judge_oof[~weak_ok].mean() + 0.3
    assert not trained.novelty.novel("alpha task 3: how many is 4 times 5?")[0]
