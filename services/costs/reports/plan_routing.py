"""The planner's routing, cascade and batch estimates: what sending a tenant's unrouted
traffic through the router, the cascade or the batch path would save, with each rate
measured on the window's own traffic (never assumed).

For every tenant without routing (no row with a routing decision: ``route_reason`` empty
or "explicit"), the rows counted are its answered (200), priced, uncached requests served
by a model of the routing config above the router's cheap tier; the cheap alternative is
the cheapest priced model of that tier, priced for the row's own prompt and completion
tokens.

* **routing**: a share ``s`` of those requests would still go to the strong model, the
  rest to the cheap one: saving ``(1 - s) x sum(actual - cheap)``. ``s`` is the share of
  the window's requests to ``auto`` (the quality target substitution uses) that ended on
  a model above the cheap tier (at least ``MIN_SAMPLES``), else the ``strong_fraction``
  the active router version measured on its labels; with neither, no estimate.
* **cascade** (non-streamed requests only: the cascade never judges a stream; a model
  asked for by name is judged once the tenant allows substitution, which the proposal
  turns on with the cascade): a share ``k`` goes straight to the model asked for (the
  router is sure it is needed), the rest pays the cheap attempt and a share ``e`` of
  those escalates to the model asked for: saving ``(1 - k) x (sum(actual) x (1 - e) -
  sum(cheap))``. ``e`` is escalated attempts / cascade requests (accepted + escalated),
  ``k`` the window's non-streamed requests to a virtual model that ended above the cheap
  tier without a cascade / (those + cascade requests), with at least ``MIN_SAMPLES``
  cascade requests in the window (a window that turned the cascade on midway counts its
  earlier strong requests as skipped: the estimate errs low).
  Tenants whose requests already take routing decisions get neither estimate.
* **batch**: non-streamed online requests (routed or not) sent through ``/v1/batches``
  instead, at the batch path's measured cost/baseline ratio ``r`` (batch lines of the
  window): saving ``sum(actual - r x baseline)`` over the rows dearer than that. Assumes
  the callers can wait for the batch completion window; the store cannot tell which can.

All three assume the answers keep their lengths on the other model, as the cost report's
attribution does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from models.tables import RouterVersion
from services.caching import HIT_LAYERS
from services.costs.catalog import PriceCatalog
from services.costs.rates import UnknownModelPrice
from services.costs.reports.attribution import BATCH_PREFIX, ESCALATED_PREFIX
from services.routing.config import VIRTUAL_TARGETS, ModelConfig, RoutingConfig

MIN_SAMPLES = 20
ACCEPTED = "cascade: accepted"  # in the final row's reason, after the router's verdict
EXPLICIT = "explicit"  # the model asked for, kept: no routing decision


@dataclass
class _Tenant:
    actual: float = 0.0  # unrouted rows above the cheap tier: what they cost
    cheap: float = 0.0  # ... and what the cheap model would have cost
    actual_unstreamed: float = 0.0
    cheap_unstreamed: float = 0.0
    rows: int = 0
    unstreamed: int = 0
    online: list[tuple[float, float]] = field(default_factory=list)  # (actual, baseline)


class RoutingLevers:
    """Fed every row of the window (``add``), then asked for its estimates."""

    def __init__(self, catalog: PriceCatalog, routing: RoutingConfig | None,
                 stored_share: float | None = None) -> None:
        self.catalog = catalog
        self.stored_share = stored_share
        self.routing = routing
        self.cheap = _cheapest(routing, catalog) if routing is not None else None
        self.tenants: dict[str, _Tenant] = defaultdict(_Tenant)
        self.decisions = [0, 0]  # router decisions: strong, all
        self.cascades = [0, 0]  # escalated, all
        self.skipped = 0  # non-streamed requests to a virtual model sent strong, no cascade
        self.batch = [0.0, 0.0, 0]  # batch lines: cost, baseline, count
        self.routed: set[str] = set()

    def add(self, row: Any) -> None:
        reason = row.route_reason or ""
        if reason.startswith(ESCALATED_PREFIX):  # the attempt row: one per escalation
            self.cascades[0] += 1
            self.cascades[1] += 1
            return
        self.cascades[1] += ACCEPTED in reason
        if row.model_requested == "auto":
            self._decision(row.model_served)
        if (row.model_requested in VIRTUAL_TARGETS and not row.stream
                and "cascade" not in reason and self._strong(row.model_served)):
            self.skipped += 1
        if row.status_code != 200 or row.cost_usd is None or row.cache_layer in HIT_LAYERS:
            return
        if reason.startswith(BATCH_PREFIX):
            if row.baseline_cost_usd is not None:
                self.batch[0] += row.cost_usd
                self.batch[1] += row.baseline_cost_usd
                self.batch[2] += 1
            return
        tenant = self.tenants[row.tenant]
        if not row.stream and row.baseline_cost_usd is not None:
            tenant.online.append((row.cost_usd, row.baseline_cost_usd))
        if reason and not reason.startswith(EXPLICIT):
            self.routed.add(row.tenant)  # routing runs for this tenant already
            return
        cheap = self._cheap_cost(row)
        if cheap is None:
            return
        tenant.rows += 1
        tenant.actual += row.cost_usd
        tenant.cheap += cheap
        if not row.stream:
            tenant.unstreamed += 1
            tenant.actual_unstreamed += row.cost_usd
            tenant.cheap_unstreamed += cheap

    def _decision(self, served: str | None) -> None:
        """A request to ``auto`` (the default quality target, as substitution uses):
        strong when it ended on a model above the cheap tier."""
        if self.cheap is not None and served and self.routing.served_as(served):
            self.decisions[0] += self._strong(served)
            self.decisions[1] += 1

    def _strong(self, served: str | None) -> bool:
        """Served by a model of the routing config above the cheap tier."""
        model = self.routing.served_as(served) if self.routing and served else None
        return (model is not None and self.cheap is not None
                and self.routing.rank(model) > self.routing.rank(self.cheap))

    def estimates(self) -> list[tuple[str, str, float, str]]:
        """``(tenant, lever, window saving, method)`` for every positive estimate."""
        found = []
        share, source = self._strong_share()
        escalated, cascades = self.cascades
        ratio = self.batch[0] / self.batch[1] if self.batch[2] and self.batch[1] else None
        for name, t in sorted(self.tenants.items()):
            cheap = self.cheap.name if self.cheap else ""
            unrouted = name not in self.routed  # else only the batch estimate applies
            if share is not None and t.rows and unrouted:
                saved = (1 - share) * (t.actual - t.cheap)
                found.append((name, "routing", saved, (
                    f"{t.rows} unrouted requests above the cheap tier (${t.actual:,.6f}); "
                    f"{1 - share:.1%} of them on {cheap} (${t.cheap:,.6f} for all) at the "
                    f"router's strong share {share:.1%} ({source})")))
            if cascades >= MIN_SAMPLES and t.unstreamed and unrouted:
                rate, skip = escalated / cascades, self.skipped / (self.skipped + cascades)
                saved = (1 - skip) * (t.actual_unstreamed * (1 - rate) - t.cheap_unstreamed)
                found.append((name, "cascade", saved, (
                    f"{t.unstreamed} unrouted non-streamed requests (${t.actual_unstreamed:,.6f})"
                    f" sent to auto: {skip:.1%} straight to the strong model, the rest first "
                    f"tried on {cheap} (${t.cheap_unstreamed:,.6f} for all), {rate:.1%} of "
                    f"those escalated, as in the window's {cascades} cascade requests and "
                    f"{self.skipped} skipped")))
            if ratio is not None:
                gaps = [a - ratio * b for a, b in t.online if a > ratio * b]
                found.append((name, "batch", sum(gaps), (
                    f"{len(gaps)} non-streamed online requests at the batch path's cost/"
                    f"baseline ratio {ratio:.3f} ({int(self.batch[2])} batch lines in the "
                    "window); assumes their callers can wait for the batch window")))
        return [e for e in found if e[2] > 0]

    def _strong_share(self) -> tuple[float | None, str]:
        strong, decisions = self.decisions
        if decisions >= MIN_SAMPLES:
            return strong / decisions, f"{decisions} requests to auto in the window"
        if self.stored_share is not None:
            return self.stored_share, "the active router version, measured on its labels"
        return None, ""

    def _cheap_cost(self, row: Any) -> float | None:
        if self.routing is None or self.cheap is None or not row.model_served:
            return None
        served = self.routing.served_as(row.model_served)
        if served is None or self.routing.rank(served) <= self.routing.rank(self.cheap):
            return None
        return self.catalog.cost(self.cheap.priced_as, row.prompt_tokens or 0,
                                 row.completion_tokens or 0)


def active_router_share(conn: Connection) -> float | None:
    """The strong share the active router version measured on its labels, if any."""
    metrics = conn.scalar(select(RouterVersion.metrics).where(RouterVersion.active.is_(True)))
    share = (metrics or {}).get("strong_fraction")
    return None if share is None else float(share)


def _cheapest(routing: RoutingConfig, catalog: PriceCatalog) -> ModelConfig | None:
    priced = []
    for model in routing.in_tier(routing.cheap_and_strong()[0]):
        try:
            rates = catalog.price(model.priced_as)
        except UnknownModelPrice:
            continue
        priced.append((rates.input_usd_per_token + rates.output_usd_per_token, model.name,
                       model))
    return min(priced)[2] if priced else None
