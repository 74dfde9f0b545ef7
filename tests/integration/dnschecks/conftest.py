"""Fixtures for the DNSBL, PTR and SPF tests: the loopback DNS server of tests.integration.dns.

``dns_server`` serves the zone a test writes; ``dns_resolver`` makes it the
default resolver (0.5 s per try, one try), which is what the checks use.
"""

from __future__ import annotations

from tests.integration.dns.server import dns_resolver, dns_server

__all__ = ["dns_resolver", "dns_server"]
