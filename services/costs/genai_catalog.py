"""Hosted-model prices from the genai-prices package, strictly offline.

genai-prices ships its price data inside the wheel (``genai_prices.data``). It can also
fetch fresh data from GitHub, but only when someone starts ``genai_prices.UpdatePrices``
(a background thread that then replaces the process-wide snapshot); importing the
package or calling ``calc_price`` never touches the network. We never start it, and we
go further: this module builds its own ``DataSnapshot`` from the bundled data instead of
using the process-wide one, so even if another library in the process started the
updater, our prices stay the ones pinned by the installed wheel (reproducible reports,
no run-time download).

Name matching, in genai-prices' own terms:

* ``provider/model`` (``openai/gpt-4o-mini``, ``anthropic/claude-3-5-sonnet``,
  ``together/mistralai/Mixtral-8x7B-Instruct-v0.1``): when the prefix is a provider id
  or alias genai-prices knows (``find_provider``; ``mistralai`` is an alias of
  ``mistral``, ``bedrock`` of ``aws``), the rest is matched within that provider and its
  fallback providers only. A known provider that does not list the model is a miss: we
  do not silently price ``anthropic/gpt-4o`` as OpenAI's model.
* anything else: the library's own matching (each provider's ``model_match`` picks the
  provider, then the model's ``match`` clauses, including dated aliases such as
  ``gpt-4-1106-preview`` -> ``gpt-4-turbo``); for ``org/model`` names whose org is not
  a provider (Hugging Face style, ``meta-llama/...``) the last path segment is tried too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from genai_prices import data as _bundled
from genai_prices.data_snapshot import DataSnapshot
from genai_prices.types import ModelInfo, ModelPrice, Provider, TieredPrices, Usage

_PER_MTOK = Decimal(1_000_000)
# price keys that a (prompt, cached, completion) usage can make non-zero, besides tiers
_TOKEN_KEYS = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok")


@dataclass(frozen=True, slots=True)
class CatalogMatch:
    """A model matched in genai-prices, with the rates in force at lookup time."""

    provider: Provider
    model: ModelInfo
    input_per_token: float
    cached_input_per_token: float
    cache_write_per_token: float
    output_per_token: float
    flat: bool

    def exact_cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int,
                   cache_write_tokens: int = 0) -> float:
        """Price through genai-prices itself, for prices that vary by volume or time
        (its ``input_tokens`` include cache reads and writes, as our prompt tokens do)."""
        usage = Usage(
            input_tokens=prompt_tokens,
            cache_read_tokens=cached_tokens,
            cache_write_tokens=cache_write_tokens,
            output_tokens=completion_tokens,
        )
        return float(self.model.calc_price(usage, self.provider).total_price)


class GenaiPriceCatalog:
    """Looks models up in the bundled genai-prices data (no memo here: the caller keeps one)."""

    def __init__(self) -> None:
        self._snapshot = DataSnapshot(providers=_bundled.providers, from_auto_update=False)

    def lookup(self, model: str) -> CatalogMatch | None:
        """Match ``model`` as described in the module docstring; None when nothing matches."""
        found = self._find(model)
        if found is None:
            return None
        provider, info = found
        return _to_match(provider, info)

    def _find(self, model: str) -> tuple[Provider, ModelInfo] | None:
        snapshot = self._snapshot
        prefix, sep, rest = model.partition("/")
        if sep and prefix and rest:
            try:
                provider = snapshot.find_provider(None, prefix, None)
            except LookupError:
                provider = None
            if provider is not None:
                try:
                    return snapshot.find_provider_model(rest, provider, None, None)
                except LookupError:
                    return None
        refs = [model]
        if sep:
            refs.append(model.rsplit("/", 1)[1])
        for ref in refs:
            try:
                return snapshot.find_provider_model(ref, None, None, None)
            except LookupError:
                continue
        return None


def _to_match(provider: Provider, info: ModelInfo) -> CatalogMatch:
    now = datetime.now(tz=UTC)
    price = info.get_prices(now)
    flat = isinstance(info.prices, ModelPrice) and _is_flat(price)
    input_rate = _base(price.input_mtok)
    cached = price.cache_read_mtok
    written = price.cache_write_mtok  # the 5-minute cache's write price (Anthropic: 1.25x)
    return CatalogMatch(
        provider=provider,
        model=info,
        input_per_token=float(input_rate / _PER_MTOK),
        cached_input_per_token=float((input_rate if cached is None else _base(cached)) / _PER_MTOK),
        cache_write_per_token=float((input_rate if written is None else _base(written))
                                    / _PER_MTOK),
        output_per_token=float(_base(price.output_mtok) / _PER_MTOK),
        flat=flat,
    )


def _is_flat(price: ModelPrice) -> bool:
    """True when input/cached/output per-token rates give exactly what genai-prices computes."""
    if price.requests_kcount is not None:
        return False
    return not any(isinstance(getattr(price, key), TieredPrices) for key in _TOKEN_KEYS)


def _base(value: Decimal | TieredPrices | None) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, TieredPrices):
        return value.base
    return value
