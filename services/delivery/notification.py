"""What is delivered (a ``Notification``) and what came of it (a ``DeliveryResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True)
class Attachment:
    """A file sent along by email (a CSV report); webhooks only name it."""

    filename: str
    content: bytes
    mime_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Notification:
    """One message for people: an alert changing state, a cost report.

    ``text`` is plain text (Markdown reads well in Slack and in mail); ``html`` is an
    optional alternative body for mail; ``details`` is machine-readable context that
    the generic JSON webhook carries whole.
    """

    title: str
    text: str
    source: str
    severity: Severity = "info"
    details: dict[str, Any] = field(default_factory=dict)
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_json(self) -> dict[str, Any]:
        """The generic webhook body."""
        return {
            "title": self.title,
            "text": self.text,
            "source": self.source,
            "severity": self.severity,
            "details": self.details,
            "created_at": self.created_at.isoformat(),
            "attachments": [a.filename for a in self.attachments],
        }

    def as_slack(self) -> dict[str, Any]:
        """The Slack-compatible body: one ``text`` field (Mattermost, Teams connectors
        and most chat webhooks accept the same)."""
        return {"text": f"*{self.title}*\n{self.text}"}


@dataclass(frozen=True)
class DeliveryResult:
    """How sending to one channel went; failures are results, never exceptions."""

    channel: str
    ok: bool
    attempts: int
    error: str | None = None
