"""RFC 7208 evaluation by slimta.util.spf against a real DNS server on loopback."""

from __future__ import annotations

import time
from typing import Any

import pytest

from slimta.util.dns import DNSResolver
from slimta.util.spf import RESULTS, EnforceSpf, check_host
from tests.integration.dns.server import DROP, SERVFAIL, DNSTestServer, Truncated

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

IP = "192.0.2.3"
OTHER = "198.51.100.7"
IP6 = "2001:db8::cb01"
SENDER = "strong-bad@email.example.com"


def spf(server: DNSTestServer, domain: str, *records: Any) -> None:
    server.zone[(domain, "TXT")] = list(records)


def result(
    sender: str = SENDER, ip: str = IP, helo: str | None = "mx.example.org", timeout: float = 3.0
) -> str:
    outcome, reason = EnforceSpf(timeout=timeout).query(sender, ip, helo)
    assert outcome in RESULTS
    assert isinstance(reason, str)
    return outcome


def queried(server: DNSTestServer) -> list[tuple[str, str]]:
    return [(name, rtype) for name, rtype, _ in server.queries]


# -- mechanisms and qualifiers ---------------------------------------------------


@pytest.mark.parametrize(
    ("record", "ip", "expected"),
    [
        ("v=spf1 ip4:192.0.2.0/24 -all", IP, "pass"),
        ("v=spf1 ip4:192.0.2.0/24 -all", OTHER, "fail"),
        ("v=spf1 ip4:192.0.2.3 -all", IP, "pass"),
        ("v=spf1 ip4:192.0.2.4 ~all", IP, "softfail"),
        ("v=spf1 ip4:192.0.2.4 ?all", IP, "neutral"),
        ("v=spf1 ip4:192.0.2.4 +all", IP, "pass"),
        ("v=spf1 ip4:192.0.2.4", IP, "neutral"),
        ("v=spf1", IP, "neutral"),
        ("V=SPF1 -IP4:192.0.2.0/24 +ALL", IP, "fail"),
        ("v=spf1 ~ip4:192.0.2.0/28 -all", IP, "softfail"),
        ("v=spf1 ?ip4:192.0.2.0/28 -all", IP, "neutral"),
        ("v=spf1  ip4:192.0.2.0/24   -all", IP, "pass"),
        ("v=spf1 ip6:2001:db8::/32 -all", IP6, "pass"),
        ("v=spf1 ip6:2001:db8::/32 -all", IP, "fail"),
        ("v=spf1 ip4:192.0.2.0/24 -all", IP6, "fail"),
        ("v=spf1 ip4:192.0.2.0/24 -all", "::ffff:192.0.2.3", "pass"),
        ("v=spf1 ip6:2001:db8::cb01/128 -all", IP6, "pass"),
        ("v=spf1 ip4:0.0.0.0/0 -all", OTHER, "pass"),
        ("v=spf1 unknown-mod=anything ip4:192.0.2.3 -all", IP, "pass"),
    ],
)
def test_ip_mechanisms_and_qualifiers(
    dns_server: DNSTestServer, dns_resolver: DNSResolver, record: str, ip: str, expected: str
) -> None:
    spf(dns_server, "email.example.com", record)
    assert result(ip=ip) == expected


def test_a_mechanism(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("email.example.com", "A")] = [IP]
    dns_server.zone[("email.example.com", "AAAA")] = ["2001:db8::1"]
    dns_server.zone[("net.example.com", "A")] = ["192.0.2.200"]
    spf(dns_server, "email.example.com", "v=spf1 a -all")
    assert result() == "pass"
    assert result(ip=OTHER) == "fail"
    assert result(ip=IP6) == "fail"
    spf(dns_server, "email.example.com", "v=spf1 a:net.example.com/24 -all")
    assert result() == "pass"
    spf(dns_server, "email.example.com", "v=spf1 a:net.example.com -all")
    assert result() == "fail"
    spf(dns_server, "email.example.com", "v=spf1 a//120 -all")
    assert result(ip=IP6) == "fail"
    spf(dns_server, "email.example.com", "v=spf1 a//64 -all")
    assert result(ip=IP6) == "pass"
    spf(dns_server, "email.example.com", "v=spf1 a/32//16 -all")
    assert result(ip=IP6) == "pass"
    assert ("email.example.com", "AAAA") in queried(dns_server)


