"""Which configured model serves a request, and why.

A virtual name (``auto``, ``auto:cheap``, ``auto:quality``) asks the complexity router
to pick between the cheap and the strong tier at that name's quality target. An explicit
model is served as asked, unless the tenant allows substitution: then the router may
move it down to the cheap tier (never up), at ``auto``'s quality target, and with the
cascade on a substituted request is judged like a routed one: a weak cheap answer is
escalated to the model the caller asked for. Near a budget limit the cheapest tier is
used. Within a tier the first model (config order) that is up, fits the prompt in its
context window and meets the caller's latency limit (``X-Max-Latency-Ms``, against each
model's latency SLO) serves; when none does, higher tiers are tried, and for the latency
limit lower ones (a fast answer from a smaller model beats a late one). The route
keeps the models to fall back to.

The router knows its limits: a prompt unlike its training data (``novelty``) is not
routed on the router's guess but deferred to the cascade (cheap model first, its answer
judged) when the request can be cascaded, else sent to the strong tier. With a cascade,
a prompt goes straight to the strong tier only when the router is sure enough to make
the cheap call a waste (``AnswerJudge.router_threshold``); every other one is judged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from services.errors import InvalidRequest
from services.routing.config import VIRTUAL_TARGETS, ModelConfig, RoutingConfig
from services.routing.judge import AnswerJudge
from services.routing.novelty import NoveltyDetector
from services.routing.router import ComplexityRouter

SHORT_ANSWER_TOKENS = 16  # at or below, the prompt dominates the cost: cost-aware ranking


@dataclass(frozen=True)
class RouteRequest:
    model: str
    tenant: str
    text: str
    prompt_tokens: int
    max_tokens: int | None = None
    max_latency_ms: float | None = None
    downgrade: bool = False
    cascade: bool = False  # the request can be cascaded (configured, not streamed)


@dataclass
class Route:
    model: ModelConfig
    reason: str
    fallbacks: list[ModelConfig] = field(default_factory=list)
    cheap: bool = False  # routed to the router's cheap tier (a cascade may escalate)
    strong: ModelConfig | None = None  # the strong tier's choice, for a cascade
    target: float = VIRTUAL_TARGETS["auto"]  # the quality target the route was chosen for
    p_strong: float = 0.5  # the router's P(strong tier needed), for the cascade's judge


class RoutingPolicy:
    def __init__(
        self, config: RoutingConfig, router: ComplexityRouter,
        available: Callable[[ModelConfig], bool] = lambda m: True, *,
        novelty: NoveltyDetector | None = None, judge: AnswerJudge | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.novelty = novelty
        self.judge = judge
        self._available = available
        self._substitution = frozenset(config.substitution_tenants)

    def describe(self, name: str) -> str | None:
        """What a virtual model name promises, for ``/v1/models``."""
        target = VIRTUAL_TARGETS.get(name)
        if target is None:
            return None
        cheap, strong = self.config.cheap_and_strong()
        how = ("cheap answers are judged and escalated when doubtful"
               if self.config.cascade.enabled else "no cascade configured")
        return (f"routed between the {cheap} and {strong} tiers for {target:.0%} of the "
                f"{strong} tier's accuracy (thresholds chosen by leave-family-out "
                f"validation on MMLU and GSM8K; {how}); prompts unlike the router's "
                "training data are judged by the cascade or sent to the strong tier")

    def names(self) -> list[str]:
        """Model names clients may ask for: the virtual ones, then every configured model."""
        return [*VIRTUAL_TARGETS, *(m.name for m in self.config.models)]

    def routes(self, model: str) -> bool:
        return model in VIRTUAL_TARGETS or self.config.model(model) is not None

    def choose(self, request: RouteRequest) -> Route:
        cheap_tier, strong_tier = self.config.cheap_and_strong()
        cheapest = self.config.used_tiers()[0]
        explicit = self.config.model(request.model)
        substitutable = explicit is None or (
            request.tenant in self._substitution or "*" in self._substitution
        )
        if explicit is not None and not substitutable:
            return self._route(explicit.tier, request, "explicit", exact=explicit)
        if request.downgrade:
            return self._route(cheapest, request, "budget near limit: cheapest tier")
        target = VIRTUAL_TARGETS.get(request.model, VIRTUAL_TARGETS["auto"])
        cost_aware = request.max_tokens is not None and request.max_tokens <= SHORT_ANSWER_TOKENS
        decision = self.router.decide(request.text, target, cost_aware=cost_aware)
        value = decision.priority if cost_aware else decision.p_strong
        strong, threshold = decision.strong, decision.threshold
        if request.cascade and self.judge is not None:  # judged unless the router is sure
            value, threshold = decision.p_strong, self.judge.router_threshold(target)
            strong = value >= threshold
        verdict = f"router {value:.3f} {'>=' if strong else '<'} {threshold:.3f}"
        novelty = self.novelty
        novel, similarity = novelty.novel(request.text) if novelty is not None else (False, 1.0)
        if novel and novelty is not None:
            limit = f"novel prompt (similarity {similarity:.3f} < {novelty.threshold:.3f})"
            if explicit is not None:
                return self._route(explicit.tier, request, f"explicit; {limit}", exact=explicit)
            if not request.cascade:
                route = self._route(strong_tier, request, f"{request.model}: {limit}: strong "
                                    "tier (no cascade to judge a cheap answer)")
                route.target, route.p_strong = target, decision.p_strong
                return route
            strong, verdict = False, f"{limit}: deferred to the cascade"
        tier = strong_tier if strong else cheap_tier
        if explicit is not None:
            if self.config.tiers.index(tier) >= self.config.rank(explicit):
                return self._route(explicit.tier, request, "explicit", exact=explicit)
            route = self._route(tier, request, f"substituted {explicit.name}: {verdict}")
        else:
            route = self._route(tier, request, f"{request.model}: {verdict}")
        route.target, route.p_strong = target, decision.p_strong
        if not strong:  # the cascade may judge it and escalate to the strong tier, or to
            route.cheap = True  # the model a substituted request asked for (never above)
            escalation = self._route(explicit.tier if explicit else strong_tier, request, "",
                                     exact=explicit)
            route.strong = escalation.model if escalation.model is not route.model else None
        return route

    def _route(
        self, tier: str, request: RouteRequest, reason: str, *, exact: ModelConfig | None = None
    ) -> Route:
        start = self.config.tiers.index(tier)
        ordered = [exact] if exact is not None else []
        ordered += sorted(
            (m for m in self.config.models if self.config.rank(m) >= start and m is not exact),
            key=self.config.rank,
        )
        fitting = [m for m in ordered if m.context_window >= request.prompt_tokens]
        if not fitting:
            largest = max(m.context_window for m in self.config.models)
            raise InvalidRequest(
                f"the prompt (~{request.prompt_tokens} tokens) exceeds every routed model's "
                f"context window (largest {largest})", param="messages",
            )
        usable = [m for m in fitting if self._available(m)] or fitting
        notes = []
        if request.max_latency_ms is not None:
            limit = request.max_latency_ms
            in_sla = [m for m in usable if _meets(m, limit)]
            if not in_sla:  # the strongest lower-tier model within the limit
                lower = [m for m in self.config.models if self.config.rank(m) < start
                         and m.context_window >= request.prompt_tokens and _meets(m, limit)]
                in_sla = sorted(lower, key=self.config.rank, reverse=True)
            if in_sla:
                usable = in_sla
            else:
                notes.append(f"no model meets {limit:g} ms")
        chosen = usable[0]
        if chosen.tier != tier:
            direction = "up" if self.config.rank(chosen) > start else "down"
            notes.append(f"moved {direction} to {chosen.tier}")
        elif exact is not None and chosen is not exact:
            notes.append(f"{exact.name} unavailable")
        full = "; ".join([reason, *notes]) if notes else reason
        return Route(chosen, full, [m for m in usable[1:]])


def _meets(model: ModelConfig, max_latency_ms: float) -> bool:
    return model.latency_slo_ms is None or model.latency_slo_ms <= max_latency_ms
