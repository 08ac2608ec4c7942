"""The demo's closing cost story: why the run cost what it cost, lever by lever.

On this machine the worker runs on a CPU, and a self-hosted model is priced per GPU-hour
over the tokens it produces: a CPU's few hundred tokens per second make every token dear,
so the run can cost more than the hosted baseline. The story says so in figures: savings
by lever (the same attribution as the cost reports), the ROI block, the throughput the
self-hosted price was derived from, and what the same tokens would cost on the GPU the
settings describe (``self_hosted.gpu_name`` at ``default_output_tokens_per_second``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select

from models import RequestLog
from services.caching import HIT_LAYERS
from services.costs import PriceCatalog
from services.costs.reports import (
    LEVER_NAMES,
    LEVERS,
    CostSummary,
    Roi,
    hosted_upstreams,
    investment,
    live_summary,
    monthly_rate,
)
from services.costs.self_hosted import SelfHostedModel, self_hosted_rates
from services.settings import Settings

_SECONDS_PER_HOUR = 3600.0


@dataclass
class SelfHostedRun:
    """The self-hosted rows of the run: what they were priced at, and on the named GPU."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    effective_tokens_per_s: float | None
    gpu_cost_usd: float


@dataclass
class CostStory:
    summary: CostSummary
    roi: Roi
    run_seconds: float
    self_hosted: list[SelfHostedRun]
    settings: Settings

    def lever_rows(self) -> list[tuple[str, str]]:
        s = self.summary
        rows = [(LEVER_NAMES[lever], _usd(s.saved_by_lever[lever])) for lever in LEVERS]
        rows += [("sum of levers", _usd(sum(s.saved_by_lever.values()))),
                 ("baseline - actual", _usd(s.saved_usd))]
        return rows

    def roi_rows(self) -> list[tuple[str, str, str]]:
        return [(f.name, f.text, f.formula) for f in self.roi.figures()]

    def assumptions(self) -> list[str]:
        pricing = self.settings.self_hosted
        lines = []
        for run in self.self_hosted:
            measured = ("n/a" if run.effective_tokens_per_s is None
                        else f"{run.effective_tokens_per_s:,.0f} output tokens/s")
            lines.append(
                f"{run.model} is priced as self-hosted: ${pricing.gpu_hour_usd:,.2f} per "
                f"GPU-hour x {pricing.gpus_per_worker} GPU over the throughput the gateway "
                f"measured on this machine ({measured}; this demo runs on a CPU), input "
                f"tokens at {pricing.input_cost_ratio:g} of an output token: "
                f"{run.prompt_tokens:,} + {run.completion_tokens:,} tokens cost "
                f"{_usd(run.cost_usd)}."
            )
            lines.append(
                f"The same tokens on the {pricing.gpu_name} the settings describe "
                f"(self_hosted.default_output_tokens_per_second = "
                f"{pricing.default_output_tokens_per_second:,.0f}) would cost "
                f"{_usd(run.gpu_cost_usd)}; the baseline "
                f"({self.settings.baseline_model}, hosted) was {_usd(self.summary.baseline_usd)}."
            )
        if not lines:
            lines.append("No request of this run was served by a self-hosted worker.")
        return lines


def cost_story(engine: Engine, settings: Settings, since: datetime, until: datetime
               ) -> CostStory:
    catalog = PriceCatalog.from_settings(settings)
    summary = live_summary(engine, catalog, hosted_upstreams(settings), since, until)
    seconds = max((until - since).total_seconds(), 1.0)
    spend = investment(settings)
    roi = Roi(spend.one_off_usd, spend.monthly_usd,
              monthly_rate(summary.saved_usd, seconds / 86400))
    return CostStory(summary, roi, seconds, _self_hosted_runs(engine, settings, since, until),
                     settings)


def _self_hosted_runs(engine: Engine, settings: Settings, since: datetime, until: datetime
                      ) -> list[SelfHostedRun]:
    hosted = hosted_upstreams(settings)
    c = RequestLog.__table__.c
    query = (
        select(c.model_served, c.worker, func.sum(c.prompt_tokens), func.sum(c.completion_tokens),
               func.sum(c.cost_usd))
        .where(c.created_at >= since, c.created_at < until, c.cost_usd.is_not(None),
               c.worker.is_not(None), c.model_served.is_not(None),
               c.cache_layer.is_(None) | c.cache_layer.not_in(sorted(HIT_LAYERS)))
        .group_by(c.model_served, c.worker)
    )
    pricing = settings.self_hosted
    by_model: dict[str, list[float]] = {}
    with engine.connect() as conn:
        for model, worker, prompt, completion, cost in conn.execute(query):
            if worker in hosted:
                continue
            totals = by_model.setdefault(model, [0, 0, 0.0])
            totals[0] += int(prompt or 0)
            totals[1] += int(completion or 0)
            totals[2] += float(cost or 0.0)
    runs = []
    for model, (prompt, completion, cost) in sorted(by_model.items()):
        weighted = completion + pricing.input_cost_ratio * prompt  # in output-token units
        per_token = cost / weighted if weighted else 0.0
        tokens_per_s = (pricing.gpu_hour_usd * pricing.gpus_per_worker / _SECONDS_PER_HOUR
                        / per_token) if per_token else None
        gpu = self_hosted_rates(model, SelfHostedModel(), pricing)
        gpu_cost = prompt * gpu.input_usd_per_token + completion * gpu.output_usd_per_token
        runs.append(SelfHostedRun(model, int(prompt), int(completion), cost, tokens_per_s,
                                  gpu_cost))
    return runs


def _usd(value: float) -> str:
    return f"${value:,.6f}"


__all__ = ["CostStory", "cost_story"]
