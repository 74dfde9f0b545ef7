"""DNSResolver against a real DNS server on loopback: records, errors, hub integration."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import pycares
import pycares.errno
import pytest

from slimta.core import SlimtaError
from slimta.util.dns import (
    AddressRecord,
    CNAMERecord,
    DNSError,
    DNSNoDataError,
    DNSNotFoundError,
    DNSResolver,
    DNSServerError,
    DNSTimeoutError,
    MXRecord,
    NSRecord,
    PTRRecord,
    SOARecord,
    SRVRecord,
    TXTRecord,
)

from .server import DROP, NODATA, NXDOMAIN, SERVFAIL, DNSTestServer, Truncated

pytestmark = pytest.mark.integration


@pytest.fixture
def resolver(dns_server: DNSTestServer) -> Any:
    res = DNSResolver(servers=[dns_server.address], timeout=0.5, tries=1)
    yield res
    res.close()


def get(resolver: DNSResolver, name: str, rtype: str | int, **kwargs: Any) -> list[Any]:
    result = resolver.query(name, rtype, **kwargs).get(timeout=5)
    assert result is not None
    return result


def error_of(resolver: DNSResolver, name: str, rtype: str, **kwargs: Any) -> DNSError:
    with pytest.raises(DNSError) as info:
        resolver.query(name, rtype, **kwargs).get(timeout=5)
    return info.value


# -- records ---------------------------------------------------------------------


def test_a_and_aaaa(dns_server: DNSTestServer, resolver: DNSResolver) -> None:
    dns_server.zone[("host.test", "A")] = ["127.0.0.2", "127.0.0.3"]
    dns_server.zone[("host.test", "AAAA")] = ["2001:db8::1"]
    assert get(resolver, "host.test", "A") == [
        AddressRecord("127.0.0.2", 0, "A"),
        AddressRecord("127.0.0.3", 0, "A"),
    ]
    (rec,) = get(resolver, "host.test", "aaaa")
    assert (rec.host, rec.type) == ("2001:db8::1", "AAAA")


def test_mx_fields_and_ttl(dns_server: DNSTestServer, resolver: DNSResolver) -> None:
    dns_server.ttl = 120
    dns_server.zone[("example.test", "MX")] = [(20, "mx2.example.test."), (10, "mx1.example.test")]
    records = get(resolver, "example.test", "MX")
    assert records == [MXRecord("mx2.example.test", 20, 120), MXRecord("mx1.example.test", 10, 120)]
    assert records[1].host == "mx1.example.test"
    assert records[1].priority == 10


def test_txt_chunks_are_joined(dns_server: DNSTestServer, resolver: DNSResolver) -> None:
    dns_server.zone[("example.test", "TXT")] = [("v=spf1 ", "ip4:192.0.2.0/24 -all"), "caf\u00e9"]
    records = get(resolver, "example.test", "TXT")
    assert [r.text for r in records] == ["v=spf1 ip4:192.0.2.0/24 -all", "caf\u00e9"]
    assert records[1].data == "caf\u00e9".encode()
    assert isinstance(records[0], TXTRecord)


def test_ptr_cname_ns_srv_soa(dns_server: DNSTestServer, resolver: DNSResolver) -> None:
    dns_server.zone[("2.0.0.127.in-addr.arpa", "PTR")] = ["mx1.example.test"]
    dns_server.zone[("www.example.test", "CNAME")] = ["host.example.test"]
    dns_server.zone[("example.test", "NS")] = ["ns1.example.test", "ns2.example.test"]
    dns_server.zone[("_submission._tcp.example.test", "SRV")] = ["0 5 587 mail.example.test."]
    dns_server.zone[("example.test", "SOA")] = ["ns1.example.test. admin.example.test. 7 3600 600 86400 60"]
    assert get(resolver, "2.0.0.127.in-addr.arpa", "PTR") == [PTRRecord("mx1.example.test", 0)]
    assert get(resolver, "www.example.test", "CNAME") == [CNAMERecord("host.example.test", 0)]
    assert get(resolver, "example.test", "NS") == [
        NSRecord("ns1.example.test", 0),
        NSRecord("ns2.example.test", 0),
    ]
    assert get(resolver, "_submission._tcp.example.test", "SRV") == [
        SRVRecord("mail.example.test", 587, 0, 5, 0)
    ]
    assert get(resolver, "example.test", "SOA") == [
        SOARecord("ns1.example.test", "admin.example.test", 7, 3600, 600, 86400, 60, 0)
    ]


def test_cname_chain_gives_only_the_records_asked(dns_server: DNSTestServer, resolver: DNSResolver) -> None:
    dns_server.zone[("alias.test", "CNAME")] = ["real.test"]
    dns_server.zone[("real.test", "A")] = ["127.0.0.9"]
    assert [r.host for r in get(resolver, "alias.test", "A")] == ["127.0.0.9"]


def test_query_type_by_number_and_unsupported_type(dns_server: DNSTestServer, resolver: DNSResolver) -> None:
    dns_server.zone[("host.test", "A")] = ["127.0.0.2"]
    assert get(resolver, "host.test", pycares.QUERY_TYPE_A)[0].host == "127.0.0.2"
    with pytest.raises(ValueError, match="unsupported DNS query type"):
        resolver.query("host.test", "AXFR")


# -- errors ----------------------------------------------------------------------


def test_error_kinds(dns_server: DNSTestServer, resolver: DNSResolver) -> None:
    dns_server.zone.update(
        {
            ("exists.test", "A"): ["127.0.0.2"],
            ("servfail.test", "MX"): SERVFAIL,
            "gone.test": NXDOMAIN,
            ("empty.test", "MX"): NODATA,
        }
    )
    nx = error_of(resolver, "missing.test", "A")
    assert type(nx) is DNSNotFoundError
    assert (nx.errno, nx.errname, nx.kind, nx.permanent) == (
        pycares.errno.ARES_ENOTFOUND,
        "ARES_ENOTFOUND",
        "NXDOMAIN",
        True,
    )
    assert (nx.query_name, nx.query_type) == ("missing.test", "A")
    assert "missing.test A" in str(nx)
    assert type(error_of(resolver, "gone.test", "MX")) is DNSNotFoundError

    nodata = error_of(resolver, "exists.test", "MX")
    assert type(nodata) is DNSNoDataError
    assert (nodata.errno, nodata.kind, nodata.permanent) == (pycares.errno.ARES_ENODATA, "NODATA", True)
    assert type(error_of(resolver, "empty.test", "MX")) is DNSNoDataError

    servfail = error_of(resolver, "servfail.test", "MX")
    assert type(servfail) is DNSServerError
    assert (servfail.errno, servfail.kind, servfail.permanent) == (
        pycares.errno.ARES_ESERVFAIL,
        "SERVFAIL",
        False,
    )
    for exc in (nx, nodata, servfail):
        assert isinstance(exc, SlimtaError)


def test_drop_times_out(dns_server: DNSTestServer, resolver: DNSResolver) -> None:
    dns_server.zone["silent.test"] = DROP
    start = time.monotonic()
    exc = error_of(resolver, "silent.test", "A")
    elapsed = time.monotonic() - start
    assert type(exc) is DNSTimeoutError
    assert (exc.errno, exc.kind, exc.permanent) == (pycares.errno.ARES_ETIMEOUT, "TIMEOUT", False)
    assert elapsed < 3
    assert dns_server.queries == [("silent.test", "A", "udp")]


def test_dnserror_picks_its_subclass() -> None:
    assert type(DNSError(pycares.errno.ARES_ENOTFOUND)) is DNSNotFoundError
    assert type(DNSError(pycares.errno.ARES_ENODATA, "x.test", "MX")) is DNSNoDataError
    assert type(DNSError(pycares.errno.ARES_ECONNREFUSED)) is DNSServerError
    assert type(DNSError(pycares.errno.ARES_ETIMEOUT)) is DNSTimeoutError
    other = DNSError(pycares.errno.ARES_ECANCELLED)
    assert type(other) is DNSError
    assert not other.permanent
    assert other.errname == "ARES_ECANCELLED"
    assert str(other).endswith("[ARES_ECANCELLED]")


def test_invalid_name_is_permanent(resolver: DNSResolver) -> None:
    exc = error_of(resolver, "a" * 70 + ".test", "A")
    assert exc.permanent


def test_truncated_answer_is_retried_over_tcp(dns_server: DNSTestServer, resolver: DNSResolver) -> None:
    many = [(i, f"mx{i}.example.test") for i in range(40)]
    dns_server.zone[("big.test", "MX")] = Truncated(many)
    records = get(resolver, "big.test", "MX")
    assert [(r.priority, r.host) for r in records] == many
    assert dns_server.queries == [("big.test", "MX", "udp"), ("big.test", "MX", "tcp")]


# -- timeouts and the hub -------------------------------------------------------------


def test_per_query_timeout(dns_server: DNSTestServer) -> None:
    dns_server.zone[("slow.test", "A")] = ["127.0.0.2"]
    dns_server.delay = 1.5
    res = DNSResolver(servers=[dns_server.address], timeout=5.0, tries=1)
    try:
        start = time.monotonic()
        exc = error_of(res, "slow.test", "A", timeout=0.2)
        assert type(exc) is DNSTimeoutError
        assert time.monotonic() - start < 1.0
        # The late answer is dropped quietly and the resolver stays usable.
        dns_server.delay = 0.0
        assert get(res, "slow.test", "A")[0].host == "127.0.0.2"
        gevent.sleep(1.6)
    finally:
        res.close()


def test_many_concurrent_queries(dns_server: DNSTestServer, resolver: DNSResolver) -> None:
    for i in range(200):
        dns_server.zone[(f"h{i}.test", "A")] = [f"127.0.{i // 250}.{i % 250 + 1}"]

    def one(i: int) -> str:
        return str(get(resolver, f"h{i}.test", "A")[0].host)

    with gevent.Timeout(10):
        jobs = [gevent.spawn(one, i) for i in range(200)]
        gevent.joinall(jobs, raise_error=True)
    assert [job.value for job in jobs] == [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(200)]
    assert resolver._watchers == {}  # c-ares closed its sockets: nothing left watched


def test_hub_keeps_running_during_a_lookup(dns_server: DNSTestServer) -> None:
    dns_server.zone["silent.test"] = DROP
    res = DNSResolver(servers=[dns_server.address], timeout=1.0, tries=1)
    ticks: list[float] = []

    def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.02)

    ticking = gevent.spawn(ticker)
    try:
        start = time.monotonic()
        with pytest.raises(DNSTimeoutError):
            res.query("silent.test", "A", timeout=0.6).get(timeout=5)
        elapsed = time.monotonic() - start
    finally:
        ticking.kill()
        res.close()
    assert 0.5 < elapsed < 2
    assert len(ticks) >= 15
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 0.2


def test_close_cancels_pending_lookups(dns_server: DNSTestServer) -> None:
    dns_server.zone["silent.test"] = DROP
    res = DNSResolver(servers=[dns_server.address], timeout=2.0, tries=1)
    pending = res.query("silent.test", "A")
    gevent.sleep(0.05)
    res.close()
    with pytest.raises(DNSError) as info:
        pending.get(timeout=2)
    assert info.value.errno == pycares.errno.ARES_ECANCELLED
    with pytest.raises(DNSError) as info:
        res.query("silent.test", "A").get(timeout=2)
    assert info.value.errno == pycares.errno.ARES_EDESTRUCTION
    res.close()  # idempotent


# -- configuration ---------------------------------------------------------------


def test_server_forms_are_normalized() -> None:
    res = DNSResolver(servers=["192.0.2.1", "192.0.2.2:5353", ("192.0.2.3", 53), "[2001:db8::1]:54", "::1"])
    assert res.servers == ["192.0.2.1:53", "192.0.2.2:5353", "192.0.2.3:53", "[2001:db8::1]:54", "[::1]:53"]
    for bad in ("ns.example.test", "192.0.2.1:0", "[::1", "192.0.2.1:x"):
        with pytest.raises(ValueError):  # noqa: PT011
            DNSResolver(servers=[bad])
    with pytest.raises(ValueError, match="at least one"):
        DNSResolver(servers=[])
    with pytest.raises(ValueError, match="timeout"):
        DNSResolver(timeout=0)
    with pytest.raises(ValueError, match="tries"):
        DNSResolver(tries=0)


@pytest.mark.parametrize("form", ["string", "tuple"])
def test_custom_nameserver_port(dns_server: DNSTestServer, form: str) -> None:
    dns_server.zone[("host.test", "A")] = ["127.0.0.7"]
    server: Any = f"127.0.0.1:{dns_server.port}" if form == "string" else ("127.0.0.1", dns_server.port)
    res = DNSResolver(servers=[server], timeout=0.5, tries=1)
    try:
        assert get(res, "host.test", "A")[0].host == "127.0.0.7"
    finally:
        res.close()


def test_system_configuration_is_the_default() -> None:
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        pytest.skip("no /etc/resolv.conf")
    listed = [line.split()[1] for line in lines if line.startswith("nameserver") and len(line.split()) > 1]
    if not listed:
        pytest.skip("/etc/resolv.conf names no nameserver")
    res = DNSResolver()
    try:
        assert res.servers is None
        assert [s.rsplit(":", 1)[0].strip("[]") for s in res.nameservers] == listed
    finally:
        res.close()
    assert res.nameservers == []


def test_explicit_servers_replace_the_system_ones(dns_server: DNSTestServer) -> None:
    res = DNSResolver(servers=[dns_server.address, "192.0.2.53"])
    try:
        assert res.nameservers == [f"127.0.0.1:{dns_server.port}", "192.0.2.53:53"]
    finally:
        res.close()


def test_configure_sets_the_class_level_default(dns_server: DNSTestServer) -> None:
    dns_server.zone[("host.test", "A")] = ["127.0.0.5"]
    previous = DNSResolver.set_default(None)
    try:
        res = DNSResolver.configure(servers=[dns_server.address], timeout=0.5, tries=1)
        assert DNSResolver.get_default() is res
        answer = DNSResolver.query("host.test", "A").get(timeout=5)
        assert answer is not None
        assert answer[0].host == "127.0.0.5"
        res.close()
    finally:
        DNSResolver.set_default(previous)


def test_dns_resolver_fixture_points_the_default_at_the_server(
    dns_server: DNSTestServer, dns_resolver: DNSResolver
) -> None:
    dns_server.zone[("host.test", "A")] = ["127.0.0.6"]
    assert DNSResolver.get_default() is dns_resolver
    answer = DNSResolver.query("host.test", "A").get(timeout=5)
    assert answer is not None
    assert answer[0].host == "127.0.0.6"


_IMPORT_ORDER_SCRIPT = """
import sys
import slimta.util.dns as dns_module  # pycares is imported before patching
from gevent import monkey
monkey.patch_all()
import time
import gevent
sys.path.insert(0, {root!r})
from tests.integration.dns.server import DNSTestServer
server = DNSTestServer()
server.start()
server.zone[("h.test", "A")] = ["127.0.0.2"]
for _ in range(2):
    res = dns_module.DNSResolver(servers=[server.address], timeout=0.5, tries=1)
    assert res.query("h.test", "A").get(timeout=3)[0].host == "127.0.0.2"
    res.close()
start = time.monotonic()
gevent.sleep(0.1)
assert time.monotonic() - start < 1
print("ok")
"""


def test_pycares_imported_before_monkey_patching() -> None:
    # pycares' channel-freeing helper would wait on a stdlib queue inside a
    # greenlet and freeze the hub for good; the resolver must prevent that.
    root = str(Path(__file__).resolve().parents[3])
    script = _IMPORT_ORDER_SCRIPT.format(root=root)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=False, cwd=root
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
