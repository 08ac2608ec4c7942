"""Real notification receivers for tests: a webhook server (aiohttp) that records what
it is sent and can be told to fail or hang, and an SMTP server (aiosmtpd) that keeps
the mail it accepts, optionally with STARTTLS and login or refusing every recipient."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from services.workers import free_port
from tests.support.aio_server import BackgroundServer


@dataclass
class WebhookReceiver:
    """Routes: ``/ok`` answers 200, ``/fail`` 500, ``/flaky`` 500 for the first
    ``flaky_failures`` posts then 200, ``/hang`` never answers (until stopped),
    ``/reject`` 400. Every post is recorded as (path, JSON body, headers)."""

    flaky_failures: int = 2
    received: list[tuple[str, Any, dict[str, str]]] = field(default_factory=list)
    url: str = ""
    _server: BackgroundServer | None = None
    _release: asyncio.Event | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append((request.path, body, dict(request.headers)))
        posts_here = sum(1 for path, _, _ in self.received if path == request.path)
        if request.path == "/ok":
            return web.json_response({"ok": True})
        if request.path == "/flaky" and posts_here > self.flaky_failures:
            return web.Response(text="ok")
        if request.path == "/hang":
            if self._release is None:
                self._release = asyncio.Event()
            await self._release.wait()
            return web.Response(text="late")
        if request.path == "/reject":
            return web.Response(status=400, text="invalid_payload")
        return web.Response(status=500, text="receiver broken")

    def posts(self, path: str) -> list[Any]:
        return [body for p, body, _ in self.received if p == path]

    def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._server = BackgroundServer(app, "webhook-receiver").start()
        self.url = self._server.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            loop = self._server._loop
            if self._release is not None:
                loop.call_soon_threadsafe(self._release.set)
            self._server.stop()


@contextmanager
def webhook_receiver(**kwargs: Any) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(**kwargs).start()
    try:
        yield receiver
    finally:
        receiver.stop()


class _Mailbox:
    def __init__(self, refuse_recipients: bool) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refuse_recipients = refuse_recipients

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if self.refuse_recipients:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted"


@dataclass
class SmtpServer:
    port: int
    mailbox: _Mailbox
    ca_file: Path | None

    @property
    def messages(self) -> list[Message]:
        return self.mailbox.messages


def make_self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key, made with ``cryptography``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return cert_path, key_path


@contextmanager
def smtp_server(
    tmp_path: Path, *, starttls: bool = False, login: tuple[str, str] | None = None,
    refuse_recipients: bool = False,
) -> Iterator[SmtpServer]:
    """A real SMTP server on a free port; with ``starttls`` it requires STARTTLS with a
    fresh self-signed certificate (``ca_file`` lets the client verify it)."""
    mailbox = _Mailbox(refuse_recipients)
    kwargs: dict[str, Any] = {}
    ca_file = None
    if starttls:
        ca_file, key_file = make_self_signed(tmp_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(ca_file, key_file)
        kwargs.update(tls_context=context, require_starttls=True)
    if login is not None:
        user, password = login

        def authenticate(server, session, envelope, mechanism, auth_data):
            ok = (isinstance(auth_data, LoginPassword)
                  and auth_data.login.decode() == user
                  and auth_data.password.decode() == password)
            return AuthResult(success=ok, handled=False)

        kwargs.update(authenticator=authenticate, auth_require_tls=starttls)
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield SmtpServer(port=port, mailbox=mailbox, ca_file=ca_file)
    finally:
        controller.stop()
