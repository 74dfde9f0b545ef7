"""DnsBlocklist, DnsBlocklistGroup and check_dnsbl against a real DNS server on loopback."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import gevent.pool
import pytest

from slimta.smtp.reply import Reply
from slimta.util.dns import DNSResolver
from slimta.util.dnsbl import DnsBlocklist, DnsBlocklistGroup, check_dnsbl
from tests.integration.dns.server import DROP, SERVFAIL, DNSTestServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

V6 = "2001:db8::1"
V6_NAME = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"


def names(server: DNSTestServer) -> list[tuple[str, str]]:
    return [(name, rtype) for name, rtype, _ in server.queries]


def test_listed_address_costs_one_query(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("2.0.0.127.bl.test", "A")] = ["127.0.0.2"]
    dns_server.zone[("2.0.0.127.bl.test", "TXT")] = ["listed: see https://bl.test/127.0.0.2"]
    dnsbl = DnsBlocklist("bl.test")
    assert dnsbl.get("127.0.0.2") is True
    assert names(dns_server) == [("2.0.0.127.bl.test", "A")]
    assert "127.0.0.2" in dnsbl
    assert dnsbl["127.0.0.2"] == "listed: see https://bl.test/127.0.0.2"
    assert dnsbl.get_reason("127.0.0.2", timeout=2) == "listed: see https://bl.test/127.0.0.2"


def test_unlisted_address(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("2.0.0.127.bl.test", "A")] = ["127.0.0.2"]
    dns_server.zone[("9.0.0.127.bl.test", "TXT")] = ["only a TXT record"]  # NODATA for A
    dnsbl = DnsBlocklist("bl.test.")
    assert not dnsbl.get("127.0.0.1")  # NXDOMAIN
    assert not dnsbl.get("127.0.0.9")  # NODATA
    assert "127.0.0.1" not in dnsbl
    assert dnsbl["127.0.0.1"] is None
    assert dnsbl.get("127.0.0.1", strict=True) is False  # not a failure


def test_ipv6_nibble_format(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[(f"{V6_NAME}.bl.test", "A")] = ["127.0.0.2"]
    dns_server.zone[(f"{V6_NAME}.bl.test", "TXT")] = ["v6 listed"]
    dnsbl = DnsBlocklist("bl.test")
    assert dnsbl.get(V6)
    assert dnsbl.get("2001:DB8:0:0::1")
    assert dnsbl.get_reason(V6) == "v6 listed"
    assert not dnsbl.get("2001:db8::2")
    assert names(dns_server)[0] == (f"{V6_NAME}.bl.test", "A")


def test_ipv4_mapped_address_is_checked_as_ipv4(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("2.0.0.127.bl.test", "A")] = ["127.0.0.2"]
    assert DnsBlocklist("bl.test").get("::ffff:127.0.0.2")
    assert names(dns_server) == [("2.0.0.127.bl.test", "A")]


def test_ignore_networks_and_codes_outside_loopback(
    dns_server: DNSTestServer, dns_resolver: DNSResolver
) -> None:
    dns_server.zone[("1.2.0.192.bl.test", "A")] = ["127.255.255.254"]  # "query refused"
    dns_server.zone[("2.2.0.192.bl.test", "A")] = ["127.255.255.254", "127.0.0.4"]
    dns_server.zone[("3.2.0.192.bl.test", "A")] = ["198.51.100.7"]  # a wildcarding, expired zone
    dns_server.zone[("4.2.0.192.bl.test", "A")] = ["127.0.0.10"]
    plain = DnsBlocklist("bl.test")
    assert plain.get("192.0.2.1")
    picky = DnsBlocklist("bl.test", ignore=["127.255.255.0/24", "127.0.0.10"])
    assert not picky.get("192.0.2.1")
    assert picky.get("192.0.2.2")  # one real code among the answers
    assert not plain.get("192.0.2.3")
    assert not picky.get("192.0.2.4")
    assert plain.is_listing("127.0.0.2")
    assert not plain.is_listing("10.0.0.2")
    with pytest.raises(ValueError, match="not a network"):
        DnsBlocklist("bl.test", ignore=["not a network"])


@pytest.mark.parametrize("mode", [SERVFAIL, DROP])
def test_strict_means_failures_count_as_listed(
    dns_server: DNSTestServer, dns_resolver: DNSResolver, mode: str
) -> None:
    dns_server.zone["2.0.0.127.bl.test"] = mode
    dnsbl = DnsBlocklist("bl.test")
    start = time.monotonic()
    assert dnsbl.get("127.0.0.2", timeout=0.3) is False
    assert dnsbl.get("127.0.0.2", timeout=0.3, strict=True) is True
    assert dnsbl.get_reason("127.0.0.2", timeout=0.3) is None
    assert time.monotonic() - start < 2.5


def test_invalid_address_is_a_value_error(dns_resolver: DNSResolver) -> None:
    dnsbl = DnsBlocklist("bl.test")
    for bad in ("not-an-ip", "", "127.0.0", "1.2.3.4.5"):
        with pytest.raises(ValueError, match="does not appear to be"):
            dnsbl.get(bad)
    with pytest.raises(ValueError, match="does not appear to be"):
        DnsBlocklistGroup().get("nope")


def make_group(pool: Any = None) -> DnsBlocklistGroup:
    group = DnsBlocklistGroup(pool)
    group.add_dnsbl("one.test")
    group.add_dnsbl("two.test", ignore=["127.255.255.0/24"])
    group.add_dnsbl(DnsBlocklist("three.test"))
    group.add_dnsbl("broken.test")
    return group


def group_zone(server: DNSTestServer) -> None:
    server.zone[("2.0.0.127.one.test", "A")] = ["127.0.0.2"]
    server.zone[("2.0.0.127.one.test", "TXT")] = ["one says no"]
    server.zone[("2.0.0.127.two.test", "A")] = ["127.255.255.254"]
    server.zone[("2.0.0.127.three.test", "A")] = ["127.0.0.3"]
    server.zone[("x.three.test", "A")] = ["127.0.0.1"]  # no TXT for the listing: NODATA
    server.zone["2.0.0.127.broken.test"] = SERVFAIL


@pytest.mark.parametrize("pool", [None, 2, gevent.pool.Pool(10)])
def test_group_matches_and_reasons(dns_server: DNSTestServer, dns_resolver: DNSResolver, pool: Any) -> None:
    group_zone(dns_server)
    group = make_group(pool)
    matches = group.get("127.0.0.2", timeout=2)
    assert matches == {"one.test", "three.test"}
    assert group.get("127.0.0.2", timeout=2, strict=True) == {"one.test", "three.test", "broken.test"}
    assert "127.0.0.2" in group
    assert "127.0.0.1" not in group
    assert group.get_reasons(matches, "127.0.0.2", timeout=2) == {
        "one.test": "one says no",
        "three.test": None,
    }
    assert group.get_reasons(set(), "127.0.0.2") == {}


def test_group_lists_are_queried_in_parallel(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    group_zone(dns_server)
    dns_server.delay = 0.3
    group = make_group()
    start = time.monotonic()
    assert group.get("127.0.0.2", timeout=3) == {"one.test", "three.test"}
    elapsed = time.monotonic() - start
    assert elapsed < 0.6, f"4 lists x 0.3 s took {elapsed:.2f} s: not parallel"
    assert len(dns_server.queries) == 4  # one A query per list, nothing else


def test_group_timeout_is_one_deadline(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    group_zone(dns_server)
    dns_server.zone[("2.0.0.127.three.test", "A")] = DROP
    group = make_group(1)  # a pool of one: the lists take turns
    start = time.monotonic()
    assert group.get("127.0.0.2", timeout=0.4) == {"one.test"}
    assert time.monotonic() - start < 1.2
    assert group.get("127.0.0.2", timeout=0.4, strict=True) == {"one.test", "three.test", "broken.test"}


class FakeValidators:
    """Stands in for SmtpValidators: only ``session.address`` is read."""

    def __init__(self, address: Any) -> None:
        self.session = SimpleNamespace(address=address)
        self.calls: list[tuple[Any, ...]] = []


def decorated(dnsbl: Any, **kwargs: Any) -> Any:
    @check_dnsbl(dnsbl, **kwargs)
    def handle_rcpt(self: FakeValidators, reply: Reply, recipient: str, params: dict[str, Any]) -> str:
        self.calls.append((recipient, params))
        return "hook ran"

    return handle_rcpt


def test_check_dnsbl_decorator(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("2.0.0.127.bl.test", "A")] = ["127.0.0.2"]
    dns_server.zone["3.0.0.127.bl.test"] = SERVFAIL
    hook = decorated("bl.test", timeout=2)
    listed = FakeValidators(("127.0.0.2", 25))
    reply = Reply("250", "2.1.5 Ok")
    assert hook(listed, reply, "a@b.test", {}) is None
    assert (reply.code, reply.message, listed.calls) == ("550", "5.7.1 Access denied", [])
    assert hook.__name__ == "handle_rcpt"

    for address in [
        ("127.0.0.1", 25),
        None,
        ("unix-socket",),
        (None, 0),
        ("::1", 25, 0, 0),
        ("127.0.0.3", 25),
    ]:
        validators = FakeValidators(address)
        reply = Reply("250", "2.1.5 Ok")
        assert hook(validators, reply, "a@b.test", {"NOTIFY": "NEVER"}) == "hook ran"
        assert reply.code == "250"
        assert validators.calls == [("a@b.test", {"NOTIFY": "NEVER"})]

    strict_hook = decorated(
        DnsBlocklist("bl.test"), match_code="554", match_message="5.7.1 Go away", strict=True
    )
    reply = Reply("250", "2.1.5 Ok")
    strict_hook(FakeValidators(("127.0.0.3", 25)), reply, "a@b.test", {})
    assert (reply.code, reply.message) == ("554", "5.7.1 Go away")

    group = DnsBlocklistGroup()
    group.add_dnsbl("bl.test")
    reply = Reply("250", "2.1.5 Ok")
    decorated(group)(FakeValidators(("127.0.0.2", 25)), reply, "a@b.test", {})
    assert reply.code == "550"
