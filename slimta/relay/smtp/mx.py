"""Delivery by MX lookup: :class:`MxSmtpRelay`.

For each recipient domain the relay asks DNS where its mail goes (RFC 5321
section 5.1) and delivers there, through one
:class:`~slimta.relay.smtp.static.StaticSmtpRelay` (a connection pool) per
mail exchanger.  The rules:

* MX records are tried in preference order, all within one attempt: when
  one exchanger cannot be reached or refuses the session (connection,
  greeting, EHLO, TLS or AUTH failure), the next is tried at once.
  :meth:`MxSmtpRelay.choose_mx` picks the one to start with.
* A domain without MX records but with an address gets the implicit MX
  (the domain itself); a null MX (RFC 7505) fails permanently with
  ``556 5.1.10`` without any connection.
* DNS answers decide the error: a domain that does not exist or has no
  records ``550 5.1.2`` (bounce); a server failure or timeout ``451 4.4.3``
  (retry).
* Recipients are grouped by domain; each domain is delivered on its own,
  all at the same time, and the outcomes are merged into one
  ``{recipient: Reply or RelayError}`` result.

With ``tls_policy`` (a :class:`~slimta.relay.smtp.tlspolicy.TlsPolicy`),
each domain gets its TLS level (``none`` to ``dane``): MTA-STS may remove
exchangers the domain's policy does not list, and each exchanger gets the
requirement its client must meet; exchangers are pooled per requirement.
Envelopes marked REQUIRETLS always go through a policy (the default one
when none was given) that demands verified TLS.

Exchanger names are resolved with :mod:`slimta.util.dns` (pycares on the
hub); the resulting addresses are handed, one at a time, to the
``socket_creator`` given (by default :func:`gevent.socket.create_connection`),
so an IPv4-only creator from :mod:`slimta.util` still decides what is dialled.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

import gevent
from gevent import socket as gsocket

from slimta.policy.requiretls import get_requiretls
from slimta.relay import PermanentRelayError, Relay, RelayError, TransientRelayError
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.relay.smtp.tlspolicy import TlsPolicy, TlsRequirement
from slimta.smtp.reply import Reply
from slimta.util.dns import DNSError, NullMXError, resolve_addresses, resolve_mx

if TYPE_CHECKING:
    from collections.abc import Callable

    from slimta.envelope import Envelope

__all__ = ["MxSmtpRelay", "NoDomainError"]

# Failures of these steps are the exchanger's, not the message's: the next
# exchanger may well accept the same message.
_SESSION_STEPS = frozenset(
    {"[CONNECT]", "[BANNER]", "[TLS]", "EHLO", "HELO", "STARTTLS", "AUTH", "[REQUIRETLS]"}
)


class NoDomainError(PermanentRelayError):
    """A recipient address has no domain to look up.

    Args:
        recipient: The address; kept as the ``recipient`` attribute.
    """

    def __init__(self, recipient: str) -> None:
        text = f"Recipient address has no domain: {recipient}"
        super().__init__(text, Reply("553", f"5.1.3 {text}", command="RCPT"))
        self.recipient = recipient


class MxSmtpRelay(Relay):
    """Deliver each envelope to the mail exchangers of its recipients' domains.

    Args:
        context: The :class:`ssl.SSLContext` for STARTTLS; ``None`` means
            opportunistic TLS without certificate checks (what most MTAs do
            between each other).
        tls_policy: The :class:`~slimta.relay.smtp.tlspolicy.TlsPolicy`
            deciding the TLS level of each destination; None keeps the
            behaviour ``context`` and ``tls_required`` give.

            .. versionadded:: 0.1.0
        client_kwargs: Arguments for every
            :class:`~slimta.relay.smtp.static.StaticSmtpRelay` and its clients
            (``pool_size``, ``socket_creator``, ``ehlo_as``, ``tls_required``,
            the timeouts, ``idle_timeout``...).

    Attributes:
        smtp_port: The port dialled on exchangers found in DNS (25).

            .. versionadded:: 0.1.0
        dns_timeout: Seconds allowed for each DNS lookup (None: the
            resolver's own timeout and tries).

            .. versionadded:: 0.1.0
    """

    smtp_port = 25
    dns_timeout: float | None = 10.0

    def __init__(
        self,
        context: ssl.SSLContext | None = None,
        *,
        tls_policy: TlsPolicy | None = None,
        **client_kwargs: Any,
    ) -> None:
        super().__init__()
        self.tls_policy = tls_policy
        self._user_socket_creator: Callable[..., Any] = (
            client_kwargs.pop("socket_creator", None) or gsocket.create_connection
        )
        self._client_kwargs = dict(client_kwargs, context=context)
        self._force_mx: dict[str, tuple[str, int]] = {}
        self._relayers: dict[tuple[str, int, TlsRequirement | None], StaticSmtpRelay] = {}

    # -- hooks -----------------------------------------------------------------------

    def new_static_relay(self, destination: str, port: int) -> StaticSmtpRelay:
        """Create the relay for one exchanger; override to change its settings.

        Args:
            destination: The exchanger's host name.
            port: The port to deliver to.

        Returns:
            A :class:`~slimta.relay.smtp.static.StaticSmtpRelay`; the relay
            keeps it for every later delivery to ``destination:port``.
        """
        return StaticSmtpRelay(destination, port=port, socket_creator=self._connect, **self._client_kwargs)

    def choose_mx(self, records: list[tuple[int, str]], attempts: int) -> str:
        """Pick the exchanger to try first.

        The others follow in preference order within the same attempt.  This
        default moves one step down the list on each new attempt, so that a
        retried message starts somewhere else.

        Args:
            records: ``(preference, host)`` pairs sorted by preference.
            attempts: How many earlier attempts the envelope has had.

        Returns:
            The host name to start with.
        """
        return records[attempts % len(records)][1]

    def force_mx(self, domain: str, destination: str, port: int = 25) -> None:
        """Send mail for ``domain`` to ``destination:port``, without DNS.

        Args:
            domain: The recipient domain (any case).
            destination: The host to deliver to.
            port: Its port.
        """
        self._force_mx[domain.lower()] = (destination, port)

    def kill(self) -> None:
        """Stop every exchanger's connection pool."""
        for relayer in list(self._relayers.values()):
            relayer.kill()

    # -- delivery ----------------------------------------------------------------------

    def attempt(self, envelope: Envelope, attempts: int) -> Any:
        """Deliver to every recipient domain; see the module description.

        Args:
            envelope: The envelope to deliver.
            attempts: How many earlier attempts the envelope has had.

        Returns:
            The reply of the next hop when there was one domain and every
            recipient was accepted, else ``{recipient: Reply or RelayError}``.

        Raises:
            RelayError: The only domain failed as a whole.
        """
        groups: dict[str, list[str]] = {}
        results: dict[str, Any] = {}
        for rcpt in envelope.recipients:
            local, at, domain = rcpt.rpartition("@")
            if not at or not local or not domain:
                results[rcpt] = NoDomainError(rcpt)
            else:
                groups.setdefault(domain.lower(), []).append(rcpt)
        if len(groups) == 1 and not results:
            domain = next(iter(groups))
            return self._attempt_domain(domain, envelope, attempts)
        if not groups and len(results) == 1:
            raise next(iter(results.values()))
        jobs = {
            domain: gevent.spawn(self._attempt_domain, domain, envelope.copy(rcpts), attempts)
            for domain, rcpts in groups.items()
        }
        gevent.joinall(list(jobs.values()))
        for domain, job in jobs.items():
            self._merge(results, groups[domain], job)
        return {rcpt: results[rcpt] for rcpt in envelope.recipients}

    @staticmethod
    def _merge(results: dict[str, Any], rcpts: list[str], job: gevent.Greenlet[..., Any]) -> None:
        if job.successful():
            value = job.value
            for rcpt in rcpts:
                results[rcpt] = value.get(rcpt) if isinstance(value, dict) else value
            return
        exc = job.exception
        if not isinstance(exc, RelayError):
            exc = TransientRelayError(f"Delivery failed: {exc!r}")
        for rcpt in rcpts:
            results[rcpt] = exc

    def _attempt_domain(self, domain: str, envelope: Envelope, attempts: int) -> Any:
        forced = self._force_mx.get(domain)
        if forced is not None:
            order, port = [forced[0]], forced[1]
        else:
            records = self._lookup(domain)
            first = self.choose_mx(records, attempts)
            order, port = [first] + [host for _, host in records if host != first], self.smtp_port
        hosts = list(dict.fromkeys(order))
        policy = self.tls_policy
        if policy is None and get_requiretls(envelope):
            policy = TlsPolicy()
        requirement_for = None
        if policy is not None:
            hosts, requirement_for = policy.plan(domain, hosts, get_requiretls(envelope))
        errors: list[RelayError] = []
        for host in hosts:
            try:
                requirement = requirement_for(host) if requirement_for is not None else None
                return self._relayer(host, port, requirement).attempt(envelope, attempts)
            except RelayError as exc:
                if exc.reply.command not in _SESSION_STEPS:
                    raise
                errors.append(exc)
        # Every exchanger failed: retry later if any failure may pass.
        transient = [exc for exc in errors if not isinstance(exc, PermanentRelayError)]
        raise (transient or errors)[0]

    def _lookup(self, domain: str) -> list[tuple[int, str]]:
        try:
            return resolve_mx(domain, self.dns_timeout)
        except NullMXError:
            text = f"Domain does not accept mail (null MX): {domain}"
            raise PermanentRelayError(text, Reply("556", f"5.1.10 {text}", command="[MX]")) from None
        except DNSError as exc:
            if exc.permanent:
                text = f"No usable DNS records for {domain}: {exc}"
                raise PermanentRelayError(text, Reply("550", f"5.1.2 {text}", command="[MX]")) from None
            text = f"DNS lookup for {domain} failed: {exc}"
            raise TransientRelayError(text, Reply("451", f"4.4.3 {text}", command="[MX]")) from None

    def _relayer(self, host: str, port: int, requirement: TlsRequirement | None = None) -> StaticSmtpRelay:
        # One pool per TLS requirement: a session set up for one policy is
        # never reused for an envelope that needs another.
        key = (host, port, requirement)
        relayer = self._relayers.get(key)
        if relayer is None:
            relayer = self.new_static_relay(host, port)
            if requirement is not None:
                relayer.client_kwargs["tls_requirement"] = requirement
            self._relayers[key] = relayer
        return relayer

    def _connect(self, address: tuple[str, int]) -> Any:
        """Resolve an exchanger with our DNS, then dial its addresses in turn."""
        host, port = address
        last: OSError | None = None
        for ip in resolve_addresses(host, self.dns_timeout):
            try:
                return self._user_socket_creator((ip, port))
            except OSError as exc:
                last = exc
        assert last is not None
        raise last
