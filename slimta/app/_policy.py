"""What an edge of the ``slimta`` command accepts: its validators and the router.

Theory of operation: the rules live in one :class:`EdgePolicy` per edge,
built from the configuration; the SMTP validators and the HTTP validators
both ask it.  A recipient in one of the queue's ``local_domains`` is
accepted when the queue has a ``local_relay``; any other recipient only
when the queue has a ``relay`` *and* the client authenticated or connects
from one of ``relay_networks``.  Nothing else can open relaying, so the
node is never an open relay.  :class:`Router` is the queue's relay: it
sends local recipients to the local relay and the rest to the other one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from slimta.edge.smtp import SmtpValidators
from slimta.edge.wsgi import WsgiResponse, WsgiValidators
from slimta.relay import PermanentRelayError, Relay, RelayError, TransientRelayError
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from slimta.app.metrics import Metrics
    from slimta.envelope import Envelope

__all__ = ["EdgePolicy", "Router", "make_http_validators", "make_smtp_validators"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _domain(address: str) -> str:
    """The domain of an address, lower-cased; ``''`` for ``postmaster``."""
    return address.rpartition("@")[2].lower().rstrip(".") if "@" in address else ""


def _matches(address: str, patterns: list[str]) -> bool:
    low = address.lower()
    return any(low == p.lower() or (p.startswith("@") and low.endswith(p.lower())) for p in patterns)


@dataclass
class EdgePolicy:
    """The acceptance rules of one edge."""

    name: str
    metrics: Metrics
    local_domains: frozenset[str] = frozenset()
    has_local: bool = False
    has_remote: bool = False
    credentials: dict[str, str] = field(default_factory=dict)
    require_auth: bool = False
    relay_networks: list[Network] = field(default_factory=list)
    sender_deny: list[str] = field(default_factory=list)
    recipient_deny: list[str] = field(default_factory=list)

    def may_relay(self, ip: str | None, authenticated: bool) -> bool:
        """Whether this client may send to non-local domains."""
        if not self.has_remote:
            return False
        if authenticated:
            return True
        try:
            addr = ipaddress.ip_address(ip or "")
        except ValueError:
            return False
        return any(addr in net for net in self.relay_networks)

    def check_sender(self, sender: str) -> tuple[str, str, str] | None:
        """``(code, message, reason)`` refusing ``sender``, or None."""
        if self.sender_deny and _matches(sender, self.sender_deny):
            return "550", "5.7.1 Sender refused", "sender_denied"
        return None

    def check_recipient(self, rcpt: str, ip: str | None, authenticated: bool) -> tuple[str, str, str] | None:
        """``(code, message, reason)`` refusing ``rcpt``, or None."""
        if self.recipient_deny and _matches(rcpt, self.recipient_deny):
            return "550", "5.7.1 Recipient refused", "recipient_denied"
        domain = _domain(rcpt)
        if not domain or domain in self.local_domains:
            if self.has_local:
                return None
            return "550", "5.1.1 No local delivery here", "no_local_delivery"
        if self.may_relay(ip, authenticated):
            return None
        return "550", "5.7.1 Relaying denied", "relay_denied"


class _AppSmtpValidators(SmtpValidators):
    policy: ClassVar[EdgePolicy]

    def _refuse(self, reply: Any, refusal: tuple[str, str, str]) -> None:
        reply.code, reply.message = refusal[0], refusal[1]
        self.policy.metrics.message(self.policy.name, "rejected", refusal[2])

    def _ip(self) -> str | None:
        address = self.session.address
        return str(address[0]) if address else None

    def handle_auth(self, reply: Any, creds: Any) -> None:
        """Check the secret against the credentials file's hash."""
        if not creds.check_secret(self.policy.credentials.get(creds.authcid)):
            reply.code = "535"
            reply.message = "5.7.8 Authentication credentials invalid"

    def handle_mail(self, reply: Any, sender: str, params: Any) -> None:
        """Refuse unauthenticated senders on a submission edge, and denied senders."""
        if self.policy.require_auth and self.session.auth is None:
            self._refuse(reply, ("530", "5.7.0 Authentication required", "auth_required"))
            return
        refusal = self.policy.check_sender(sender)
        if refusal:
            self._refuse(reply, refusal)

    def handle_rcpt(self, reply: Any, recipient: str, params: Any) -> None:
        """Accept local recipients; others only from who may relay."""
        refusal = self.policy.check_recipient(recipient, self._ip(), self.session.auth is not None)
        if refusal:
            self._refuse(reply, refusal)

    def handle_queued(self, reply: Any, results: Any) -> None:
        """Count the message."""
        if reply.code == "250":
            self.policy.metrics.message(self.policy.name, "accepted")
        else:
            self.policy.metrics.message(self.policy.name, "rejected", str(reply.code))


