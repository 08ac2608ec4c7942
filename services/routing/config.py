"""Model tiers, the models in them, budgets and the cascade: the ``routing`` setting.

Written in the YAML config (``routing:``) and validated when the gateway starts: an
unknown tier, a duplicate or unpriced model or a misspelt key stops the start with a
message naming the culprit, never a surprise at the first request. Example::

    routing:
      tiers: [fast_cheap, balanced, powerful]          # cheapest first
      models:
        - {name: gemma-3-270m, tier: fast_cheap, upstream: vllm, context_window: 8192}
        - {name: gpt-4o-mini, tier: balanced, upstream: openai, context_window: 128000}
        - {name: claude-sonnet-4-5, tier: powerful, upstream: anthropic,
           context_window: 200000, latency_slo_ms: 20000}
      substitution_tenants: [team-a]   # explicit models may be replaced for these
      budgets:
        "tenant:team-a": {limit_usd: 50, period: day, downgrade_at: 0.8}
      cascade: {enabled: true}          # threshold: the judge's, per quality target

Virtual model names: ``auto`` (95% of the strong tier's accuracy), ``auto:cheap`` (90%)
and ``auto:quality`` (99%): the quality targets the router's and the cascade judge's
thresholds are calibrated for.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.costs import PriceCatalog, UnknownModelPrice

VIRTUAL_TARGETS = {"auto": 0.95, "auto:cheap": 0.90, "auto:quality": 0.99}
DEFAULT_TIERS = ["fast_cheap", "balanced", "powerful"]


class RoutingConfigError(ValueError):
    """The routing configuration is malformed; raised at startup."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    name: str = Field(min_length=1, description="the name clients and the router use")
    tier: str
    upstream: Literal["vllm", "openai", "anthropic"] = "vllm"
    upstream_model: str | None = Field(default=None, description="name at the upstream")
    base_url: str | None = Field(default=None, description="hosted APIs: override the URL")
    price_model: str | None = Field(default=None, description="catalog name, if different")
    context_window: int = Field(gt=0)
    latency_slo_ms: float | None = Field(default=None, gt=0, description="p95 of one call")

    @property
    def wire_name(self) -> str:
        return self.upstream_model or self.name

    @property
    def priced_as(self) -> str:
        return self.price_model or self.wire_name


BudgetPeriod = Literal["total", "day", "month"]


def period_start(period: BudgetPeriod | str, at: datetime) -> datetime | None:
    """Start of the budget period (a day or month of ``at``'s timezone, UTC in the
    store) that holds ``at``; None for ``total``."""
    if period == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return None


class BudgetConfig(_Strict):
    limit_usd: float = Field(gt=0, allow_inf_nan=False)
    period: BudgetPeriod = "month"
    downgrade_at: float | None = Field(
        default=0.8, gt=0, le=1, description="fraction spent from which routing downgrades"
    )


class CascadeConfig(_Strict):
    enabled: bool = False
    threshold: float | None = Field(
        default=None, ge=0, le=1,
        description="escalate below this judge score; None: the judge's threshold for the "
        "request's quality target (chosen on held-out data)")
    self_consistency: int = Field(default=0, ge=0, le=5, description="extra cheap samples")


class RoutingConfig(_Strict):
    tiers: list[str] = Field(default_factory=lambda: list(DEFAULT_TIERS), min_length=1)
    models: list[ModelConfig] = Field(min_length=1)
    router_tiers: tuple[str, str] | None = Field(
        default=None, description="(cheap, strong) tiers the router picks between"
    )
    router_model: Path | None = Field(default=None, description="None = the shipped model")
    defer_novel: bool = Field(
        default=True, description="prompts unlike the router's training data go to the "
        "cascade (or, without one, the strong tier) instead of the router's guess")
    substitution_tenants: list[str] = Field(default_factory=list)
    budgets: dict[str, BudgetConfig] = Field(
        default_factory=dict, description="'tenant:NAME', 'key:ID' or 'tenant:*' -> budget"
    )
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    default_max_tokens: int = Field(
        default=1024, gt=0, description="answer length assumed for budget reservations"
    )

    @model_validator(mode="after")
    def _consistent(self) -> RoutingConfig:
        if len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"tiers must be unique: {self.tiers}")
        names: set[str] = set()
        for model in self.models:
            if model.tier not in self.tiers:
                raise ValueError(
                    f"model {model.name!r} has unknown tier {model.tier!r} (tiers: {self.tiers})"
                )
            if model.name in names:
                raise ValueError(f"model {model.name!r} is listed twice")
            if model.name in VIRTUAL_TARGETS:
                raise ValueError(f"model name {model.name!r} is reserved for routing")
            names.add(model.name)
        for tier in self.router_tiers or ():
            if tier not in self.tiers:
                raise ValueError(f"router_tiers names unknown tier {tier!r} (tiers: {self.tiers})")
        for scope in self.budgets:
            kind, _, name = scope.partition(":")
            if kind not in {"tenant", "key"} or not name:
                raise ValueError(f"budget scope {scope!r} must be 'tenant:NAME' or 'key:ID'")
        return self

    @classmethod
    def parse(cls, raw: dict[str, Any], catalog: PriceCatalog | None = None) -> RoutingConfig:
        """Validate ``raw``; raise ``RoutingConfigError`` with every problem spelled out.

        With a ``catalog``, every hosted model must have a price (self-hosted vLLM models
        are priced when their workers are discovered).
        """
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'routing'}: {e['msg']}" for e in exc.errors()
            )
            raise RoutingConfigError(f"invalid routing config: {problems}") from None
        if catalog is not None:
            for model in config.models:
                if model.upstream == "vllm":
                    continue
                try:
                    catalog.price(model.priced_as)
                except UnknownModelPrice as exc:
                    raise RoutingConfigError(
                        f"invalid routing config: model {model.name!r}: {exc.message}"
                    ) from None
        return config

    # --- lookups ----------------------------------------------------------------------

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def served_as(self, wire_name: str) -> ModelConfig | None:
        """The model a logged request's ``model_served`` (its name upstream) stands for."""
        return next((m for m in self.models if m.wire_name == wire_name), None)

    def rank(self, model: ModelConfig) -> int:
        return self.tiers.index(model.tier)

    def in_tier(self, tier: str) -> list[ModelConfig]:
        return [m for m in self.models if m.tier == tier]

    def used_tiers(self) -> list[str]:
        return [t for t in self.tiers if self.in_tier(t)]

    def cheap_and_strong(self) -> tuple[str, str]:
        if self.router_tiers is not None:
            return self.router_tiers
        used = self.used_tiers()
        return used[0], used[-1]

    def fallbacks(self, model: ModelConfig) -> list[ModelConfig]:
        """Other models of the same tier, then of higher tiers, cheapest tier first."""
        rank = self.rank(model)
        others = [m for m in self.models if m is not model and self.rank(m) >= rank]
        return sorted(others, key=self.rank)
