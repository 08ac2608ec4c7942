"""Fan a notification out to every configured channel at once."""

from __future__ import annotations

import asyncio
import logging
import threading

from services.delivery.notification import DeliveryResult, Notification
from services.delivery.retry import RetryPolicy
from services.delivery.smtp import send_email
from services.delivery.webhook import send_webhook
from services.settings import DeliverySettings

log = logging.getLogger(__name__)


class Deliverer:
    """Sends notifications to the webhooks and the mailbox of ``DeliverySettings``.

    Channels are tried concurrently, each within the settings' deadline, so one call
    takes at most about ``deadline_s`` whatever the receivers do, and it never raises
    for a receiver's failure: the results say which channel failed and why (also
    logged at ERROR).
    """

    def __init__(self, settings: DeliverySettings) -> None:
        self._settings = settings
        self._policy = RetryPolicy(
            timeout_s=settings.timeout_s, retries=settings.retries,
            backoff_s=settings.backoff_s, deadline_s=settings.deadline_s,
        )

    @property
    def channels(self) -> list[str]:
        """Names results use: ``webhook:<name>`` per webhook, ``email`` when SMTP is set."""
        names = [f"webhook:{name}" for name in self._settings.webhooks]
        if self._email_configured:
            names.append("email")
        return names

    @property
    def _email_configured(self) -> bool:
        smtp = self._settings.smtp
        return bool(smtp.host and smtp.to)

    async def send(
        self, notification: Notification, *, channels: list[str] | None = None
    ) -> list[DeliveryResult]:
        """Deliver to every channel (or to the named ``channels`` only)."""
        wanted = self._select(channels)
        sends = [
            send_webhook(name, channel, notification, self._policy)
            for name, channel in self._settings.webhooks.items()
            if f"webhook:{name}" in wanted
        ]
        if "email" in wanted:
            sends.append(send_email(self._settings.smtp, notification, self._policy))
        return list(await asyncio.gather(*sends))

    def _select(self, channels: list[str] | None) -> set[str]:
        """The channels to use; a name not configured is the caller's mistake."""
        wanted = set(self.channels if channels is None else channels)
        unknown = wanted - set(self.channels)
        if unknown:
            raise ValueError(f"unknown delivery channel(s): {sorted(unknown)}; "
                             f"configured: {self.channels}")
        return wanted

    def send_blocking(
        self, notification: Notification, *, channels: list[str] | None = None
    ) -> list[DeliveryResult]:
        """``send`` for synchronous callers; from inside a running event loop it runs
        on a helper thread with its own loop."""
        self._select(channels)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.send(notification, channels=channels))
        box: list[list[DeliveryResult]] = []
        thread = threading.Thread(
            target=lambda: box.append(asyncio.run(self.send(notification, channels=channels))),
            name="delivery",
        )
        thread.start()
        thread.join()
        return box[0]
