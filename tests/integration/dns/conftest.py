"""Fixtures for DNS tests: a real DNS server on loopback and a resolver aimed at it.

The fixtures live in :mod:`tests.integration.dns.server` so that tests in
other directories (the MX relay, DNSBL, SPF) can use them too::

    from tests.integration.dns.server import NXDOMAIN, SERVFAIL, dns_resolver, dns_server  # noqa: F401

    def test_delivery(dns_server, dns_resolver):
        dns_server.zone[("example.test", "MX")] = [(10, "mx1.example.test")]
        dns_server.zone[("mx1.example.test", "A")] = ["127.0.0.1"]
        ...  # code calling DNSResolver.query(...) now asks dns_server
"""

from __future__ import annotations

from tests.integration.dns.server import dns_resolver, dns_server

__all__ = ["dns_resolver", "dns_server"]
