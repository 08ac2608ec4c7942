"""Delivery against real receivers: an aiohttp webhook server and an aiosmtpd server."""

from __future__ import annotations

import logging
import time

import pytest

from services.delivery import Attachment, Deliverer, Notification
from services.settings import DeliverySettings, SmtpSettings, WebhookChannel
from tests.support.receivers import smtp_server, webhook_receiver

NOTE = Notification(
    title="cache hit rate under 60%", text="hit rate 41% for tenant acme",
    source="alerts", severity="warning", details={"tenant": "acme", "value": 0.41},
)


def settings(webhooks: dict[str, WebhookChannel] | None = None,
             smtp: SmtpSettings | None = None, **policy: float) -> DeliverySettings:
    # generous limits (a busy machine answers slowly); hanging receivers get short ones
    defaults = {"timeout_s": 10.0, "retries": 2, "backoff_s": 0.05, "deadline_s": 60.0}
    return DeliverySettings(webhooks=webhooks or {}, smtp=smtp or SmtpSettings(),
                            **{**defaults, **policy})


async def test_slack_and_json_bodies_reach_the_receiver() -> None:
    with webhook_receiver() as receiver:
        deliverer = Deliverer(settings({
            "chat": WebhookChannel(url=f"{receiver.url}/ok", format="slack"),
            "ops": WebhookChannel(url=f"{receiver.url}/ok", format="json",
                                  headers={"Authorization": "Bearer t0ken"}),
        }))
        results = await deliverer.send(NOTE)
    assert [(r.channel, r.ok, r.attempts) for r in results] == [
        ("webhook:chat", True, 1), ("webhook:ops", True, 1)]
    # the channels are sent to at once: the receiver gets them in either order
    [(slack, plain_headers)] = [(b, h) for _, b, h in receiver.received if "title" not in b]
    [(generic, headers)] = [(b, h) for _, b, h in receiver.received if "title" in b]
    assert slack == {"text": "*cache hit rate under 60%*\nhit rate 41% for tenant acme"}
    assert generic["title"] == NOTE.title and generic["severity"] == "warning"
    assert generic["details"] == {"tenant": "acme", "value": 0.41}
    assert headers["Authorization"] == "Bearer t0ken"
    assert "Authorization" not in plain_headers


async def test_a_500_is_retried_with_backoff_until_it_succeeds() -> None:
    with webhook_receiver(flaky_failures=2) as receiver:
        deliverer = Deliverer(settings({"x": WebhookChannel(url=f"{receiver.url}/flaky")}))
        [result] = await deliverer.send(NOTE)
    assert result.ok and result.attempts == 3
    assert len(receiver.posts("/flaky")) == 3


async def test_a_receiver_that_always_fails_gives_a_logged_failure(caplog) -> None:
    with webhook_receiver() as receiver, caplog.at_level(logging.ERROR):
        deliverer = Deliverer(settings({"broken": WebhookChannel(url=f"{receiver.url}/fail")}))
        [result] = await deliverer.send(NOTE)
    assert not result.ok and result.attempts == 3 and "HTTP 500" in result.error
    assert len(receiver.posts("/fail")) == 3
    assert "delivery to webhook:broken failed after 3 attempt(s)" in caplog.text
    assert receiver.url not in caplog.text  # webhook URLs are secrets


async def test_a_4xx_is_not_retried() -> None:
    with webhook_receiver() as receiver:
        deliverer = Deliverer(settings({"bad": WebhookChannel(url=f"{receiver.url}/reject")}))
        [result] = await deliverer.send(NOTE)
    assert not result.ok and result.attempts == 1 and "HTTP 400" in result.error


async def test_a_hanging_receiver_costs_at_most_the_deadline_and_others_still_get_it() -> None:
    with webhook_receiver() as receiver:
        deliverer = Deliverer(settings(
            {"dead": WebhookChannel(url=f"{receiver.url}/hang"),
             "live": WebhookChannel(url=f"{receiver.url}/ok")},
            timeout_s=2.0, retries=5, backoff_s=0.05, deadline_s=4.0,
        ))
        started = time.monotonic()
        dead, live = await deliverer.send(NOTE)
        elapsed = time.monotonic() - started
    assert live.ok
    assert not dead.ok and "no answer within" in dead.error
    assert elapsed < 30  # bounded by deadline_s (4 s), not by the receiver (never answers)


