"""Posting a notification to a webhook (Slack-compatible or generic JSON)."""

from __future__ import annotations

import httpx

from services.delivery.notification import DeliveryResult, Notification
from services.delivery.retry import PermanentFailure, RetryPolicy, with_retries
from services.settings import WebhookChannel

# Answers another attempt may change: the receiver's own trouble, or "slow down".
_RETRYABLE_STATUS = {408, 425, 429}


async def send_webhook(
    name: str, channel: WebhookChannel, notification: Notification, policy: RetryPolicy
) -> DeliveryResult:
    """POST ``notification`` to the channel; 2xx is success, 5xx/408/429/timeouts are
    retried, other 4xx fail at once. The URL (often a secret, as Slack's are) is never
    logged: results and logs name the channel."""
    body = notification.as_slack() if channel.format == "slack" else notification.as_json()

    async def attempt() -> None:
        async with httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False) as client:
            response = await client.post(channel.url, json=body, headers=channel.headers)
        if response.is_success:
            return
        message = f"HTTP {response.status_code} {response.text[:200]!r}"
        if response.status_code >= 500 or response.status_code in _RETRYABLE_STATUS:
            raise RuntimeError(message)
        raise PermanentFailure(message)

    return await with_retries(f"webhook:{name}", attempt, policy)
