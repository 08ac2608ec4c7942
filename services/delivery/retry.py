"""Bounded retries shared by the webhook and SMTP senders.

Each attempt is cut at ``timeout_s`` and the whole series at ``deadline_s``: whatever a
receiver does (hangs, answers 500 forever), the caller gets a result within the
deadline, so a dead receiver can never stall an alert evaluation or a report.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.delivery.notification import DeliveryResult

log = logging.getLogger(__name__)


class PermanentFailure(Exception):
    """A refusal that another attempt will not change (a 4xx, an SMTP 5xx)."""


@dataclass(frozen=True)
class RetryPolicy:
    timeout_s: float = 5.0
    retries: int = 2
    backoff_s: float = 0.5
    deadline_s: float = 15.0


async def with_retries(
    channel: str, attempt: Callable[[], Awaitable[None]], policy: RetryPolicy
) -> DeliveryResult:
    """Run ``attempt`` until it returns, fails permanently, or the budget is spent.

    ``attempt`` raises on failure; any exception is logged and turned into a failed
    result (delivery must never take its caller down).
    """
    started = time.monotonic()
    error = "not attempted"
    attempts = 0
    for number in range(policy.retries + 1):
        left = policy.deadline_s - (time.monotonic() - started)
        if left <= 0:
            break
        attempts = number + 1
        try:
            await asyncio.wait_for(attempt(), timeout=min(policy.timeout_s, left))
            return DeliveryResult(channel=channel, ok=True, attempts=attempts)
        except PermanentFailure as exc:
            error = str(exc)
            break
        except TimeoutError:
            error = f"no answer within {min(policy.timeout_s, left):.1f} s"
        except Exception as exc:  # noqa: BLE001 - any failure is a result, never a crash
            error = f"{type(exc).__name__}: {exc}"
        log.info("delivery to %s: attempt %d failed: %s", channel, attempts, error)
        delay = policy.backoff_s * 2**number
        left = policy.deadline_s - (time.monotonic() - started)
        if number < policy.retries:
            if delay >= left:
                break
            await asyncio.sleep(delay)
    log.error("delivery to %s failed after %d attempt(s): %s", channel, attempts, error)
    return DeliveryResult(channel=channel, ok=False, attempts=attempts, error=error)
