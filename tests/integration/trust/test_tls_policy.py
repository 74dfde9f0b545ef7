"""Outbound TLS policy levels against real loopback MX peers, DNS and HTTPS."""

from __future__ import annotations

import ssl
from typing import Any

import gevent
import pytest

from slimta.policy.requiretls import accept_requiretls, set_requiretls
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.smtp.mx import MxSmtpRelay
from slimta.relay.smtp.tlspolicy import (
    MtaStsError,
    TlsPolicy,
    fetch_mta_sts_policy,
    parse_mta_sts_policy,
)
from slimta.relay.smtp.tlsrpt import TlsReport
from tests.integration.relay.conftest import make_envelope
from tests.integration.trust.conftest import DOMAIN, MX, cert_sha256, spki_sha256

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"


def zone(dns: Any, secure: bool = False) -> None:
    dns.zone[(DOMAIN, "MX")] = [(10, MX)]
    dns.zone[(MX, "A")] = ["127.0.0.1"]
    dns.zone[(f"mta-sts.{DOMAIN}", "A")] = ["127.0.0.1"]
    if secure:
        dns.secure |= {DOMAIN, f"_25._tcp.{MX}"}


def deliver(port: int, policy: TlsPolicy | None, envelope: Any = None) -> Any:
    relay = MxSmtpRelay(tls_policy=policy, connect_timeout=3, command_timeout=3, ehlo_as="client.test")
    relay.smtp_port = port
    relay.dns_timeout = 2
    try:
        with gevent.Timeout(10):
            return relay.attempt(envelope or make_envelope(recipients=[f"rcpt@{DOMAIN}"]), 0)
    finally:
        relay.kill()


def refused(port: int, policy: TlsPolicy | None, envelope: Any = None) -> Any:
    with pytest.raises((TransientRelayError, PermanentRelayError)) as info:
        deliver(port, policy, envelope)
    return info.value


# -- none / may / encrypt / verify ---------------------------------------------------


def test_none_never_starts_tls(secure_dns: Any, mx_peer: Any) -> None:
    zone(secure_dns)
    server = mx_peer("good")
    deliver(server.address[1], TlsPolicy("none"))
    assert len(server.messages) == 1
    assert server.tls_sessions == 0


@pytest.mark.parametrize("kind", ["good", "wrong-name", "rogue"])
def test_may_encrypts_whatever_the_certificate(secure_dns: Any, mx_peer: Any, kind: str) -> None:
    zone(secure_dns)
    server = mx_peer(kind)
    deliver(server.address[1], TlsPolicy("may"))
    assert len(server.messages) == 1
    assert server.tls_sessions == 1


def test_may_is_stripped_to_cleartext_by_a_mitm(secure_dns: Any, mx_peer: Any, stripping_proxy: Any) -> None:
    zone(secure_dns)
    server = mx_peer("good")
    proxy = stripping_proxy(server.address)
    deliver(proxy.address[1], TlsPolicy("may"))
    assert proxy.stripped >= 1
    assert server.tls_sessions == 0
    assert len(server.messages) == 1


def test_encrypt_accepts_an_unknown_ca_but_not_a_stripped_session(
    secure_dns: Any, mx_peer: Any, stripping_proxy: Any
) -> None:
    zone(secure_dns)
    server = mx_peer("rogue")
    deliver(server.address[1], TlsPolicy("encrypt"))
    assert server.tls_sessions == 1
    assert len(server.messages) == 1
    proxy = stripping_proxy(server.address)
    exc = refused(proxy.address[1], TlsPolicy("encrypt"))
    assert isinstance(exc, TransientRelayError)
    assert exc.reply.code == "451"
    assert "TLS policy encrypt not met" in exc.reply.message
    assert "STARTTLS is not offered" in exc.reply.message
    assert len(server.messages) == 1  # nothing went out in cleartext


def test_verify_delivers_to_a_matching_certificate(
    secure_dns: Any, mx_peer: Any, trusting: ssl.SSLContext
) -> None:
    zone(secure_dns)
    server = mx_peer("good")
    deliver(server.address[1], TlsPolicy("verify", context=trusting))
    assert server.tls_sessions == 1
    assert len(server.messages) == 1


