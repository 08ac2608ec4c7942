"""Costs: what a model costs per token, what a request cost, what it would have cost.

The public surface is ``PriceCatalog`` (prices, per-request cost, baseline cost),
``ModelRates`` (USD per token, and where the price came from) and ``UnknownModelPrice``
(raised for a model nobody priced, never a silent 0). Everything else is private.
"""

from services.costs.catalog import PriceCatalog
from services.costs.rates import ModelRates, PriceSource, UnknownModelPrice
from services.costs.throughput import ThroughputMeter

__all__ = ["ModelRates", "PriceCatalog", "PriceSource", "ThroughputMeter", "UnknownModelPrice"]
