"""The price catalog: what any model costs, and what a request would have cost without us.

Resolution order for a model name (exact string, as the request or worker names it):

1. ``price_overrides`` from settings: the user's contract price always wins;
2. self-hosted models registered at run time (``register_self_hosted``), priced from the
   GPU-hour (see ``self_hosted``);
3. genai-prices' bundled data (see ``genai_catalog`` for the name matching);
4. otherwise ``UnknownModelPrice`` is raised. There is deliberately no "return 0":
   the telemetry writer turns the error into ``cost_usd = NULL``, an explicit "unpriced".

Usage follows OpenAI semantics: ``prompt_tokens`` includes ``cached_tokens`` (read from
the provider's prompt cache) and ``cache_write_tokens`` (written to it: Anthropic reports
them as ``cache_creation_input_tokens``); cached tokens are charged at the model's
cached-input rate, written ones at its cache-write rate (each the input rate when the
model has none).

Resolved rates are memoised per model name because ``cost`` runs once per request (and
later on the hot path for budgets), while a genai-prices lookup walks provider and model
match rules. Registering a self-hosted model drops its memo entry; a lock around
resolve-and-store keeps a concurrent lookup from re-inserting the stale rates.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from services.costs.genai_catalog import CatalogMatch, GenaiPriceCatalog
from services.costs.rates import ModelRates, UnknownModelPrice
from services.costs.self_hosted import SelfHostedModel, self_hosted_rates
from services.settings import ModelPrice, SelfHostedPricing, Settings

_PER_MTOK = 1_000_000.0
# Model names come from requests; bound the memo so a client cycling through made-up
# names cannot grow it without limit (clearing is cheap: entries are re-resolved).
_MEMO_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A memo entry: the rates, plus the genai-prices match when cost() must defer to it."""

    rates: ModelRates | None  # None = unpriced (memoised too, so misses stay cheap)
    exact: CatalogMatch | None = None


class PriceCatalog:
    """Prices models in USD and computes per-request and baseline costs.

    Build one per process (the app lifespan keeps it on ``app.state``) with
    ``PriceCatalog.from_settings(settings)``. Thread-safe.
    """

    def __init__(
        self,
        *,
        overrides: Mapping[str, ModelPrice] | None = None,
        self_hosted: SelfHostedPricing | None = None,
        baseline_model: str = "gpt-4o-mini",
    ) -> None:
        """Raises ``UnknownModelPrice`` at once if ``baseline_model`` cannot be priced.

        Failing at start-up beats writing a NULL baseline on every request: without the
        baseline no saving can be claimed.
        """
        self._overrides = dict(overrides or {})
        self._pricing = self_hosted or SelfHostedPricing()
        self._served: dict[str, SelfHostedModel] = {}
        self._genai = GenaiPriceCatalog()
        self._memo: dict[str, _Resolved] = {}
        self._lock = threading.Lock()
        self.baseline_model = baseline_model
        self.price(baseline_model)

    @classmethod
    def from_settings(cls, settings: Settings) -> PriceCatalog:
        return cls(
            overrides=settings.price_overrides,
            self_hosted=settings.self_hosted,
            baseline_model=settings.baseline_model,
        )

    def register_self_hosted(
        self, model: str, output_tokens_per_second: float | None = None, gpus: int | None = None
    ) -> None:
        """Price ``model`` as served by our own workers; call again when throughput is measured.

        ``None`` falls back to ``settings.self_hosted`` defaults. A ``price_overrides``
        entry for the same name still wins.
        """
        served = SelfHostedModel(output_tokens_per_second=output_tokens_per_second, gpus=gpus)
        with self._lock:
            self._served[model] = served
            self._memo.pop(model, None)

    def price(self, model: str) -> ModelRates:
        """Rates for ``model`` in USD per token; raises ``UnknownModelPrice`` if unpriced."""
        rates = self._resolved(model).rates
        if rates is None:
            raise UnknownModelPrice(model)
        return rates

    def cost(
        self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float:
        """USD for one request; ``prompt_tokens`` includes ``cached_tokens`` and
        ``cache_write_tokens``.

        Raises ``UnknownModelPrice`` for an unpriced model and ``ValueError`` for negative
        counts or more cached and written tokens than prompt tokens.
        """
        if min(prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens) < 0:
            raise ValueError("token counts must be >= 0")
        if cached_tokens + cache_write_tokens > prompt_tokens:
            raise ValueError(
                f"cached_tokens ({cached_tokens}) + cache_write_tokens ({cache_write_tokens}) "
                f"cannot exceed prompt_tokens ({prompt_tokens})"
            )
        resolved = self._resolved(model)
        rates = resolved.rates
        if rates is None:
            raise UnknownModelPrice(model)
        if resolved.exact is not None:
            return resolved.exact.exact_cost(prompt_tokens, completion_tokens, cached_tokens,
                                             cache_write_tokens)
        return (
            (prompt_tokens - cached_tokens - cache_write_tokens) * rates.input_usd_per_token
            + cached_tokens * rates.cached_input_usd_per_token
            + cache_write_tokens * rates.cache_write_usd_per_token
            + completion_tokens * rates.output_usd_per_token
        )

    def baseline_cost(
        self, prompt_tokens_before_optimization: int, completion_tokens: int
    ) -> float:
        """What the request would have cost on ``baseline_model`` without this platform.

        No cache hit, the full prompt as the client sent it, no cached-token discount: the
        figure every saving is measured against.
        """
        return self.cost(self.baseline_model, prompt_tokens_before_optimization, completion_tokens)

    def _resolved(self, model: str) -> _Resolved:
        resolved = self._memo.get(model)
        if resolved is not None:
            return resolved
        with self._lock:
            resolved = self._memo.get(model)
            if resolved is None:
                resolved = self._resolve(model)
                if len(self._memo) >= _MEMO_LIMIT:
                    self._memo.clear()
                self._memo[model] = resolved
        return resolved

    def _resolve(self, model: str) -> _Resolved:
        override = self._overrides.get(model)
        if override is not None:
            return _Resolved(_override_rates(model, override))
        served = self._served.get(model)
        if served is not None:
            return _Resolved(self_hosted_rates(model, served, self._pricing))
        match = self._genai.lookup(model)
        if match is None:
            return _Resolved(None)
        rates = ModelRates(
            model=model,
            source="catalog",
            input_usd_per_token=match.input_per_token,
            cached_input_usd_per_token=match.cached_input_per_token,
            cache_write_usd_per_token=match.cache_write_per_token,
            output_usd_per_token=match.output_per_token,
            provider=match.provider.id,
            catalog_model_id=match.model.id,
            flat=match.flat,
        )
        return _Resolved(rates, exact=None if match.flat else match)


def _override_rates(model: str, price: ModelPrice) -> ModelRates:
    cached = (
        price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok
    )
    written = (
        price.input_per_mtok if price.cache_write_per_mtok is None else price.cache_write_per_mtok
    )
    return ModelRates(
        model=model,
        source="override",
        input_usd_per_token=price.input_per_mtok / _PER_MTOK,
        cached_input_usd_per_token=cached / _PER_MTOK,
        cache_write_usd_per_token=written / _PER_MTOK,
        output_usd_per_token=price.output_per_mtok / _PER_MTOK,
    )
