"""A real receiving MX for end-to-end tests: aiosmtpd on 127.0.0.1 in its own thread.

    receiver = Receiver()                      # plain SMTP, PIPELINING, SMTPUTF8
    receiver = Receiver(tls_cert=leaf)         # + STARTTLS with a trustme LeafCert
    ...  deliver to 127.0.0.1:receiver.port ...
    receiver.messages[0].data                  # the bytes as received (dot-unstuffed)
    receiver.stop()

It answers per address, by the local part's prefix, so one message can get mixed
results:

* recipients: `ok...` (and anything else) 250, `soft...` 451 4.2.0, `hard...` 550 5.1.1;
* senders: `soft...` 451 4.3.0, `hard...` 550 5.1.8, anything else 250.

What it saw is kept for assertions: `messages` (one `ReceivedMessage` per accepted
DATA, recorded before the 250 goes out, so a client that has its 250 finds it
here), `commands` (every command verb, in order), `mail_pipelined` (for each MAIL,
whether the following RCPT/DATA commands were already waiting when MAIL was
handled: the client pipelined), `connections` (peer addresses). aiosmtpd does not
advertise PIPELINING although it handles it, so the EHLO hook adds it; `hide`
removes extensions from EHLO (e.g. `hide=("8BITMIME",)`).
"""

from __future__ import annotations

import functools
import ssl
import warnings
from collections.abc import Iterable
from typing import Any

import attrs
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from server_process import free_port


@attrs.define
class ReceivedMessage:
    """One message as the receiver accepted it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    rcpt_options: list[str]
    peer: tuple[str, int]
    helo: str
    tls: bool
    auth_user: str | None


class _Handler:
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        last = responses.pop()  # "250 HELP"
        if self.receiver.pipelining:
            responses.append("250-PIPELINING")
        responses.append(last)
        hidden = {h.upper() for h in self.receiver.hide}
        kept = [r for r in responses if r[4:].split(" ")[0].upper() not in hidden]
        # the last line must keep its "250 " form
        kept[-1] = "250 " + kept[-1][4:]
        return kept

    async def handle_MAIL(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        waiting = bytes(getattr(server._reader, "_buffer", b""))  # noqa: SLF001
        self.receiver.mail_pipelined.append(b"RCPT" in waiting.upper())
        local = address.lower()
        if local.startswith("soft"):
            return "451 4.3.0 sender temporarily refused"
        if local.startswith("hard"):
            return "550 5.1.8 sender refused"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        local = address.lower()
        if local.startswith("soft"):
            return "451 4.2.0 mailbox busy"
        if local.startswith("hard"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        if self.receiver.drop_after_data:
            assert server.transport is not None
            server.transport.abort()
            return "451 4.3.0 never seen"
        auth = session.auth_data
        self.receiver.messages.append(
            ReceivedMessage(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                mail_options=list(envelope.mail_options),
                rcpt_options=list(envelope.rcpt_options),
                peer=tuple(session.peer[:2]),
                helo=session.host_name or "",
                tls=session.ssl is not None,
                auth_user=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            )
        )
        return self.receiver.data_reply


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP, recording every command verb and connection in the receiver."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._recorder = handler.receiver
        for name, method in list(self._smtp_methods.items()):
            self._smtp_methods[name] = self._recorded(name, method)

    def _recorded(self, name: str, method: Any) -> Any:
        @functools.wraps(method)
        async def wrapper(arg: str | None) -> None:
            self._recorder.commands.append(name)
            await method(arg)

        return wrapper

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self._recorder.connections.append(tuple(peer[:2]))


class Receiver:
    """An aiosmtpd MX on 127.0.0.1 (see the module docstring); `stop()` when done.

    `tls_cert` is a `trustme.LeafCert` (STARTTLS offered with it); `require_tls`
    refuses mail before STARTTLS; `smtputf8=False` stops offering SMTPUTF8;
    `auth={"user": "password"}` offers AUTH PLAIN/LOGIN, requires it for mail, and
    (with `auth_require_tls=False`) offers it without TLS; `drop_after_data` cuts
    the connection once a message's data has arrived, without a reply;
    `data_reply` is the end-of-data reply; `tls_context` replaces the one built
    from `tls_cert` (e.g. to make the handshake fail).
    """

    def __init__(
        self,
        tls_cert: Any = None,
        require_tls: bool = False,
        smtputf8: bool = True,
        auth: dict[str, str] | None = None,
        auth_require_tls: bool = True,
        pipelining: bool = True,
        hide: Iterable[str] = (),
        drop_after_data: bool = False,
        data_reply: str = "250 2.0.0 OK queued",
        hostname: str = "mx.test",
        data_size_limit: int = 33554432,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.messages: list[ReceivedMessage] = []
        self.commands: list[str] = []
        self.mail_pipelined: list[bool] = []
        self.connections: list[tuple[str, int]] = []
        self.pipelining = pipelining
        self.hide = tuple(hide)
        self.drop_after_data = drop_after_data
        self.data_reply = data_reply
        self.port = free_port()
        kwargs: dict[str, Any] = {
            "enable_SMTPUTF8": smtputf8,
            "data_size_limit": data_size_limit,
        }
        if tls_cert is not None and tls_context is None:
            tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls_cert.configure_cert(tls_context)
        if tls_context is not None:
            kwargs["tls_context"] = tls_context
            kwargs["require_starttls"] = require_tls
        if auth is not None:
            users = dict(auth)

            def authenticator(
                server: Any, session: Any, envelope: Any, mechanism: str, data: Any
            ) -> AuthResult:
                ok = (
                    isinstance(data, LoginPassword)
                    and users.get(data.login.decode()) == data.password.decode()
                )
                return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

            kwargs.update(
                authenticator=authenticator,
                auth_required=True,
                auth_require_tls=auth_require_tls,
            )
        handler = _Handler(self)
        receiver = self

        class _Controller(Controller):
            def factory(self) -> SMTP:
                return _RecordingSMTP(handler, **self.SMTP_kwargs)

        if auth is not None and not auth_require_tls:
            # aiosmtpd warns (once per connection) about AUTH without TLS: intended here.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
        for attempt in range(5):  # aiosmtpd needs its port up front: retry one found taken
            self._controller = _Controller(
                handler, hostname="127.0.0.1", port=self.port, server_hostname=hostname, **kwargs
            )
            try:
                self._controller.start()
                break
            except OSError:
                if attempt == 4:
                    raise
                self.port = free_port()
        # The controller's own start-up probe connection is not a client's.
        receiver.connections.clear()

    def stop(self) -> None:
        """Stop the server and its thread."""
        self._controller.stop()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
