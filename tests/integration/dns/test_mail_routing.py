"""resolve_mx and resolve_addresses: RFC 5321 section 5.1 and RFC 7505 against a real server."""

from __future__ import annotations

from typing import Any

import pytest

from slimta.util.dns import (
    DNSError,
    DNSNoDataError,
    DNSNotFoundError,
    DNSResolver,
    DNSServerError,
    DNSTimeoutError,
    NullMXError,
    resolve_addresses,
    resolve_mx,
)

from .server import DROP, SERVFAIL, DNSTestServer

pytestmark = pytest.mark.integration


def test_mx_sorted_by_preference(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("example.test", "MX")] = [
        (30, "mx3.example.test"),
        (10, "mx1.example.test"),
        (20, "mx2b.example.test"),
        (20, "mx2a.example.test"),
    ]
    assert resolve_mx("example.test") == [
        (10, "mx1.example.test"),
        (20, "mx2b.example.test"),
        (20, "mx2a.example.test"),
        (30, "mx3.example.test"),
    ]


def test_explicit_resolver_argument(dns_server: DNSTestServer) -> None:
    dns_server.zone[("example.test", "MX")] = [(5, "mx.example.test")]
    res = DNSResolver(servers=[dns_server.address], timeout=0.5, tries=1)
    try:
        assert resolve_mx("example.test.", resolver=res) == [(5, "mx.example.test")]
    finally:
        res.close()


def test_null_mx(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("nomail.test", "MX")] = [(0, ".")]
    dns_server.zone[("nomail.test", "A")] = ["127.0.0.2"]
    with pytest.raises(NullMXError) as info:
        resolve_mx("nomail.test")
    exc = info.value
    assert isinstance(exc, DNSError)
    assert (exc.domain, exc.kind, exc.permanent) == ("nomail.test", "NULLMX", True)
    assert "null MX" in str(exc)
    # No implicit-MX fallback to the A record.
    assert [q[:2] for q in dns_server.queries] == [("nomail.test", "MX")]


def test_null_mx_next_to_real_mx_is_ignored(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("odd.test", "MX")] = [(0, "."), (10, "mx.odd.test")]
    assert resolve_mx("odd.test") == [(10, "mx.odd.test")]


@pytest.mark.parametrize("family", ["A", "AAAA"])
def test_implicit_mx(dns_server: DNSTestServer, dns_resolver: DNSResolver, family: str) -> None:
    dns_server.zone[("plain.test", family)] = ["127.0.0.3" if family == "A" else "::1"]
    assert resolve_mx("plain.test") == [(0, "plain.test")]


def test_no_mx_and_no_address_is_nodata(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("textonly.test", "TXT")] = ["hello"]
    with pytest.raises(DNSNoDataError) as info:
        resolve_mx("textonly.test")
    assert info.value.permanent


def test_nxdomain_has_no_fallback(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    with pytest.raises(DNSNotFoundError) as info:
        resolve_mx("nowhere.test")
    assert info.value.permanent
    assert [q[:2] for q in dns_server.queries] == [("nowhere.test", "MX")]


def test_servfail_and_timeout_are_temporary(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("broken.test", "MX")] = SERVFAIL
    dns_server.zone["silent.test"] = DROP
    with pytest.raises(DNSServerError) as failed:
        resolve_mx("broken.test")
    assert not failed.value.permanent
    with pytest.raises(DNSTimeoutError) as timed_out:
        resolve_mx("silent.test", timeout=0.3)
    assert not timed_out.value.permanent


def test_implicit_mx_with_failing_address_lookup_is_temporary(
    dns_server: DNSTestServer, dns_resolver: DNSResolver
) -> None:
    dns_server.zone[("half.test", "TXT")] = ["x"]
    dns_server.zone[("half.test", "A")] = SERVFAIL
    with pytest.raises(DNSServerError):
        resolve_mx("half.test")


def test_addresses_a_then_aaaa(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("dual.test", "AAAA")] = ["2001:db8::5"]
    dns_server.zone[("dual.test", "A")] = ["127.0.0.4", "127.0.0.5"]
    assert resolve_addresses("dual.test") == ["127.0.0.4", "127.0.0.5", "2001:db8::5"]


def test_addresses_of_an_ip_literal_need_no_lookup(
    dns_server: DNSTestServer, dns_resolver: DNSResolver
) -> None:
    assert resolve_addresses("127.0.0.1") == ["127.0.0.1"]
    assert resolve_addresses("::1") == ["::1"]
    assert dns_server.queries == []


def test_addresses_survive_one_failing_family(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("v4.test", "A")] = ["127.0.0.4"]
    dns_server.zone[("v4.test", "AAAA")] = SERVFAIL
    assert resolve_addresses("v4.test") == ["127.0.0.4"]


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ({}, DNSNotFoundError),
        ({("txt.test", "TXT"): ["x"]}, DNSNoDataError),
        ({("txt.test", "A"): SERVFAIL}, DNSServerError),
    ],
)
def test_address_errors(
    dns_server: DNSTestServer, dns_resolver: DNSResolver, zone: dict[Any, Any], expected: type[DNSError]
) -> None:
    dns_server.zone.update(zone)
    with pytest.raises(expected):
        resolve_addresses("txt.test")
