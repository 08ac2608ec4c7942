"""Per-token prices for models we serve ourselves, derived from what a GPU-hour costs.

A vLLM worker costs the same per hour whether it is busy or not, so the honest per-token
price is the GPU-hour price spread over the tokens the worker actually produces:
``gpu_hour_usd * gpus / 3600 / output_tokens_per_second`` per output token. Prefill is
far cheaper per token than decoding, so an input token is charged ``input_cost_ratio``
of an output token. Throughput should be the measured one (the worker launcher or a
benchmark reports it); the configured default is only a placeholder until then.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.costs.rates import ModelRates
from services.settings import SelfHostedPricing

_SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class SelfHostedModel:
    """What was registered for one served model; None means "use the configured default"."""

    output_tokens_per_second: float | None = None
    gpus: int | None = None

    def __post_init__(self) -> None:
        if self.output_tokens_per_second is not None and not self.output_tokens_per_second > 0:
            raise ValueError(
                f"output_tokens_per_second must be > 0, got {self.output_tokens_per_second!r}"
            )
        if self.gpus is not None and self.gpus < 1:
            raise ValueError(f"gpus must be >= 1, got {self.gpus!r}")


def self_hosted_rates(
    model: str, served: SelfHostedModel, pricing: SelfHostedPricing
) -> ModelRates:
    """Turn the GPU-hour price into USD per token at the registered (or default) throughput."""
    tokens_per_second = served.output_tokens_per_second or pricing.default_output_tokens_per_second
    gpus = served.gpus or pricing.gpus_per_worker
    output = pricing.gpu_hour_usd * gpus / _SECONDS_PER_HOUR / tokens_per_second
    input_rate = output * pricing.input_cost_ratio
    return ModelRates(
        model=model,
        source="self_hosted",
        input_usd_per_token=input_rate,
        # vLLM's prefix cache makes a cached prefill cheaper still, but we have no measured
        # figure for it, so cached input is charged as input (no invented discount).
        cached_input_usd_per_token=input_rate,
        cache_write_usd_per_token=input_rate,  # vLLM's prefix cache costs nothing extra
        output_usd_per_token=output,
        output_tokens_per_second=tokens_per_second,
    )