@pytest.mark.parametrize("kind", ["wrong-name", "rogue", "none"])
def test_verify_fails_temporarily_and_never_in_cleartext(
    secure_dns: Any, mx_peer: Any, trusting: ssl.SSLContext, kind: str
) -> None:
    zone(secure_dns)
    server = mx_peer(kind)
    exc = refused(server.address[1], TlsPolicy("verify", context=trusting))
    assert isinstance(exc, TransientRelayError)
    assert exc.reply.code == "451"
    assert "TLS policy verify not met by mx.example.test" in exc.reply.message
    assert server.messages == []
    assert not any(line.startswith(b"MAIL") for line in server.lines)


def test_per_domain_levels_and_suffixes() -> None:
    policy = TlsPolicy("may", {"bank.test": "verify", ".corp.test": "encrypt"})
    assert policy.level_for("BANK.test.") == "verify"
    assert policy.level_for("mail.corp.test") == "encrypt"
    assert policy.level_for("corp.test") == "may"
    with pytest.raises(ValueError, match="unknown TLS policy level"):
        TlsPolicy("maybe")


# -- MTA-STS -------------------------------------------------------------------------


def sts_policy(secure_dns: Any, sts_server: Any, trusting: ssl.SSLContext, **kw: Any) -> TlsPolicy:
    zone(secure_dns)
    secure_dns.zone[(f"_mta-sts.{DOMAIN}", "TXT")] = ["v=STSv1; id=20260101"]
    policy = TlsPolicy("mta-sts", context=trusting, fetch_timeout=2, dns_timeout=2, **kw)
    policy.mta_sts_port = sts_server.port
    return policy


def test_mta_sts_enforce_delivers_and_caches(
    secure_dns: Any, mx_peer: Any, sts_server: Any, trusting: ssl.SSLContext
) -> None:
    sts_server.body = POLICY
    policy = sts_policy(secure_dns, sts_server, trusting)
    server = mx_peer("good")
    deliver(server.address[1], policy)
    asked = len(secure_dns.queries)
    deliver(server.address[1], policy)
    assert len(server.messages) == 2
    assert server.tls_sessions == 2
    assert sts_server.requests == 1
    # The warm destination: only the MX and address lookups, no TXT again.
    assert not any(q[1] == "TXT" for q in secure_dns.queries[asked:])


def test_mta_sts_enforce_refuses_a_bad_certificate(
    secure_dns: Any, mx_peer: Any, sts_server: Any, trusting: ssl.SSLContext
) -> None:
    sts_server.body = POLICY
    server = mx_peer("rogue")
    exc = refused(server.address[1], sts_policy(secure_dns, sts_server, trusting))
    assert exc.reply.code == "451"
    assert "TLS policy mta-sts not met" in exc.reply.message
    assert server.messages == []


def test_mta_sts_enforce_refuses_an_mx_outside_the_policy(
    secure_dns: Any, mx_peer: Any, sts_server: Any, trusting: ssl.SSLContext
) -> None:
    sts_server.body = POLICY.replace(b"mx: mx.example.test", b"mx: *.elsewhere.test")
    server = mx_peer("good")
    exc = refused(server.address[1], sts_policy(secure_dns, sts_server, trusting))
    assert exc.reply.code == "451"
    assert "no MX host matches the policy" in exc.reply.message
    assert server.connections == 0


def test_mta_sts_testing_reports_and_delivers(
    secure_dns: Any, mx_peer: Any, sts_server: Any, trusting: ssl.SSLContext
) -> None:
    sts_server.body = POLICY.replace(b"enforce", b"testing")
    report = TlsReport()
    server = mx_peer("rogue")
    deliver(server.address[1], sts_policy(secure_dns, sts_server, trusting, report=report))
    assert len(server.messages) == 1
    assert server.tls_sessions >= 1
    assert report.totals(DOMAIN) == (0, 1)
    doc = report.to_json("slimta test", "mailto:tls@example.test", "r1", 0, 86400)
    details = doc["policies"][0]["failure-details"]
    assert doc["policies"][0]["policy"]["policy-type"] == "sts"
    assert details[0]["result-type"] == "validation-failure"
    assert details[0]["receiving-mx-hostname"] == MX


