"""Routing data: prompts with one boolean correctness column per model (RouteLLM's format).

Any CSV with a ``prompt`` column and boolean columns (``True``/``False``, ``1``/``0``)
is accepted; a ``<model>_response`` column next to a model's correctness column holds
that model's answer (what a cascade judges); other columns are ignored. A folder of
such files is one data set, each file one group (an MMLU subject), which
cross-validation keeps together so the router is always tested on subjects it never
saw; groups belong to task families (``task_family``), which leave-family-out
validation holds out whole.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RESPONSE_SUFFIX = "_response"
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass(frozen=True)
class RoutingData:
    prompts: list[str]
    groups: list[str]
    correct: dict[str, np.ndarray]  # model -> bool per prompt
    responses: dict[str, list[str]] = field(default_factory=dict)  # model -> answer text

    def accuracy(self, model: str) -> float:
        return float(self.correct[model].mean())

    def pick_pair(self, weak: str | None = None, strong: str | None = None) -> tuple[str, str]:
        """The (weak, strong) models: as named, else the least and most accurate."""
        for name in (weak, strong):
            if name is not None and name not in self.correct:
                raise ValueError(f"no correctness column {name!r}; have {sorted(self.correct)}")
        ranked = sorted(self.correct, key=self.accuracy)
        if len(ranked) < 2:
            raise ValueError("routing data needs correctness columns for at least two models")
        return weak or ranked[0], strong or ranked[-1]

    def subset(self, mask: np.ndarray) -> RoutingData:
        index = np.flatnonzero(mask)
        return RoutingData(
            prompts=[self.prompts[i] for i in index],
            groups=[self.groups[i] for i in index],
            correct={m: c[index] for m, c in self.correct.items()},
            responses={m: [r[i] for i in index] for m, r in self.responses.items()},
        )


def load_routing_data(path: Path) -> RoutingData:
    """Read one CSV or every CSV under a folder (recursively, in name order)."""
    files = [path] if path.is_file() else sorted(path.rglob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no CSV files under {path}")
    csv.field_size_limit(sys.maxsize)
    prompts: list[str] = []
    groups: list[str] = []
    columns: dict[str, list[bool]] | None = None
    responses: dict[str, list[str]] = {}
    for file in files:
        with file.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            continue
        if "prompt" not in rows[0]:
            raise ValueError(f"{file}: no 'prompt' column (columns: {list(rows[0])})")
        found = _boolean_columns(rows)
        if columns is None:
            columns = {name: [] for name in found}
            responses = {name: [] for name in found if f"{name}{RESPONSE_SUFFIX}" in rows[0]}
        elif set(found) != set(columns):
            raise ValueError(f"{file}: correctness columns {found} differ from {list(columns)}")
        for row in rows:
            prompts.append(row["prompt"])
            groups.append(file.stem)
            for name in columns:
                columns[name].append(row[name].strip().lower() in _TRUE)
            for name in responses:
                responses[name].append(row.get(f"{name}{RESPONSE_SUFFIX}") or "")
    if columns is None:
        raise ValueError(f"every CSV under {path} is empty")
    complete = {m: r for m, r in responses.items() if len(r) == len(prompts)}
    return RoutingData(prompts, groups, {m: np.asarray(v, bool) for m, v in columns.items()},
                       complete)


def _boolean_columns(rows: list[dict[str, str]]) -> list[str]:
    names = []
    for name in rows[0]:
        if name == "prompt" or name is None:
            continue
        values = {(row.get(name) or "").strip().lower() for row in rows}
        if values <= _TRUE | _FALSE:
            names.append(name)
    return names


# MMLU's own grouping of its 57 subjects (Hendrycks et al., 2021), used as task families
_MMLU_FAMILIES = {
    "stem": "abstract_algebra astronomy college_biology college_chemistry "
            "college_computer_science college_mathematics college_physics computer_security "
            "conceptual_physics electrical_engineering elementary_mathematics "
            "high_school_biology high_school_chemistry high_school_computer_science "
            "high_school_mathematics high_school_physics high_school_statistics "
            "machine_learning",
    "humanities": "formal_logic high_school_european_history high_school_us_history "
                  "high_school_world_history international_law jurisprudence "
                  "logical_fallacies moral_disputes moral_scenarios philosophy prehistory "
                  "professional_law world_religions",
    "social_sciences": "econometrics high_school_geography "
                       "high_school_government_and_politics high_school_macroeconomics "
                       "high_school_microeconomics high_school_psychology human_sexuality "
                       "professional_psychology public_relations security_studies sociology "
                       "us_foreign_policy",
    "other": "anatomy business_ethics clinical_knowledge college_medicine global_facts "
             "human_aging management marketing medical_genetics miscellaneous nutrition "
             "professional_accounting professional_medicine virology",
}
_FAMILY_OF_SUBJECT = {s: f"mmlu_{f}" for f, subjects in _MMLU_FAMILIES.items()
                      for s in subjects.split()}


def task_family(group: str) -> str:
    """The task family of a data file: MMLU subjects by MMLU's four categories, any other
    file (``gsm8k_responses`` -> ``gsm8k``) by its name up to the first underscore. Leave-
    family-out validation holds out whole families, so a router is scored on a kind of
    task it never saw, not on a sibling subject of the ones it learned."""
    if group.startswith("mmlu_"):
        return _FAMILY_OF_SUBJECT.get(group.removeprefix("mmlu_"), "mmlu_other")
    return group.split("_", 1)[0]


def concat(datasets: list[RoutingData]) -> RoutingData:
    """One data set of several (their correctness columns must name the same models);
    answers are kept only for models every part has them for (missing ones empty)."""
    if not datasets:
        raise ValueError("no routing data to join")
    models = set(datasets[0].correct)
    for part in datasets[1:]:
        if set(part.correct) != models:
            raise ValueError(f"data sets name different models: {sorted(models)} vs "
                             f"{sorted(part.correct)}")
    with_answers = {m for part in datasets for m in part.responses}
    return RoutingData(
        prompts=[p for part in datasets for p in part.prompts],
        groups=[g for part in datasets for g in part.groups],
        correct={m: np.concatenate([part.correct[m] for part in datasets]) for m in models},
        responses={m: [r for part in datasets
                       for r in part.responses.get(m, [""] * len(part.prompts))]
                   for m in with_answers},
    )
