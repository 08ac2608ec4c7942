"""What a model costs per token, and the error for a model nobody priced.

Rates are kept in USD **per token** (not per million) because every caller multiplies
them by token counts; the per-million figures of price lists and of
``settings.price_overrides`` are converted once, when a model's rates are resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.errors import EngineError

PriceSource = Literal["override", "self_hosted", "catalog"]


class UnknownModelPrice(EngineError, LookupError):
    """No price is known for a model: no override, not self-hosted, not in genai-prices.

    Raised rather than returning 0 so that a missing price can never pass for a free
    request: the telemetry writer catches it and stores ``cost_usd = NULL`` ("unpriced"),
    a budget check decides for itself. It is an ``EngineError`` (500 if it ever reaches a
    client, since it is a configuration gap, not a bad request) and a ``LookupError``.
    """

    def __init__(self, model: str) -> None:
        super().__init__(
            f"no price for model {model!r}: it has no entry in price_overrides, is not a "
            "registered self-hosted model and genai-prices has no match; add it to "
            "price_overrides",
            code="unknown_model_price",
        )
        self.model = model


@dataclass(frozen=True, slots=True)
class ModelRates:
    """Resolved prices of one model, in USD per token.

    ``cached_input_usd_per_token`` equals the input rate when the model has no cheaper
    cached-input price, and ``cache_write_usd_per_token`` (what writing a prompt prefix
    into the provider's cache costs: Anthropic bills it above the input rate) equals the
    input rate when the model has no such price, so callers never need a fallback of
    their own.

    ``flat`` is False for catalog prices that a per-token rate cannot express exactly:
    volume tiers (e.g. Gemini above 128k prompt tokens), time-of-day windows (DeepSeek
    off-peak) or per-request fees. The rates shown are then the ones in force now for the
    base tier, and ``PriceCatalog.cost`` computes such requests through genai-prices.
    """

    model: str
    source: PriceSource
    input_usd_per_token: float
    cached_input_usd_per_token: float
    cache_write_usd_per_token: float
    output_usd_per_token: float
    provider: str | None = None
    """genai-prices provider id the price came from (catalog only)."""
    catalog_model_id: str | None = None
    """genai-prices model id matched (catalog only): gpt-4-1106-preview -> gpt-4-turbo."""
    output_tokens_per_second: float | None = None
    """Throughput the self-hosted price was derived from (self_hosted only)."""
    flat: bool = True