def test_mta_sts_unfetchable_policy_means_opportunistic(
    secure_dns: Any, mx_peer: Any, sts_server: Any, trusting: ssl.SSLContext
) -> None:
    sts_server.body = b"x" * (64 * 1024 + 1)
    server = mx_peer("rogue")
    deliver(server.address[1], sts_policy(secure_dns, sts_server, trusting))
    assert len(server.messages) == 1  # RFC 8461 section 5: no policy, delivered as "may"


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ({"body": b"x" * (64 * 1024 + 1)}, "over 65536 bytes"),
        ({"status": "301 Moved", "headers": [("Location", "https://evil.test/")]}, "HTTP 301"),
        ({"delay": 3.0, "body": POLICY}, "took over 1 s"),
        ({"content_type": "text/html", "body": POLICY}, "not text/plain"),
        ({"body": b"version: STSv1\r\nmode: enforce\r\nmax_age: 10\r\n"}, "lists no mx"),
        ({"body": b"version: STSv2\r\n"}, "STSv1"),
        (
            {"body": b"version: STSv1\r\nmode: enforce\r\nmx: a.test\r\nmax_age: 99999999999\r\n"},
            "out of range",
        ),
    ],
)
def test_mta_sts_bad_policy_hosts_end_in_time(
    secure_dns: Any, sts_server: Any, trusting: ssl.SSLContext, setup: dict[str, Any], error: str
) -> None:
    zone(secure_dns)
    for name, value in setup.items():
        setattr(sts_server, name, value)
    with gevent.Timeout(5), pytest.raises(MtaStsError, match=error):
        fetch_mta_sts_policy(DOMAIN, trusting, timeout=1.0, port=sts_server.port)


def test_mta_sts_wrong_certificate_for_the_policy_host(secure_dns: Any, sts_server: Any) -> None:
    zone(secure_dns)
    sts_server.body = POLICY
    with pytest.raises(MtaStsError, match="failed"):
        fetch_mta_sts_policy(DOMAIN, ssl.create_default_context(), timeout=2, port=sts_server.port)


def test_mta_sts_policy_patterns() -> None:
    policy = parse_mta_sts_policy(
        "version: STSv1\nmode: enforce\nmx: *.example.net\nmx: mail.x.test\nmax_age: 60\n"
    )
    assert policy.matches("a.example.net")
    assert policy.matches("MAIL.X.TEST.")
    assert not policy.matches("a.b.example.net")
    assert not policy.matches("example.net")


# -- DANE ----------------------------------------------------------------------------


def dane(secure_dns: Any, records: list[str] | Any, secure: bool = True, report: Any = None) -> TlsPolicy:
    zone(secure_dns, secure=secure)
    secure_dns.zone[(f"_25._tcp.{MX}", "TLSA")] = records
    return TlsPolicy("dane", dns_timeout=2, report=report)


def test_dane_ee_match_delivers(secure_dns: Any, mx_peer: Any, trust_ca: Any) -> None:
    server = mx_peer("wrong-name")  # DANE-EE ignores names and CAs
    leaf = server.leaf
    report = TlsReport()
    deliver(server.address[1], dane(secure_dns, [f"3 1 1 {spki_sha256(leaf)}"], report=report))
    assert len(server.messages) == 1
    assert report.totals(DOMAIN) == (1, 0)


def test_dane_ee_mismatch_fails_temporarily(secure_dns: Any, mx_peer: Any) -> None:
    server = mx_peer("good")
    exc = refused(server.address[1], dane(secure_dns, ["3 1 1 " + "00" * 32]))
    assert exc.reply.code == "451"
    assert "TLS policy dane not met" in exc.reply.message
    assert "no TLSA record matches" in exc.reply.message
    assert server.messages == []


