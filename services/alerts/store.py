"""The alert engine's state and history in the store (``alerts``, ``alert_events``).

Open rows of ``alerts`` (pending, firing) are the state: loaded at the start of every
evaluation, so a restarted flow (or another machine) resumes where the last one left
off. Each change is written with the event that notifies it in one transaction, and
the notification is sent after the commit (an outbox): a crash between the two leaves
an undelivered event that the next evaluation sends, so no change goes unannounced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from models import Alert, AlertEvent
from services.alerts.state import AlertState, Change
from services.delivery import DeliveryResult, Notification

OPEN = ("pending", "firing")
SOURCE = "alerting"


@dataclass(frozen=True)
class Judgement:
    """What one evaluation found for one (rule, subject)."""

    rule: str
    subject: str
    severity: str
    threshold: float | None
    value: float | None
    context: dict[str, Any]
    before: AlertState | None
    after: AlertState | None
    change: Change | None
    message: str


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def load_open(engine: Engine) -> dict[tuple[str, str], AlertState]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Alert).where(Alert.state.in_(OPEN), Alert.rule.is_not(None))
        ).all()
    return {
        (r.rule, r.subject): AlertState(
            rule=r.rule, subject=r.subject, state=r.state, since=_utc(r.created_at),
            value=r.value if r.value is not None else float("nan"),
            fired_at=_utc(r.fired_at), alert_id=r.id,
        )
        for r in rows
    }


def save(engine: Engine, judgements: list[Judgement], *, now: datetime,
         notify_pending: bool) -> list[int]:
    """Write every change and refresh every judged open alert, in one transaction;
    returns the ids of the events to notify."""
    to_notify = []
    with engine.begin() as conn:
        for j in judgements:
            alert_id = j.before.alert_id if j.before else None
            details = {"context": j.context, "threshold": j.threshold}
            if j.change is None:
                if alert_id is not None and j.value is not None:
                    conn.execute(update(Alert).where(Alert.id == alert_id).values(
                        value=j.value, updated_at=now, details=details))
                continue
            if alert_id is None:
                assert j.after is not None
                alert_id = int(conn.execute(insert(Alert).values(
                    created_at=j.after.since, source=SOURCE, severity=j.severity,
                    message=j.message, details=details, rule=j.rule, subject=j.subject,
                    state=j.after.state, fired_at=j.after.fired_at, updated_at=now,
                    value=j.value, threshold=j.threshold,
                )).inserted_primary_key[0])
            else:
                values: dict[str, Any] = {"state": j.change, "updated_at": now,
                                          "message": j.message}
                if j.context:
                    values["details"] = details
                if j.value is not None:
                    values["value"] = j.value
                if j.change == "firing":
                    values["fired_at"] = now
                if j.change in ("resolved", "cleared"):
                    values["resolved_at"] = now
                conn.execute(update(Alert).where(Alert.id == alert_id).values(**values))
            notify = j.change in ("firing", "resolved") or (
                j.change == "pending" and notify_pending)
            event_id = int(conn.execute(insert(AlertEvent).values(
                alert_id=alert_id, at=now, state=j.change, value=j.value, message=j.message,
                notify=notify,
            )).inserted_primary_key[0])
            if notify:
                to_notify.append(event_id)
    return to_notify


def undelivered(engine: Engine, *, max_attempts: int) -> list[tuple[int, Notification]]:
    """Events still owing their notification (this run's and earlier runs' failures)."""
    query = (
        select(AlertEvent, Alert)
        .join(Alert, Alert.id == AlertEvent.alert_id)
        .where(AlertEvent.notify.is_(True), AlertEvent.delivered_at.is_(None),
               AlertEvent.delivery_attempts < max_attempts)
        .order_by(AlertEvent.id)
    )
    with Session(engine) as session:
        return [(event.id, notification(event, alert))
                for event, alert in session.execute(query).all()]


def notification(event: AlertEvent, alert: Alert) -> Notification:
    severity = "info" if event.state == "resolved" else alert.severity
    return Notification(
        title=f"{event.state.upper()}: {alert.rule} ({alert.subject})",
        text=event.message,
        source=SOURCE,
        severity=severity,  # type: ignore[arg-type]
        details={"alert_id": alert.id, "rule": alert.rule, "subject": alert.subject,
                 "state": event.state, "value": event.value, "threshold": alert.threshold,
                 "since": _iso(alert.created_at), **alert.details.get("context", {})},
        created_at=_utc(event.at),
    )


def record_delivery(engine: Engine, event_id: int, results: list[DeliveryResult],
                    *, now: datetime) -> bool:
    """Store how the notification went; delivered when every channel took it."""
    ok = all(r.ok for r in results)
    with engine.begin() as conn:
        attempts = conn.scalar(
            select(AlertEvent.delivery_attempts).where(AlertEvent.id == event_id)) or 0
        conn.execute(update(AlertEvent).where(AlertEvent.id == event_id).values(
            delivery_attempts=attempts + 1,
            delivered_at=now if ok else None,
            delivery=[{"channel": r.channel, "ok": r.ok, "attempts": r.attempts,
                       "error": r.error} for r in results],
        ))
    return ok


def _iso(value: datetime | None) -> str | None:
    return None if value is None else _utc(value).isoformat()  # type: ignore[union-attr]


def open_alerts(engine: Engine, *, states: tuple[str, ...] = ("firing",)) -> list[dict]:
    """Alerts in ``states``, newest first (``GET /admin/alerts``)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Alert).where(Alert.state.in_(states)).order_by(Alert.created_at.desc())
        ).all()
    return [
        {"id": r.id, "rule": r.rule, "subject": r.subject, "state": r.state,
         "severity": r.severity, "message": r.message, "value": r.value,
         "threshold": r.threshold, "since": _utc(r.created_at).isoformat(),
         "fired_at": _iso(r.fired_at), "updated_at": _iso(r.updated_at),
         "source": r.source, "details": r.details}
        for r in rows
    ]