def test_mx_mechanism(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("email.example.com", "MX")] = [(10, "mx1.example.com"), (20, "mx2.example.com")]
    dns_server.zone[("mx1.example.com", "A")] = ["192.0.2.10"]
    dns_server.zone[("mx2.example.com", "A")] = [IP]
    spf(dns_server, "email.example.com", "v=spf1 mx -all")
    assert result() == "pass"
    assert result(ip=OTHER) == "fail"
    spf(dns_server, "email.example.com", "v=spf1 mx:email.example.com/28 -all")
    assert result(ip="192.0.2.14") == "pass"


def test_mx_mechanism_limits_and_errors(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("many.example.com", "MX")] = [(i, f"mx{i}.example.com") for i in range(11)]
    dns_server.zone[("half.example.com", "MX")] = [(1, "bad.example.com"), (2, "good.example.com")]
    dns_server.zone[("bad.example.com", "A")] = SERVFAIL
    dns_server.zone[("good.example.com", "A")] = [IP]
    spf(dns_server, "email.example.com", "v=spf1 mx:many.example.com -all")
    assert result() == "permerror"
    spf(dns_server, "email.example.com", "v=spf1 mx:half.example.com -all")
    assert result() == "pass"  # one broken exchange does not hide a match
    assert result(ip=OTHER) == "temperror"  # ...but without a match it is an error


def test_ptr_mechanism(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("3.2.0.192.in-addr.arpa", "PTR")] = ["mail.email.example.com", "spoof.example.com"]
    dns_server.zone[("mail.email.example.com", "A")] = [IP]
    dns_server.zone[("spoof.example.com", "A")] = [OTHER]  # not confirmed
    spf(dns_server, "email.example.com", "v=spf1 ptr -all")
    assert result() == "pass"
    spf(dns_server, "email.example.com", "v=spf1 ptr:example.com -all")
    assert result() == "pass"
    spf(dns_server, "email.example.com", "v=spf1 ptr:spoof.example.com -all")
    assert result() == "fail"
    spf(dns_server, "email.example.com", "v=spf1 ptr -all")
    dns_server.zone["3.2.0.192.in-addr.arpa"] = SERVFAIL
    del dns_server.zone[("3.2.0.192.in-addr.arpa", "PTR")]
    assert result() == "fail"  # a PTR lookup error is "no match", not temperror


def test_exists_and_macros_in_queries(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("3.2.0.192.in-addr._spf.example.com", "A")] = ["127.0.0.2"]
    dns_server.zone[("bad.strong.lp._spf.example.com", "TXT")] = ["only text here"]
    spf(dns_server, "email.example.com", "v=spf1 exists:%{ir}.%{v}._spf.%{d2} -all")
    assert result() == "pass"
    assert result(ip=OTHER) == "fail"
    assert ("7.100.51.198.in-addr._spf.example.com", "A") in queried(dns_server)
    spf(dns_server, "email.example.com", "v=spf1 exists:%{lr-}.lp._spf.%{d2} -all")
    assert result() == "fail"  # NODATA for A
    spf(dns_server, "email.example.com", "v=spf1 -exists:%{ir}.%{v}._spf.%{d2} +all")
    assert result(ip=IP6) == "pass"
    assert (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com",
        "A",
    ) in queried(dns_server)


