"""STARTTLS and AUTH for :class:`slimta.smtp.server.Server`.

Theory of operation
-------------------
These two commands are the only ones that take the driver out of its plain
"build a reply, call the hook, answer" pattern: STARTTLS flushes the ``220``,
runs the TLS handshake on the socket and restarts the core's session, and
AUTH runs a multi-step SASL exchange (:mod:`slimta.smtp.auth`) whose
credentials are checked by the ``AUTH`` hook, with password hashing moved
off the gevent hub.  They live here, apart from :mod:`slimta.smtp.server`,
because they carry most of the driver's security-sensitive code and read
best together.

:class:`_TlsAuth` is a mixin that :class:`~slimta.smtp.server.Server`
inherits: the methods run on the server itself and are found through its
dispatch table as before, with no call layer added.  The annotations below
only tell the type checker which attributes of the server these methods
use; they create nothing at run time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gevent
from gevent import Timeout

from slimta.smtp import ConnectionLost
from slimta.smtp.auth import Challenge, Failure, ServerMechanism, Success, server_mechanism
from slimta.smtp.reply import UNKNOWN_COMMAND, Reply

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from slimta.smtp.extensions import Extensions
    from slimta.smtp.io import IO
    from slimta.smtp.protocol import Auth, AuthResponse, ServerConnection, StartTls

# The driver's logger: records keep the name they had before this code moved.
_log = logging.getLogger("slimta.smtp.server")


class _TlsAuth:
    """The STARTTLS handshake and the AUTH exchange of a session."""

    io: IO
    conn: ServerConnection | None
    handlers: Any
    address: Any
    context: ssl.SSLContext | None
    extensions: Extensions
    hostname: str
    command_timeout: float
    offer_requiretls: bool
    auth_gate: Callable[[], Reply | None] | None
    _auth_mechanism: ServerMechanism | None

    if TYPE_CHECKING:

        def _call(self, which: str, *args: Any) -> Any: ...

        def _reply(self, reply: Reply) -> None: ...

        def _send_canned(self, canned: Reply) -> None: ...

    def _on_starttls(self, event: StartTls) -> None:
        assert self.conn is not None
        reply = Reply("220", "2.7.0 Go ahead")
        self._call("STARTTLS", reply, self.extensions)
        self._reply(reply)
        if reply.code != "220":
            return
        self.io.send(self.conn.data_to_send())
        if self.conn.discarded_plaintext:
            _log.warning(
                "discarded %d octets sent before the TLS handshake by %s",
                self.conn.discarded_plaintext,
                self.address,
            )
        if not self._encrypt():
            raise ConnectionLost("TLS handshake failed")
        self.conn.tls_established()
        self.extensions.drop("STARTTLS")

    def _encrypt(self) -> bool:
        assert self.context is not None
        try:
            with Timeout(self.command_timeout):
                ok = self.io.encrypt_socket_server(self.context)
        except Timeout:
            ok = False
        if ok:
            if self.offer_requiretls:
                # RFC 8689: REQUIRETLS is advertised only over TLS.
                self.extensions.add("REQUIRETLS")
            self._call("TLSHANDSHAKE")
            self._call("TLSHANDSHAKE2", self.io.socket)
        return ok

    def _on_auth(self, event: Auth) -> None:
        if self.auth_gate is not None:
            refusal = self.auth_gate()
            if refusal is not None:
                self._reply(refusal)
                return
        self._auth_mechanism = server_mechanism(event.mechanism, self.hostname)
        self.io.auth_exchange(True)
        self._auth_step(self._auth_mechanism.start(event.initial_response))

    def _on_auth_response(self, event: AuthResponse) -> None:
        if self._auth_mechanism is None:  # pragma: no cover - the core prevents it
            self._send_canned(UNKNOWN_COMMAND)
            return
        self._auth_step(self._auth_mechanism.respond(event.data))

    def _auth_step(self, step: Challenge | Success | Failure) -> None:
        if isinstance(step, Challenge):
            self._reply(Reply("334", step.text))
            return
        self._auth_mechanism = None
        self.io.auth_exchange(False)
        if isinstance(step, Failure):
            self._reply(Reply(step.code, step.message))
            return
        reply = Reply("535", "5.7.8 Authentication credentials invalid")
        step.credentials.offload = _in_threadpool
        if hasattr(self.handlers, "AUTH"):
            # The handler decides: it starts from success and refuses by
            # changing the reply.  Without a handler nobody can verify the
            # credentials, so authentication fails closed.
            reply = Reply("235", "2.7.0 Authentication successful")
            self._call("AUTH", reply, step.credentials)
        self._reply(reply)


def _in_threadpool(func: Callable[..., bool], *args: Any) -> bool:
    """Run a CPU-bound check (password hashing) off the gevent hub."""
    return bool(gevent.get_hub().threadpool.apply(func, args))
