"""Mailing a notification through an SMTP server (STARTTLS and login when configured)."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage

from services.delivery.notification import DeliveryResult, Notification
from services.delivery.retry import PermanentFailure, RetryPolicy, with_retries
from services.settings import SmtpSettings


def build_message(smtp: SmtpSettings, notification: Notification) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"[{notification.severity}] {notification.title}"
    message["From"] = smtp.sender
    message["To"] = ", ".join(smtp.to)
    message.set_content(notification.text)
    if notification.html is not None:
        message.add_alternative(notification.html, subtype="html")
    for attachment in notification.attachments:
        maintype, _, subtype = attachment.mime_type.partition("/")
        message.add_attachment(
            attachment.content, maintype=maintype, subtype=subtype or "octet-stream",
            filename=attachment.filename,
        )
    return message


def _send_blocking(smtp: SmtpSettings, message: EmailMessage, timeout_s: float) -> None:
    """One SMTP session; smtplib's socket timeout bounds every read and write, so the
    thread this runs in ends even when the caller has stopped waiting."""
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=timeout_s) as client:
            if smtp.starttls:
                context = ssl.create_default_context(
                    cafile=str(smtp.ca_file) if smtp.ca_file else None
                )
                client.starttls(context=context)
            if smtp.user:
                client.login(smtp.user, smtp.password.get_secret_value())
            refused = client.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        raise PermanentFailure(f"every recipient refused: {exc.recipients}") from exc
    except smtplib.SMTPAuthenticationError as exc:
        raise PermanentFailure(f"login refused: {exc.smtp_code} {exc.smtp_error!r}") from exc
    except smtplib.SMTPResponseException as exc:
        if exc.smtp_code >= 500:
            raise PermanentFailure(f"refused: {exc.smtp_code} {exc.smtp_error!r}") from exc
        raise
    if refused:
        raise PermanentFailure(f"recipients refused: {sorted(refused)}")


async def send_email(
    smtp: SmtpSettings, notification: Notification, policy: RetryPolicy
) -> DeliveryResult:
    """Mail ``notification`` to ``smtp.to``: connection failures and 4xx answers are
    retried, 5xx refusals (recipient, message, login) fail at once."""
    message = build_message(smtp, notification)

    async def attempt() -> None:
        await asyncio.to_thread(_send_blocking, smtp, message, policy.timeout_s)

    return await with_retries("email", attempt, policy)
