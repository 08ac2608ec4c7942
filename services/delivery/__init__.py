"""Delivery of notifications (alerts, cost reports) to webhooks and by email.

``Deliverer(settings.delivery).send(notification)`` posts to every configured webhook
(Slack-compatible ``{"text": ...}`` or a generic JSON body) and mails it through SMTP
(STARTTLS, login) when a host and recipients are set. Attempts are bounded by a
timeout, retried with exponential backoff, and the whole delivery by a deadline;
a receiver that hangs, answers 500 or refuses gives a failed ``DeliveryResult`` and an
ERROR log line, never an exception, so callers (alert evaluation, report flows) go on.
"""

from services.delivery.deliverer import Deliverer
from services.delivery.notification import Attachment, DeliveryResult, Notification, Severity

__all__ = ["Attachment", "Deliverer", "DeliveryResult", "Notification", "Severity"]