def make_smtp_validators(policy: EdgePolicy) -> type[SmtpValidators]:
    """An :class:`SmtpValidators` subclass bound to ``policy``."""
    return type("AppSmtpValidators", (_AppSmtpValidators,), {"policy": policy})


class _AppHttpValidators(WsgiValidators):
    policy: ClassVar[EdgePolicy]

    def _refuse(self, refusal: tuple[str, str, str]) -> None:
        self.policy.metrics.message(self.policy.name, "rejected", refusal[2])
        raise WsgiResponse("403 Forbidden", [("X-Smtp-Reply", f'{refusal[0]}; message="{refusal[1]}"')])

    def validate_sender(self, sender: str) -> None:
        """Refuse denied senders."""
        refusal = self.policy.check_sender(sender)
        if refusal:
            self._refuse(refusal)

    def validate_recipient(self, recipient: str) -> None:
        """Accept local recipients; others only from relay_networks."""
        refusal = self.policy.check_recipient(recipient, self.environ.get("REMOTE_ADDR"), False)
        if refusal:
            self._refuse(refusal)


def make_http_validators(policy: EdgePolicy) -> type[WsgiValidators]:
    """A :class:`WsgiValidators` subclass bound to ``policy``."""
    return type("AppHttpValidators", (_AppHttpValidators,), {"policy": policy})


class Router(Relay):
    """Deliver local recipients with one relay and the others with another.

    Args:
        local_domains: Domains (lower case) for ``local``.
        local: The relay for local domains, or None.
        remote: The relay for other domains, or None.
        metrics: Where outcomes are counted.
        names: ``(local name, remote name)`` for the metrics labels.
    """

    def __init__(
        self,
        local_domains: frozenset[str],
        local: Relay | None,
        remote: Relay | None,
        metrics: Metrics,
        names: tuple[str, str] = ("local", "remote"),
    ) -> None:
        super().__init__()
        self.local_domains = local_domains
        self.local = local
        self.remote = remote
        self.metrics = metrics
        self.names = names

    def _route(self, rcpt: str) -> tuple[Relay | None, str]:
        domain = _domain(rcpt)
        if not domain or domain in self.local_domains:
            return self.local, self.names[0]
        return self.remote, self.names[1]

    def all_local(self, envelope: Envelope) -> bool:
        """Whether every recipient of ``envelope`` goes to the local relay."""
        if self.local is None or not envelope.recipients:
            return False
        return all(self._route(rcpt)[0] is self.local for rcpt in envelope.recipients)

    def attempt(self, envelope: Envelope, attempts: int) -> dict[str, Any]:
        """Deliver each group of recipients with its relay; results per recipient."""
        groups: dict[str, tuple[Relay | None, list[str]]] = {}
        for rcpt in envelope.recipients:
            relay, name = self._route(rcpt)
            groups.setdefault(name, (relay, []))[1].append(rcpt)
        results: dict[str, Any] = {}
        for name, (relay, rcpts) in groups.items():
            part = self._deliver(relay, envelope, rcpts, attempts)
            for rcpt in rcpts:
                outcome = part.get(rcpt) if isinstance(part, dict) else part
                results[rcpt] = outcome
                self._count(name, outcome, envelope)
        return results

    def _deliver(self, relay: Relay | None, envelope: Envelope, rcpts: list[str], attempts: int) -> Any:
        if relay is None:
            # Only reachable for mail queued under an older configuration.
            return PermanentRelayError("No route", Reply("550", "5.4.4 No route to this destination"))
        sub = envelope if rcpts == envelope.recipients else envelope.copy(rcpts)
        try:
            outcome = relay._attempt(sub, attempts)
        except RelayError as exc:
            return exc
        if isinstance(outcome, list | tuple):
            return dict(zip(rcpts, outcome, strict=False))
        return outcome

    def _count(self, name: str, outcome: Any, envelope: Envelope) -> None:
        if isinstance(outcome, TransientRelayError):
            result = "deferred"
        elif isinstance(outcome, RelayError):
            result = "bounced"
        else:
            result = "delivered"
        reply = getattr(outcome, "reply", outcome)
        code = str(getattr(reply, "code", None) or ("250" if result == "delivered" else ""))
        self.metrics.delivery(name, result, code, getattr(envelope, "timestamp", None))

    def kill(self) -> None:
        """Stop both relays."""
        for relay in (self.local, self.remote):
            if relay is not None:
                relay.kill()
