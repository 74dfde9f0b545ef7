"""Relays to one fixed next hop, with a pool of reusable connections.

:class:`StaticSmtpRelay` sends everything to one ``host:port`` (a smart
host, an internal hub); :class:`StaticLmtpRelay` does the same over LMTP,
typically to a local mailbox server.  Both are
:class:`~slimta.relay.pool.RelayPool` subclasses: up to ``pool_size``
connections are open at once, and with ``idle_timeout`` each one is kept
for the next message instead of being closed.
"""

from __future__ import annotations

import ssl
from typing import Any

from slimta.relay.pool import RelayPool, RelayPoolClient
from slimta.relay.smtp.client import SmtpRelayClient
from slimta.relay.smtp.lmtpclient import LmtpRelayClient

__all__ = ["StaticLmtpRelay", "StaticSmtpRelay"]


class StaticSmtpRelay(RelayPool):
    """Deliver every envelope to ``host:port`` over SMTP.

    Args:
        host: The next hop's host name or IP address.
        port: Its port.
        pool_size: The most connections open at once; ``None`` means no
            limit.  Deliveries beyond it wait for a free connection.
        client_class: The :class:`~slimta.relay.pool.RelayPoolClient` class
            to make connections with; defaults to
            :class:`~slimta.relay.smtp.client.SmtpRelayClient`.
        context: The :class:`ssl.SSLContext` for TLS; ``None`` means
            opportunistic TLS without certificate checks.
        client_kwargs: More arguments for ``client_class`` (``ehlo_as``,
            ``tls_required``, ``idle_timeout``, ``credentials``, the timeouts,
            ``socket_creator``...).
    """

    def __init__(
        self,
        host: str,
        port: int = 25,
        pool_size: int | None = None,
        client_class: type[SmtpRelayClient] | None = None,
        context: ssl.SSLContext | None = None,
        **client_kwargs: Any,
    ) -> None:
        super().__init__(pool_size)
        self.client_class = client_class or SmtpRelayClient
        self.host = host
        self.port = port
        self.client_kwargs = dict(client_kwargs, context=context)

    def add_client(self) -> RelayPoolClient:
        """Create a client for ``host:port`` (the pool starts it)."""
        return self.client_class((self.host, self.port), self.queue, **self.client_kwargs)


class StaticLmtpRelay(StaticSmtpRelay):
    """Deliver every envelope to ``host:port`` over LMTP.

    Args:
        host: The LMTP server's host name or IP address.
        port: Its port.
        pool_size: The most connections open at once; ``None`` means no limit.
        client_kwargs: More arguments for
            :class:`~slimta.relay.smtp.lmtpclient.LmtpRelayClient` (the same
            as for :class:`~slimta.relay.smtp.client.SmtpRelayClient`).
    """

    def __init__(
        self, host: str = "localhost", port: int = 24, pool_size: int | None = None, **client_kwargs: Any
    ) -> None:
        client_kwargs.setdefault("client_class", LmtpRelayClient)
        super().__init__(host, port, pool_size, **client_kwargs)