async def test_a_receiver_nobody_listens_on_fails_cleanly() -> None:
    from services.workers import free_port

    deliverer = Deliverer(settings(
        {"gone": WebhookChannel(url=f"http://127.0.0.1:{free_port()}/x")}))
    [result] = await deliverer.send(NOTE)
    assert not result.ok and "ConnectError" in result.error


def test_send_blocking_works_outside_and_inside_an_event_loop() -> None:
    import asyncio

    with webhook_receiver() as receiver:
        deliverer = Deliverer(settings({"x": WebhookChannel(url=f"{receiver.url}/ok")}))
        assert deliverer.send_blocking(NOTE)[0].ok

        async def inside() -> bool:
            return deliverer.send_blocking(NOTE)[0].ok

        assert asyncio.run(inside())
    assert len(receiver.posts("/ok")) == 2


def test_unknown_channel_names_are_refused() -> None:
    deliverer = Deliverer(settings({"x": WebhookChannel(url="http://127.0.0.1:9/x")}))
    with pytest.raises(ValueError, match="unknown delivery channel"):
        deliverer.send_blocking(NOTE, channels=["webhook:y"])


def test_webhook_urls_must_be_http() -> None:
    with pytest.raises(ValueError, match="must start with http"):
        WebhookChannel(url="ftp://example.org/hook")


async def test_email_with_starttls_login_and_an_attachment(tmp_path) -> None:
    with smtp_server(tmp_path, starttls=True, login=("bot", "s3cret")) as server:
        smtp = SmtpSettings(host="127.0.0.1", port=server.port, user="bot",
                            password="s3cret", sender="optengine@example.org",
                            to=["ops@example.org", "finance@example.org"],
                            starttls=True, ca_file=server.ca_file)
        deliverer = Deliverer(settings(smtp=smtp))
        assert deliverer.channels == ["email"]
        report = Notification(
            title="daily cost report", text="spend $12.50", source="cost_management",
            attachments=(Attachment("costs.csv", b"tenant,usd\nacme,12.5\n", "text/csv"),),
        )
        [result] = await deliverer.send(report)
    assert result.ok, result.error
    [message] = server.messages
    assert message["Subject"] == "[info] daily cost report"
    assert message["From"] == "optengine@example.org"
    assert server.mailbox.envelopes == [
        ("optengine@example.org", ["ops@example.org", "finance@example.org"])]
    parts = {part.get_filename(): part for part in message.walk() if part.get_filename()}
    assert parts["costs.csv"].get_payload(decode=True) == b"tenant,usd\nacme,12.5\n"


async def test_a_wrong_password_is_a_failure_without_retries(tmp_path, caplog) -> None:
    with smtp_server(tmp_path, starttls=True, login=("bot", "s3cret")) as server, \
            caplog.at_level(logging.ERROR):
        smtp = SmtpSettings(host="127.0.0.1", port=server.port, user="bot", password="nope",
                            to=["ops@example.org"], ca_file=server.ca_file)
        [result] = await Deliverer(settings(smtp=smtp)).send(NOTE)
    assert not result.ok and result.attempts == 1 and "login refused" in result.error
    assert server.messages == [] and "delivery to email failed" in caplog.text


async def test_a_server_that_refuses_recipients_is_a_failure(tmp_path) -> None:
    with smtp_server(tmp_path, refuse_recipients=True) as server:
        smtp = SmtpSettings(host="127.0.0.1", port=server.port, starttls=False,
                            to=["nobody@example.org"])
        [result] = await Deliverer(settings(smtp=smtp)).send(NOTE)
    assert not result.ok and result.attempts == 1 and "refused" in result.error
    assert server.messages == []


async def test_an_smtp_server_that_is_down_is_retried_then_fails() -> None:
    from services.workers import free_port

    smtp = SmtpSettings(host="127.0.0.1", port=free_port(), starttls=False, to=["a@b.c"])
    [result] = await Deliverer(settings(smtp=smtp)).send(NOTE)
    assert not result.ok and result.attempts == 3 and "ConnectionRefusedError" in result.error


def test_email_is_off_without_host_or_recipients() -> None:
    assert Deliverer(settings(smtp=SmtpSettings(host="mail.example.org"))).channels == []
