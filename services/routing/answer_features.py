"""Features of a (prompt, answer) pair that say whether the answer can be trusted.

The cascade's learned scorer (``services.routing.judge``) reads these. They are chosen
to transfer across tasks, not to learn one task's vocabulary:

- internal consistency: every calculation the answer states is recomputed, both
  calculator annotations (``<<48/2=24>>``, as Mixtral and GSM8K-style answers write) and
  plain chains (``3 x 4 = 12``, ``120 / 8 = 15 = 15``); an answer whose arithmetic is
  wrong, whose final answer (``#### 42``, "the answer is 42") is not the result it
  computed last, or that states two different final answers contradicts itself;
- format against what the prompt asks: a count ("how many") answered with a fraction or
  a negative number, a multiple-choice prompt answered with no letter or several, a
  numeric question answered with no number;
- use of the prompt: the share of the prompt's numbers the answer uses (a word problem
  answered without half its numbers skipped a step) and numbers that appear from
  nowhere;
- length, hedging, refusals, truncation, token log-probabilities when the upstream
  returned them, and agreement of extra samples when self-consistency is configured.

Standard library only, a fraction of a millisecond per answer.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Sequence

from services.routing.cascade import HEDGE, REFUSAL

_NUMBER = r"-?\d+(?:\.\d+)?"
_ANNOTATION = re.compile(r"<<([^<>=]{1,200})=([^<>]{1,60})>>")
_CHAIN = re.compile(r"[\d(][\d\s.+\-*/()%]*(?:=[\s\d.+\-*/()%]*[\d)])+")
_NUM = re.compile(_NUMBER)
_FINAL_MARK = re.compile(r"####\s*\$?\s*(" + _NUMBER + ")")
_ANSWER_IS = re.compile(
    r"(?:answer is|answer:|final answer[^\d\n-]{0,20})[^\d\n-]{0,30}(" + _NUMBER + ")",
    re.I)
_COUNT_QUESTION = re.compile(r"\bhow many\b", re.I)
_NUMERIC_QUESTION = re.compile(
    r"\b(how (?:many|much|long|far|old|fast)|what (?:is the )?(?:total|number|amount|"
    r"percentage|price|cost))\b", re.I)
_OPTION = re.compile(r"^\s*([A-J])[.)]\s", re.M)
_LETTER = re.compile(r"(?:^|[\s(\"'*])([A-J])(?:$|[\s).,:\"'*])")
_ROUNDING = re.compile(r"\b(round(?:ed|ing)? (?:up|down|to)|approximately|about \d|roughly)|≈",
                       re.I)
_TIMES = re.compile(r"(?<=[\d)])\s*[x×]\s*(?=[\d(])")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}
MAX_CALCS = 40

FEATURE_NAMES = (
    "log_answer_chars",
    "log_length_ratio",
    "log_calculations",
    "wrong_calculation_share",
    "any_wrong_calculation",
    "final_contradicts_last_result",
    "final_not_computed",
    "several_final_answers",
    "no_final_number",
    "count_not_whole",
    "negative_final",
    "prompt_numbers_used",
    "log_new_numbers",
    "options_letter_mismatch",
    "hedging",
    "rounding",
    "refusal",
    "truncated",
    "empty",
    "has_logprobs",
    "mean_logprob",
    "min_logprob",
    "has_samples",
    "sample_agreement",
    "router_p_strong",
)
N_ANSWER_FEATURES = len(FEATURE_NAMES)


def normalise_math(text: str) -> str:
    """Arithmetic as Python reads it: ``\\*``, ``×``, ``x`` and ``÷`` as operators, no ``$``
    or thousands separators."""
    text = text.replace("\\*", "*").replace("÷", "/").replace("$", "").replace("−", "-")
    return _TIMES.sub("*", _THOUSANDS.sub("", text))


def evaluate(expression: str) -> float | None:
    """The value of an arithmetic expression (+ - * / and parentheses), or None."""
    expression = expression.strip().rstrip(".")
    if not expression or len(expression) > 200:
        return None
    percent = expression.endswith("%") and expression.count("%") == 1
    try:
        tree = ast.parse(expression.rstrip("%"), mode="eval")
        value = _value(tree.body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return value / 100 if percent else value


def _value(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left), _value(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _value(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    raise ValueError("not arithmetic")


def same_value(a: float, b: float) -> bool:
    """Equal up to the rounding an answer may state (two decimals, or 1%)."""
    return abs(a - b) <= max(0.01, 0.01 * abs(b), 0.005 * abs(a))


def calculations(answer: str) -> tuple[list[tuple[float, float]], list[float]]:
    """(stated expression value, stated result) of each calculation, and every stated
    result in order. Annotations first; plain chains in the text with them removed."""
    text = normalise_math(answer)
    found: list[tuple[int, list[float]]] = []  # (position, the chain's values)
    for match in _ANNOTATION.finditer(text):
        left, right = evaluate(match.group(1)), evaluate(match.group(2))
        if left is not None and right is not None:
            found.append((match.start(), [left, right]))
    plain = _ANNOTATION.sub(lambda m: " " * len(m.group(0)), text)
    for match in _CHAIN.finditer(plain):
        sides = match.group(0).split("=")
        values = [v for v in map(evaluate, sides) if v is not None]
        if len(values) >= 2 and any(op in sides[0] for op in "+-*/"):
            found.append((match.start(), values))
        if len(found) >= MAX_CALCS:
            break
    found.sort(key=lambda item: item[0])
    checks = [pair for _, values in found for pair in zip(values, values[1:], strict=False)]
    return checks[:MAX_CALCS], [values[-1] for _, values in found]


def final_answers(answer: str) -> list[float]:
    """The final answers the text states (``#### x``, "the answer is x"), in order."""
    text = normalise_math(answer)
    found = [(m.start(), float(m.group(1))) for m in _FINAL_MARK.finditer(text)]
    found += [(m.start(), float(m.group(1))) for m in _ANSWER_IS.finditer(text)]
    return [value for _, value in sorted(found)]


def _numbers(text: str) -> list[float]:
    return [float(n) for n in _NUM.findall(normalise_math(text))[:200]]


def answer_features(
    prompt: str,
    answer: str,
    *,
    finish_reason: str | None = None,
    token_logprobs: Sequence[float] | None = None,
    samples: Sequence[str] = (),
    router_p_strong: float = 0.5,
) -> list[float]:
    """One row of ``FEATURE_NAMES`` for the answer ``answer`` to ``prompt``."""
    checks, results = calculations(answer)
    wrong = sum(not same_value(a, b) for a, b in checks)
    finals = final_answers(answer)
    numbers = _numbers(answer)
    final = finals[-1] if finals else (numbers[-1] if numbers else None)
    contradicts = bool(finals and results and not same_value(finals[-1], results[-1]))
    not_computed = bool(finals and results and not any(same_value(finals[-1], r)
                                                       for r in results))
    several = len({round(f, 2) for f in finals}) > 1
    numeric_question = bool(_NUMERIC_QUESTION.search(prompt))
    count_not_whole = bool(_COUNT_QUESTION.search(prompt) and final is not None
                           and abs(final - round(final)) > 1e-6)
    prompt_numbers = set(_numbers(prompt))
    answer_numbers = set(numbers)
    used = (len(prompt_numbers & answer_numbers) / len(prompt_numbers)) if prompt_numbers else 1.0
    computed = {round(r, 4) for r in results} | {round(a, 4) for a, _ in checks}
    new = [n for n in answer_numbers if n not in prompt_numbers and round(n, 4) not in computed]
    options = set(_OPTION.findall(prompt))
    letters = {m for m in _LETTER.findall(answer[:400]) if m in options} if options else set()
    mean_lp = min_lp = 0.0
    if token_logprobs:
        mean_lp = sum(token_logprobs) / len(token_logprobs)
        min_lp = min(token_logprobs)
    agreement = 0.0
    if samples:
        mine = _gist(answer)
        agreement = sum(_gist(s) == mine for s in samples) / len(samples)
    return [
        math.log1p(len(answer)) / 8,
        math.log((len(answer) + 1) / (len(prompt) + 1)) / 3,
        math.log1p(len(checks)) / 3,
        wrong / len(checks) if checks else 0.0,
        float(wrong > 0),
        float(contradicts),
        float(not_computed),
        float(several),
        float(numeric_question and final is None),
        float(count_not_whole),
        float(final is not None and final < 0),
        used,
        math.log1p(len(new)) / 3,
        float(bool(options) and len(letters) != 1),
        float(bool(HEDGE.search(answer))),
        float(bool(_ROUNDING.search(answer))),
        float(bool(REFUSAL.search(answer))),
        float(finish_reason == "length"),
        float(not answer.strip()),
        float(bool(token_logprobs)),
        max(mean_lp, -10.0) / 5,
        max(min_lp, -20.0) / 10,
        float(bool(samples)),
        agreement,
        router_p_strong,
    ]


def _gist(text: str) -> str:
    """What two samples must share to agree: the final number if any, else the words."""
    finals = final_answers(text)
    if finals:
        return f"{finals[-1]:.4g}"
    numbers = _NUM.findall(text)
    if numbers:
        return numbers[-1]
    return " ".join(re.findall(r"\w+", text.lower()))
