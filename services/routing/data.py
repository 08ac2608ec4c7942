"""Routing data: prompts with one boolean correctness column per model (RouteLLM's format).

Any CSV with a ``prompt`` column and boolean columns (``True``/``False``, ``1``/``0``)
is accepted; other columns are ignored. A folder of such files is one data set, each
file one group (an MMLU subject), which cross-validation keeps together so the router
is always tested on subjects it never saw.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass(frozen=True)
class RoutingData:
    prompts: list[str]
    groups: list[str]
    correct: dict[str, np.ndarray]  # model -> bool per prompt

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
        elif set(found) != set(columns):
            raise ValueError(f"{file}: correctness columns {found} differ from {list(columns)}")
        for row in rows:
            prompts.append(row["prompt"])
            groups.append(file.stem)
            for name in columns:
                columns[name].append(row[name].strip().lower() in _TRUE)
    if columns is None:
        raise ValueError(f"every CSV under {path} is empty")
    return RoutingData(prompts, groups, {m: np.asarray(v, bool) for m, v in columns.items()})


def _boolean_columns(rows: list[dict[str, str]]) -> list[str]:
    names = []
    for name in rows[0]:
        if name == "prompt" or name is None:
            continue
        values = {(row.get(name) or "").strip().lower() for row in rows}
        if values <= _TRUE | _FALSE:
            names.append(name)
    return names