def test_dane_ta_match_checks_the_chain_and_name(secure_dns: Any, mx_peer: Any, trust_ca: Any) -> None:
    good = mx_peer("good", full_chain=True)
    deliver(good.address[1], dane(secure_dns, [f"2 0 1 {cert_sha256(trust_ca)}"]))
    assert len(good.messages) == 1
    wrong = mx_peer("wrong-name", full_chain=True)
    exc = refused(wrong.address[1], dane(secure_dns, [f"2 0 1 {cert_sha256(trust_ca)}"]))
    assert "TLS policy dane" in exc.reply.message
    assert wrong.messages == []


def test_dane_without_ad_bit_is_opportunistic(secure_dns: Any, mx_peer: Any) -> None:
    server = mx_peer("good")
    deliver(server.address[1], dane(secure_dns, ["3 1 1 " + "00" * 32], secure=False))
    assert len(server.messages) == 1


def test_dane_unusable_records_mean_encrypt(secure_dns: Any, mx_peer: Any, stripping_proxy: Any) -> None:
    server = mx_peer("rogue")
    deliver(server.address[1], dane(secure_dns, ["1 1 1 " + "00" * 32]))
    assert len(server.messages) == 1
    assert server.tls_sessions == 1
    proxy = stripping_proxy(server.address)
    exc = refused(proxy.address[1], dane(secure_dns, ["1 1 1 " + "00" * 32]))
    assert "TLS policy dane not met" in exc.reply.message
    assert "STARTTLS" in exc.reply.message


def test_dane_tlsa_lookup_failure_defers(secure_dns: Any, mx_peer: Any) -> None:
    from tests.integration.dns.server import SERVFAIL

    server = mx_peer("good")
    exc = refused(server.address[1], dane(secure_dns, SERVFAIL))
    assert isinstance(exc, TransientRelayError)
    assert "TLSA lookup failed" in exc.reply.message
    assert server.connections == 0


def test_dane_stripped_by_mitm_never_cleartext(secure_dns: Any, mx_peer: Any, stripping_proxy: Any) -> None:
    server = mx_peer("good")
    proxy = stripping_proxy(server.address)
    exc = refused(proxy.address[1], dane(secure_dns, [f"3 1 1 {spki_sha256(server.leaf)}"]))
    assert "4.7.10" in exc.reply.message
    assert server.messages == []


# -- REQUIRETLS ------------------------------------------------------------------------


def requiretls_envelope() -> Any:
    env = make_envelope(recipients=[f"rcpt@{DOMAIN}"])
    set_requiretls(env)
    return env


def test_requiretls_goes_over_verified_tls_with_the_parameter(
    secure_dns: Any, mx_peer: Any, trusting: ssl.SSLContext
) -> None:
    zone(secure_dns)
    server = mx_peer("good", requiretls=True)
    deliver(server.address[1], TlsPolicy("may", context=trusting), requiretls_envelope())
    assert len(server.messages) == 1
    assert any(
        line.startswith(b"MAIL FROM:<sender@src.test>") and b"REQUIRETLS" in line for line in server.lines
    )


@pytest.mark.parametrize(("kind", "offers"), [("good", False), ("rogue", True), ("none", True)])
def test_requiretls_bounces_without_verified_tls_and_support(
    secure_dns: Any, mx_peer: Any, trusting: ssl.SSLContext, kind: str, offers: bool
) -> None:
    zone(secure_dns)
    server = mx_peer(kind, requiretls=offers)
    exc = refused(server.address[1], TlsPolicy("may", context=trusting), requiretls_envelope())
    assert isinstance(exc, PermanentRelayError)
    assert exc.reply.code == "550"
    assert exc.reply.message.startswith("5.7.30 REQUIRETLS support required")
    assert server.messages == []


def test_requiretls_mail_parameter_rules() -> None:
    assert accept_requiretls({"SIZE": "10"}, encrypted=False) is None
    assert accept_requiretls({"requiretls": None}, encrypted=True) is True
    assert accept_requiretls({"REQUIRETLS": None}, encrypted=False) == (
        "530",
        "5.7.10 REQUIRETLS needs a TLS session",
    )
    assert accept_requiretls({"REQUIRETLS": "yes"}, encrypted=True)[0] == "501"  # type: ignore[index]