def test_include(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    spf(dns_server, "email.example.com", "v=spf1 include:_spf.example.net -all")
    spf(dns_server, "_spf.example.net", "v=spf1 ip4:192.0.2.0/24 ~all")
    assert result() == "pass"
    assert result(ip=OTHER) == "fail"  # the include's ~all is "no match" here
    spf(dns_server, "email.example.com", "v=spf1 ?include:_spf.example.net -all")
    assert result() == "neutral"
    spf(dns_server, "email.example.com", "v=spf1 include:nothing.example.net -all")
    assert result() == "permerror"  # include of a domain without SPF
    spf(dns_server, "email.example.com", "v=spf1 include:broken.example.net -all")
    dns_server.zone[("broken.example.net", "TXT")] = SERVFAIL
    assert result() == "temperror"
    spf(dns_server, "email.example.com", "v=spf1 include:bad.example.net -all")
    spf(dns_server, "bad.example.net", "v=spf1 nonsense:here")
    assert result() == "permerror"


def test_include_chain(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    spf(dns_server, "email.example.com", "v=spf1 include:a.example.net -all")
    spf(dns_server, "a.example.net", "v=spf1 ip4:203.0.113.0/24 include:b.example.net")
    spf(dns_server, "b.example.net", "v=spf1 include:c.example.net -all")
    spf(dns_server, "c.example.net", "v=spf1 ip4:192.0.2.3")
    assert result() == "pass"
    assert result(ip=OTHER) == "fail"


def test_redirect(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    spf(dns_server, "email.example.com", "v=spf1 ip4:203.0.113.1 redirect=_spf.example.com")
    spf(dns_server, "_spf.example.com", "v=spf1 ip4:192.0.2.0/24 ~all")
    assert result() == "pass"
    assert result(ip=OTHER) == "softfail"
    assert result(ip="203.0.113.1") == "pass"
    spf(dns_server, "email.example.com", "v=spf1 redirect=_spf.example.com -all")
    assert result() == "fail"  # all wins: redirect is never reached
    spf(dns_server, "email.example.com", "v=spf1 redirect=none.example.com")
    assert result() == "permerror"  # redirect to a domain without SPF
    spf(dns_server, "email.example.com", "v=spf1 redirect=%{d}")
    assert result() == "permerror"  # a redirect loop runs into the lookup limit


def test_exp_explains_a_fail(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    spf(dns_server, "email.example.com", "v=spf1 ip4:192.0.2.0/24 -all exp=explain._spf.%{d}")
    spf(dns_server, "explain._spf.email.example.com", "%{i} is not one of %{d}'s designated mail servers.")
    checker = EnforceSpf(timeout=3)
    assert checker.query(SENDER, OTHER, "helo.test") == (
        "fail",
        "198.51.100.7 is not one of email.example.com's designated mail servers.",
    )
    outcome, reason = checker.query(SENDER, IP, "helo.test")
    assert outcome == "pass"
    assert "explain" not in reason
    spf(dns_server, "explain._spf.email.example.com", "one", "two")  # two records: no explanation
    outcome, reason = checker.query(SENDER, OTHER, "helo.test")
    assert outcome == "fail"
    assert "designated" not in reason


# -- records, identities, limits ----------------------------------------------------


def test_no_record_and_several_records(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    assert result() == "none"  # NXDOMAIN
    spf(dns_server, "email.example.com", "google-site-verification=xyz", "v=spf10 -all")
    assert result() == "none"
    spf(dns_server, "email.example.com", "v=spf1 -all", "v=spf1 +all")
    assert result() == "permerror"
    spf(dns_server, "email.example.com", ("v=spf1 ip4:192.0.2.0", "/24 -all"), "unrelated")
    assert result() == "pass"  # character-strings are joined without a space


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 foo:bar -all",
        "v=spf1 ip4:300.1.1.1 -all",
        "v=spf1 ip4:192.0.2.0/33 -all",
        "v=spf1 ip4:192.0.2.0/024 -all",
        "v=spf1 ip6:192.0.2.1 -all",
        "v=spf1 ip4:192.0.2.0/ -all",
        "v=spf1 ip4: -all",
        "v=spf1 ip6:fe80::1%eth0 -all",
        "v=spf1 ip6:2001:db8::/129 -all",
        "v=spf1 a/33 -all",
        "v=spf1 a//129 -all",
        "v=spf1 all:foo",
        "v=spf1 include -all",
        "v=spf1 include:example -all",
        "v=spf1 a:[192.0.2.1] -all",
        "v=spf1 a:1.2.3.4 -all",
        "v=spf1 exists:%{x}.example.com -all",
        "v=spf1 exists:%{d0}.example.com -all",
        "v=spf1 exists:%{d}%.example.com -all",
        "v=spf1 exists:%{c}.example.com -all",
        "v=spf1 redirect=a.example.com redirect=b.example.com",
        "v=spf1 exp=a.example.com exp=b.example.com -all",
        "v=spf1 -all bad-modifier=%",
        "v=spf1 =foo -all",
        "v=spf1 ip4:192.0.2.3 -all \x00",
    ],
)
def test_syntax_errors_are_permerror(
    dns_server: DNSTestServer, dns_resolver: DNSResolver, record: str
) -> None:
    spf(dns_server, "email.example.com", record)
    assert result() == "permerror"


def test_ten_dns_lookup_limit(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    for i in range(11):
        dns_server.zone[(f"h{i}.example.com", "A")] = ["203.0.113.9"]
    ten = " ".join(f"a:h{i}.example.com" for i in range(10))
    spf(dns_server, "email.example.com", f"v=spf1 {ten} ip4:192.0.2.3 -all")
    assert result() == "pass"
    spf(dns_server, "email.example.com", f"v=spf1 {ten} a:h10.example.com ip4:192.0.2.3 -all")
    assert result() == "permerror"
    # ip4/ip6/all cost nothing: a match before the eleventh lookup passes.
    spf(dns_server, "email.example.com", f"v=spf1 ip4:192.0.2.3 {ten} a:h10.example.com -all")
    assert result() == "pass"


def test_void_lookup_limit(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("empty.example.com", "TXT")] = ["no address here"]
    two = "a:gone1.example.com a:empty.example.com"
    spf(dns_server, "email.example.com", f"v=spf1 {two} -all")
    assert result() == "fail"
    spf(dns_server, "email.example.com", f"v=spf1 {two} exists:gone3.example.com -all")
    assert result() == "permerror"
    spf(dns_server, "email.example.com", f"v=spf1 {two} mx:gone4.example.com -all")
    assert result() == "permerror"


def test_fifty_includes_is_permerror_quickly(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    spf(dns_server, "email.example.com", "v=spf1 include:i0.example.net -all")
    for i in range(50):
        spf(dns_server, f"i{i}.example.net", f"v=spf1 include:i{i + 1}.example.net -all")
    spf(dns_server, "i50.example.net", "v=spf1 +all")
    start = time.monotonic()
    assert result(timeout=5) == "permerror"
    assert time.monotonic() - start < 1.0
    assert len(dns_server.queries) <= 12  # the first record and 10 includes


def test_fifty_includes_side_by_side(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    # Short names: the record must fit the 1232-octet EDNS answer of the test server.
    record = "v=spf1 " + " ".join(f"include:{i}.n.test" for i in range(50)) + " +all"
    dns_server.zone[("email.example.com", "TXT")] = [
        tuple(record[i : i + 200] for i in range(0, len(record), 200))
    ]
    for i in range(50):
        spf(dns_server, f"{i}.n.test", "v=spf1 -all")
    start = time.monotonic()
    assert result(timeout=5) == "permerror"
    assert time.monotonic() - start < 1.0
    assert len(dns_server.queries) <= 12


def test_include_loop_is_permerror(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    spf(dns_server, "email.example.com", "v=spf1 include:loop.example.net -all")
    spf(dns_server, "loop.example.net", "v=spf1 include:email.example.com -all")
    assert result() == "permerror"
    spf(dns_server, "email.example.com", "v=spf1 include:%{d} -all")
    assert result() == "permerror"


def test_helo_identity_for_null_sender(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    spf(dns_server, "mx.example.org", "v=spf1 exists:%{l}.%{o}.%{h}.check.example.org -all")
    dns_server.zone[("postmaster.mx.example.org.mx.example.org.check.example.org", "A")] = ["127.0.0.2"]
    assert result("", helo="mx.example.org") == "pass"
    assert result("<>", helo="mx.example.org") == "pass"
    assert result("", helo=None) == "none"
    assert result("", helo="[192.0.2.3]") == "none"
    spf(dns_server, "example.org", "v=spf1 exists:%{l}.%{o}.check.example.org -all")
    dns_server.zone[("postmaster.example.org.check.example.org", "A")] = ["127.0.0.2"]
    assert result("example.org") == "pass"  # no local part: postmaster


@pytest.mark.parametrize(
    "sender", ["nodomain@", "a@localhost", "a@-.", "a@" + "x" * 64 + ".example.com", "a@b..example.com"]
)
def test_unusable_domains_are_none(dns_server: DNSTestServer, dns_resolver: DNSResolver, sender: str) -> None:
    assert result(sender) == "none"
    assert dns_server.queries == []


def test_bad_client_address_is_none(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    spf(dns_server, "email.example.com", "v=spf1 -all")
    assert result(ip="not-an-ip") == "none"
    assert result(ip="") == "none"


# -- failures and time -------------------------------------------------------------------


def test_temperror_on_servfail_and_drop(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("email.example.com", "TXT")] = SERVFAIL
    assert result() == "temperror"
    dns_server.zone[("email.example.com", "TXT")] = DROP
    start = time.monotonic()
    assert result(timeout=0.4) == "temperror"
    assert time.monotonic() - start < 1.0
    spf(dns_server, "email.example.com", "v=spf1 a:broken.example.com -all")
    dns_server.zone[("broken.example.com", "A")] = SERVFAIL
    assert result() == "temperror"
    spf(dns_server, "email.example.com", "v=spf1 exists:broken.example.com -all")
    assert result() == "temperror"


def test_one_deadline_for_the_whole_check(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    spf(dns_server, "email.example.com", "v=spf1 include:c1.example.net -all")
    for i in range(1, 6):
        spf(dns_server, f"c{i}.example.net", f"v=spf1 include:c{i + 1}.example.net -all")
    spf(dns_server, "c6.example.net", "v=spf1 +all")
    dns_server.delay = 0.12  # each answer in time, the chain of seven not
    start = time.monotonic()
    outcome, reason = EnforceSpf(timeout=0.5).query(SENDER, IP, "helo.test")
    assert time.monotonic() - start < 0.8
    assert outcome == "temperror", reason
    assert result(timeout=3) == "pass"


def test_truncated_answer_goes_over_tcp(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    dns_server.zone[("email.example.com", "TXT")] = Truncated(["v=spf1 ip4:192.0.2.3 -all"])
    assert result() == "pass"
    assert ("email.example.com", "TXT", "tcp") in dns_server.queries


def test_check_host_directly(dns_server: DNSTestServer, dns_resolver: DNSResolver) -> None:
    spf(dns_server, "example.net", "v=spf1 ip4:192.0.2.3 -all")
    assert check_host(IP, "example.net", "someone@example.net")[0] == "pass"
    assert check_host(IP, "example.net.", "someone@example.net", resolver=dns_resolver)[0] == "pass"
    outcome, reason = check_host(OTHER, "example.net", "someone@example.net", helo="h.test", timeout=2)
    assert outcome == "fail"
    assert "-all" in reason
