"""Outbound TLS policy per destination: none, may, encrypt, verify, MTA-STS, DANE.

A :class:`TlsPolicy` given to :class:`~slimta.relay.smtp.mx.MxSmtpRelay`
(``tls_policy=``) decides, for each recipient domain and each of its mail
exchangers, what the SMTP client must achieve before it may send:

========== =================================================================
Level      The client...
========== =================================================================
none       never uses STARTTLS.
may        uses STARTTLS when offered, without checking the certificate, and
           delivers in cleartext when that fails (RFC 7435; the default).
encrypt    requires STARTTLS and a completed handshake; no certificate check.
verify     requires STARTTLS and a certificate valid for the MX host name
           (PKIX, with ``context``'s trust store).
mta-sts    RFC 8461: the ``_mta-sts`` TXT record announces a policy, fetched
           over verified HTTPS and cached for its ``max_age``.  ``enforce``:
           only MX hosts the policy lists are used, each with ``verify``.
           ``testing``: delivery as ``may``, failures logged and counted.
           No policy (or none fetchable and none cached): ``may``.
dane       RFC 7672: when the resolver reports the MX records and the MX
           host's ``_25._tcp`` TLSA records DNSSEC-authenticated (AD bit),
           the certificate must match a DANE-EE (usage 3) or DANE-TA
           (usage 2, with a chain to it valid for the MX name) record.
           Secure TLSA records that are all unusable: ``encrypt``.  No
           secure MX or TLSA records: ``may``.
========== =================================================================

A failure to meet the policy is a temporary failure (``451 4.7.5`` or
``4.7.10``) whose text names the policy, e.g. ``TLS policy dane not met by
mx.example.com: no TLSA record matches the certificate``; the MX relay then
tries the next exchanger.  Nothing falls back to cleartext once a policy
above ``may`` applies.

Envelopes marked with REQUIRETLS (:mod:`slimta.policy.requiretls`) need
verified TLS whatever the level (``verify`` at least; ``dane`` and
MTA-STS ``enforce`` count as verified) and a next hop that offers
REQUIRETLS; otherwise they fail permanently with ``550 5.7.30``.

Lookups are cached: MTA-STS policies for their ``max_age``, the TXT record
and DNSSEC answers for their TTL but at least :attr:`TlsPolicy.min_cache`
seconds, so a warm destination costs no DNS round trip.

DANE-TA chain checks and the SPKI selector need the ``cryptography``
package; without it only ``3 0 x`` (DANE-EE, whole certificate) records can
match.

This module holds the levels, the DANE checks and :class:`TlsPolicy`
itself; the MTA-STS lookup, fetch, parser and cache live in the private
``slimta.relay.smtp._mtasts`` (re-exported here: :class:`MtaStsPolicy`,
:class:`MtaStsError`, :func:`fetch_mta_sts_policy`,
:func:`parse_mta_sts_policy`).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from slimta.relay.smtp import SmtpPermanentRelayError, SmtpTransientRelayError
from slimta.relay.smtp._mtasts import MTA_STS_MAX_AGE as MTA_STS_MAX_AGE  # importable here, as before
from slimta.relay.smtp._mtasts import MTA_STS_MAX_BYTES as MTA_STS_MAX_BYTES
from slimta.relay.smtp._mtasts import (
    Cache,
    MtaStsCache,
    MtaStsError,
    MtaStsPolicy,
    default_verify_context,
    fetch_mta_sts_policy,
    parse_mta_sts_policy,
)
from slimta.smtp.reply import Reply
from slimta.util.dns import DNSError, DNSResolver, TLSARecord

if TYPE_CHECKING:
    from slimta.relay.smtp.tlsrpt import TlsReport

__all__ = [
    "LEVELS",
    "MtaStsError",
    "MtaStsPolicy",
    "TlsPolicy",
    "TlsPolicyFailure",
    "TlsRequirement",
    "fetch_mta_sts_policy",
    "match_tlsa",
    "parse_mta_sts_policy",
    "requiretls_failure",
]

_log = logging.getLogger(__name__)

#: Every level, weakest first.
LEVELS: Final = ("none", "may", "encrypt", "verify", "mta-sts", "dane")


class TlsPolicyFailure(SmtpTransientRelayError):
    """The next hop did not meet the TLS policy: retry later (``451``).

    Args:
        policy: The policy's name (``encrypt``, ``verify``, ``mta-sts``, ``dane``).
        host: The next hop (MX host name or address).
        reason: What went wrong.
        code: The enhanced status code (``4.7.5`` or ``4.7.10``).
        command: The step, for ``reply.command``.
    """

    def __init__(
        self, policy: str, host: str, reason: str, code: str = "4.7.5", command: str = "[TLS]"
    ) -> None:
        text = f"{code} TLS policy {policy} not met by {host}: {reason}"
        super().__init__(Reply("451", text, command=command))
        self.policy = policy


def requiretls_failure(host: str, reason: str) -> SmtpPermanentRelayError:
    """The permanent error for a REQUIRETLS message that cannot go to ``host``."""
    text = f"5.7.30 REQUIRETLS support required: {host} {reason}"
    return SmtpPermanentRelayError(Reply("550", text, command="[REQUIRETLS]"))


@dataclass(frozen=True)
class TlsRequirement:
    """What one SMTP client connection must achieve (built by :class:`TlsPolicy`).

    Attributes:
        level: ``none``, ``may``, ``encrypt``, ``verify`` or ``dane``.
        policy: The name used in failure replies (``mta-sts`` for a
            ``verify`` that MTA-STS asked for).
        context: The :class:`ssl.SSLContext` for ``verify``; None: the
            system's trust store.
        hostname: The name the certificate must match (the MX host).
        tlsa: The usable TLSA records for ``dane``.
        report_only: Failures are logged and counted, then delivery goes on
            as ``may`` (MTA-STS ``testing`` mode).
        requiretls: The envelopes sent this way carry REQUIRETLS.
        domain: The policy domain, for reports.
        report: Where sessions are counted (RFC 8460), or None.
        policy_text: The policy as the report shows it.
    """

    level: str = "may"
    policy: str = "may"
    context: ssl.SSLContext | None = field(default=None, compare=False)
    hostname: str | None = None
    tlsa: tuple[TLSARecord, ...] = ()
    report_only: bool = False
    requiretls: bool = False
    domain: str | None = None
    report: TlsReport | None = field(default=None, compare=False, repr=False)
    policy_text: str | None = field(default=None, compare=False, repr=False)

    @property
    def demands_tls(self) -> bool:
        """Whether the connection must be encrypted (no cleartext fallback)."""
        return self.level in ("encrypt", "verify", "dane") and not self.report_only

    @property
    def verifies(self) -> bool:
        """Whether success means an authenticated server (REQUIRETLS may go)."""
        return self.level in ("verify", "dane") and not self.report_only

    def note(self, result: str | None) -> None:
        """Count one session in :attr:`report`: a success (None) or an RFC 8460 result type."""
        if self.report is None or self.domain is None:
            return
        if self.level in ("none", "may") and not self.report_only:
            return
        kind = {"mta-sts": "sts", "dane": "tlsa"}.get(self.policy, "no-policy-found")
        self.report.record(self.domain, kind, self.policy_text, self.hostname, result)

    def verify_context(self) -> ssl.SSLContext:
        """The context for ``verify``: ``context`` or the system defaults."""
        if self.context is not None:
            return self.context
        return default_verify_context()


# -- DANE (RFC 7672) ----------------------------------------------------------------


def _digest(data: bytes, matching_type: int) -> bytes | None:
    if matching_type == 0:
        return data
    if matching_type == 1:
        return hashlib.sha256(data).digest()
    if matching_type == 2:
        return hashlib.sha512(data).digest()
    return None


def _spki(der: bytes) -> bytes | None:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # pragma: no cover - the optional dependency is missing
        return None
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError:
        return None
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _associated(der: bytes, record: TLSARecord) -> bool:
    if record.selector == 0:
        data: bytes | None = der
    elif record.selector == 1:
        data = _spki(der)
    else:
        return False
    return data is not None and _digest(data, record.matching_type) == record.data


def _chain_to(trust_anchor: bytes, chain: list[bytes], hostname: str) -> bool:
    """Whether ``chain[0]`` is valid for ``hostname`` through ``chain`` up to ``trust_anchor``."""
    try:
        from cryptography import x509
        from cryptography.x509.verification import (
            Criticality,
            ExtensionPolicy,
            PolicyBuilder,
            Store,
            VerificationError,
        )
    except ImportError:  # pragma: no cover - the optional dependency is missing
        return False
    # The Web PKI profile's rules for server certificates (SAN not critical,
    # EKU...) do not bind a private CA named by DANE-TA: only the name, the
    # dates and the CA side of the chain are checked.
    server = ExtensionPolicy.permit_all().require_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    try:
        anchor = x509.load_der_x509_certificate(trust_anchor)
        leaf = x509.load_der_x509_certificate(chain[0])
        others = [x509.load_der_x509_certificate(der) for der in chain[1:]]
        builder = PolicyBuilder().store(Store([anchor]))
        builder = builder.extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=server)
        builder.build_server_verifier(x509.DNSName(hostname)).verify(leaf, others)
    except (ValueError, VerificationError):
        return False
    return True


def match_tlsa(
    records: tuple[TLSARecord, ...] | list[TLSARecord], chain: list[bytes], hostname: str
) -> str | None:
    """Check a server's certificate chain against TLSA records (RFC 7672 section 3).

    DANE-EE (usage 3) records match the server's own certificate, with no
    name or date check.  DANE-TA (usage 2) records match a certificate of
    the chain (or are the whole trust anchor, ``2 0 0``), which must then
    issue, through the chain, a certificate valid for ``hostname``.
    Other usages never match (RFC 7672 section 3.1.3).

    Args:
        records: The TLSA records.
        chain: The DER certificates the server sent, its own first.
        hostname: The MX host name.

    Returns:
        ``"dane-ee"`` or ``"dane-ta"`` for the first record that matches,
        else None.
    """
    if not chain:
        return None
    for record in records:
        if record.usage == 3 and _associated(chain[0], record):
            return "dane-ee"
    for record in records:
        if record.usage != 2:
            continue
        anchors = [der for der in chain[1:] if _associated(der, record)]
        if record.selector == 0 and record.matching_type == 0:
            anchors.append(record.data)
        if any(_chain_to(anchor, chain, hostname) for anchor in anchors):
            return "dane-ta"
    return None


# -- the per-destination policy -----------------------------------------------------


class TlsPolicy:
    """The TLS level for each destination domain, and the lookups behind it.

    Args:
        default: The level for domains not in ``domains`` (``may``).
        domains: ``{domain: level}``; a key ``.example.com`` covers every
            subdomain of ``example.com``.
        context: Trust store (:class:`ssl.SSLContext`) for ``verify`` and
            MTA-STS; None: the system's.
        https_context: Trust store for fetching MTA-STS policies; None:
            ``context``.
        resolver: The resolver for DNSSEC answers (a validating resolver
            you trust, for DANE) and MTA-STS; None: the default one.
        dns_timeout: Seconds allowed for each lookup.
        fetch_timeout: Seconds allowed for each MTA-STS policy fetch.
        report: A :class:`~slimta.relay.smtp.tlsrpt.TlsReport` counting
            successes and failures, or None.

    Attributes:
        min_cache: Seconds a DNS answer is kept at least (60).
        mta_sts_port: The HTTPS port of policy hosts (443).
        smtp_port: The port in TLSA names (``_25._tcp``).
    """

    min_cache: float = 60.0
    mta_sts_port: int = 443
    smtp_port: int = 25

    def __init__(
        self,
        default: str = "may",
        domains: Mapping[str, str] | None = None,
        *,
        context: ssl.SSLContext | None = None,
        https_context: ssl.SSLContext | None = None,
        resolver: DNSResolver | None = None,
        dns_timeout: float = 10.0,
        fetch_timeout: float = 10.0,
        report: TlsReport | None = None,
    ) -> None:
        self.domains = {key.lower().rstrip("."): value for key, value in (domains or {}).items()}
        for level in (default, *self.domains.values()):
            if level not in LEVELS:
                raise ValueError(f"unknown TLS policy level {level!r} (choose from {', '.join(LEVELS)})")
        self.default = default
        self.context = context
        self.https_context = https_context
        self.resolver = resolver
        self.dns_timeout = dns_timeout
        self.fetch_timeout = fetch_timeout
        self.report = report
        self._mta_sts = MtaStsCache()
        self._dnssec = Cache()

    def level_for(self, domain: str) -> str:
        """The configured level for ``domain`` (exact name, then parent ``.suffix`` keys)."""
        name = domain.lower().rstrip(".")
        if name in self.domains:
            return self.domains[name]
        labels = name.split(".")
        for i in range(1, len(labels)):
            level = self.domains.get("." + ".".join(labels[i:]))
            if level is not None:
                return level
        return self.default

    def plan(
        self, domain: str, hosts: list[str], requiretls: bool = False
    ) -> tuple[list[str], Callable[[str], TlsRequirement]]:
        """Decide the exchangers to use for ``domain`` and a requirement for each.

        Args:
            domain: The recipient domain.
            hosts: Its MX hosts, in the order they will be tried.
            requiretls: The envelope carries REQUIRETLS.

        Returns:
            ``(hosts, requirement_for)``: the hosts allowed (MTA-STS
            ``enforce`` drops those the policy does not list), and a function
            giving the :class:`TlsRequirement` of one host; it raises
            :class:`TlsPolicyFailure` when the host cannot be used now.

        Raises:
            TlsPolicyFailure: No host may be used.
        """
        level = self.level_for(domain)
        if level == "mta-sts":
            return self._plan_mta_sts(domain, hosts, requiretls)
        if level == "dane":
            secure_mx = self._secure_mx(domain)
            return hosts, lambda host: self._dane(domain, host, secure_mx, requiretls)
        return hosts, lambda host: self._simple(level, domain, host, requiretls)

    def _simple(self, level: str, domain: str, host: str, requiretls: bool) -> TlsRequirement:
        if requiretls and level in ("none", "may", "encrypt"):
            level = "verify"
        context = self.context if level == "verify" else None
        return TlsRequirement(
            level, level, context, host, requiretls=requiretls, domain=domain, report=self.report
        )

    # -- MTA-STS --------------------------------------------------------------------

    def mta_sts_policy(self, domain: str) -> MtaStsPolicy | None:
        """The MTA-STS policy of ``domain``: cached, or fetched when the TXT id changed.

        Returns:
            The policy, or None when the domain has none that can be had
            now (no TXT record and nothing cached, or a fetch failure with
            nothing cached: RFC 8461 section 5 then delivers as without).
        """
        return self._mta_sts.policy(self, domain)

    def _plan_mta_sts(
        self, domain: str, hosts: list[str], requiretls: bool
    ) -> tuple[list[str], Callable[[str], TlsRequirement]]:
        policy = self.mta_sts_policy(domain)
        if policy is None or policy.mode == "none":
            return hosts, lambda host: self._simple("may", domain, host, requiretls)
        testing = policy.mode == "testing"
        allowed = [host for host in hosts if policy.matches(host)]
        if len(allowed) < len(hosts):
            for host in hosts:
                if not policy.matches(host):
                    _log.warning("MTA-STS (%s): MX %s of %s is not in the policy", policy.mode, host, domain)
                    self._count(domain, "sts", policy, host, "validation-failure")
        if not testing:
            if not allowed:
                raise TlsPolicyFailure("mta-sts", domain, "no MX host matches the policy", command="[MX]")
            hosts = allowed

        def requirement(host: str) -> TlsRequirement:
            report_only = testing and not requiretls
            return TlsRequirement(
                "verify",
                "mta-sts",
                self.context,
                host,
                report_only=report_only,
                requiretls=requiretls,
                domain=domain,
                report=self.report,
                policy_text=policy.text,
            )

        return hosts, requirement

    # -- DANE -------------------------------------------------------------------------

    def _secure(self, name: str, rtype: str) -> Any:
        """``(authenticated, records)`` from cache or DNS; ``(False, [])`` when none exist."""
        key = (name.lower(), rtype)
        cached = self._dnssec.get(key)
        if cached is not None:
            return cached
        use = self.resolver if self.resolver is not None else DNSResolver.get_default()
        try:
            answer = use.lookup_secure(name, rtype, self.dns_timeout)
        except DNSError as exc:
            if not exc.permanent:
                raise
            value: tuple[bool, list[Any]] = (False, [])
            self._dnssec.put(key, value, self.min_cache)
            return value
        value = (answer.authenticated, answer.records)
        self._dnssec.put(key, value, max(answer.ttl, self.min_cache))
        return value

    def _secure_mx(self, domain: str) -> bool:
        try:
            return bool(self._secure(domain, "MX")[0])
        except DNSError as exc:
            raise TlsPolicyFailure("dane", domain, f"MX lookup failed: {exc}", command="[MX]") from None

    def _dane(self, domain: str, host: str, secure_mx: bool, requiretls: bool) -> TlsRequirement:
        if not secure_mx:
            return self._simple("may", domain, host, requiretls)
        try:
            authenticated, records = self._secure(f"_{self.smtp_port}._tcp.{host}", "TLSA")
        except DNSError as exc:
            # RFC 7672 section 2.2: a failed TLSA lookup makes the host unusable.
            raise TlsPolicyFailure("dane", host, f"TLSA lookup failed: {exc}", command="[CONNECT]") from None
        if not authenticated:
            return self._simple("may", domain, host, requiretls)
        usable = tuple(r for r in records if isinstance(r, TLSARecord) and r.usage in (2, 3))
        if not usable:
            # Secure but unusable TLSA records: mandatory unauthenticated TLS.
            return TlsRequirement(
                "verify" if requiretls else "encrypt",
                "dane",
                self.context if requiretls else None,
                host,
                requiretls=requiretls,
                domain=domain,
            )
        text = "\n".join(f"{r.usage} {r.selector} {r.matching_type} {r.data.hex()}" for r in usable)
        return TlsRequirement(
            "dane",
            "dane",
            None,
            host,
            usable,
            requiretls=requiretls,
            domain=domain,
            report=self.report,
            policy_text=text,
        )

    def _count(
        self, domain: str, kind: str, policy: MtaStsPolicy | None, host: str | None, result: str | None
    ) -> None:
        if self.report is not None:
            self.report.record(domain, kind, policy.text if policy is not None else None, host, result)
