"""Savings by lever: how ``baseline - actual`` is split, exactly, between the levers.

Every ``request_log`` row carries its actual cost and its baseline (the same request on
``baseline_model``, the full prompt as sent, no cache). The gap between them is split by
a *waterfall*: the levers are applied in the order a request meets them, and each one is
credited with the drop in cost from the counterfactual before it to the one after it.
The last step of every path is "previous counterfactual minus actual", so the levers add
up to ``baseline - actual`` by construction, to the last cent, and a lever that cost money
shows as a negative saving.

Order and method (the path a row took is its ``lever`` in ``cost_rollups``):

1. **cache_exact / cache_semantic** (``cache_layer`` L1/L2/L3 or SEMANTIC): the request
   was answered from the response cache at $0; the whole baseline is that cache's saving.
2. **cascade_escalated** (``route_reason`` "cascade: cheap attempt escalated..."): the
   cheap attempt of a cascade that was then escalated. Its request's baseline is counted
   once, on the final row, so this row's baseline is 0 and its cost is a *negative*
   routing saving.
3. **batch** (``route_reason`` "batch:<id>"): the line ran through the batch path on our
   workers instead of online on the baseline model; ``baseline - actual`` is the batch
   saving (the batch path applies no token or routing stage of its own).
4. **routed / direct** (everything else), three steps:
   a. *token optimisation*: baseline minus the baseline model's price of the prompt as
      billed (``prompt_tokens``, after optimisation): ``B - X1``;
   b. *model*: ``X1`` minus ``H``, the served model's hosted price for the same tokens
      (its ``price_overrides`` entry or genai-prices; when it has none, ``H = X1``).
      Credited to **routing** when the routing stage chose the model (``route_reason``
      set: router, cascade accepted, substitution, budget downgrade), otherwise to
      **model_choice**, the caller's own pick of a model other than the baseline (not a
      platform lever, shown so the sum holds);
   c. *self-hosting* (served by one of our vLLM workers): ``H - actual``, what our
      GPU-hour price saves (or costs) against the hosted price. For hosted upstreams
      step b runs to ``actual`` instead (``X1 - actual``) and self-hosting is 0.

Rows with usage but no price (``cost_usd`` NULL: an unpriced model) are counted as
``unpriced`` and left out of actual, baseline and savings: their gap is unknown.
Counterfactual prices are linear in the summed tokens, exact for per-token prices; a
tiered price's difference lands in the step that uses it, never outside the sum.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.costs.catalog import PriceCatalog
from services.costs.rates import UnknownModelPrice

# the levers in attribution order; model_choice is not a lever but keeps the sum whole
LEVERS = (
    "cache_exact",
    "cache_semantic",
    "batch",
    "token_optimization",
    "routing",
    "self_hosting",
    "model_choice",
)
PATHS = ("cache_exact", "cache_semantic", "cascade_escalated", "batch", "routed", "direct")
ESCALATED_PREFIX = "cascade: cheap attempt escalated"
BATCH_PREFIX = "batch:"


@dataclass(frozen=True, slots=True)
class GroupTotals:
    """Sums over the priced rows of one rollup group (one path, model and upstream)."""

    path: str
    model: str
    self_hosted: bool
    prompt_tokens: int
    prompt_tokens_before: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    cost_usd: float
    baseline_usd: float


def attribute(group: GroupTotals, catalog: PriceCatalog) -> tuple[float, dict[str, float]]:
    """The group's baseline as counted in reports, and its saving per lever.

    ``sum(savings.values()) == baseline - group.cost_usd`` (up to float rounding).
    """
    saved = dict.fromkeys(LEVERS, 0.0)
    actual, baseline = group.cost_usd, group.baseline_usd
    if group.path in ("cache_exact", "cache_semantic"):
        saved[group.path] = baseline - actual
        return baseline, saved
    if group.path == "cascade_escalated":
        saved["routing"] = -actual
        return 0.0, saved
    if group.path == "batch":
        saved["batch"] = baseline - actual
        return baseline, saved
    base = catalog.price(catalog.baseline_model)
    x1 = (group.prompt_tokens * base.input_usd_per_token
          + group.completion_tokens * base.output_usd_per_token)
    saved["token_optimization"] = baseline - x1
    model_lever = "routing" if group.path == "routed" else "model_choice"
    if not group.self_hosted:
        saved[model_lever] = x1 - actual
        return baseline, saved
    hosted = _hosted_price(group, catalog)
    h = x1 if hosted is None else hosted
    saved[model_lever] = x1 - h
    saved["self_hosting"] = h - actual
    return baseline, saved


def _hosted_price(group: GroupTotals, catalog: PriceCatalog) -> float | None:
    """What the served model's tokens would cost at its hosted price, if it has one."""
    if not group.model:
        return None
    try:
        rates = catalog.price(group.model)
    except UnknownModelPrice:
        return None
    if rates.source == "self_hosted":  # a catalog with registrations: no hosted price
        return None
    cached = min(group.cached_tokens, group.prompt_tokens)
    written = min(group.cache_write_tokens, group.prompt_tokens - cached)
    return (
        (group.prompt_tokens - cached - written) * rates.input_usd_per_token
        + cached * rates.cached_input_usd_per_token
        + written * rates.cache_write_usd_per_token
        + group.completion_tokens * rates.output_usd_per_token
    )
