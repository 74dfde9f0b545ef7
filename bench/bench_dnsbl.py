"""DNSBL checks at scale: 1,000 at once, against the loopback test DNS server.

Measures, with the test DNS server of ``tests/integration/dns/server.py``
running in the same process (dnspython on 127.0.0.1, answering in greenlets):

- 1,000 concurrent ``DnsBlocklist.get`` calls (half the addresses listed),
  started together: wall time, peak number of open file descriptors (read from
  ``/proc/self/fd`` every millisecond), and whether every answer was right.
  The file descriptor limit is lowered first (``--nofile``, default 256), so
  the run fails loudly if a check needed a descriptor of its own;
- queries the server saw per check: one A query per list, nothing else (the
  TXT reason is only fetched when asked for);
- round trips: with the server delaying every answer by ``--delay`` seconds, a
  single check and a 3-list ``DnsBlocklistGroup`` check both take about one
  delay, not three.

Run::

    .venv/bin/python bench/bench_dnsbl.py [--checks 1000] [--nofile 256] [--delay 0.05]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import gevent

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slimta.util.dns import DNSResolver
from slimta.util.dnsbl import DnsBlocklist, DnsBlocklistGroup
from tests.integration.dns.server import DNSTestServer


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def address(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def listed(i: int) -> bool:
    return i % 2 == 0


def concurrent_checks(server: DNSTestServer, checks: int) -> dict[str, float | int | bool]:
    for i in range(checks):
        if listed(i):
            name = ".".join(reversed(address(i).split("."))) + ".bl.test"
            server.zone[(name, "A")] = ["127.0.0.2"]
    server.zone[("bl.test", "SOA")] = ["ns.bl.test. admin.bl.test. 1 3600 600 86400 60"]
    dnsbl = DnsBlocklist("bl.test")
    server.queries.clear()
    peak = before = open_fds()
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, open_fds())
            gevent.sleep(0.001)

    sampler = gevent.spawn(sample)
    start = time.perf_counter()
    jobs = [gevent.spawn(dnsbl.get, address(i), 10.0, True) for i in range(checks)]
    gevent.joinall(jobs, timeout=60)
    elapsed = time.perf_counter() - start
    sampling = False
    sampler.join(timeout=1)
    correct = all(job.successful() and job.value == listed(i) for i, job in enumerate(jobs))
    return {
        "checks": checks,
        "seconds": round(elapsed, 3),
        "checks_per_s": round(checks / elapsed),
        "fds_before": before,
        "fds_peak": peak,
        "fds_after": open_fds(),
        "queries": len(server.queries),
        "all_correct": correct,
    }


def round_trips(server: DNSTestServer, delay: float) -> dict[str, float | int]:
    server.zone.clear()
    for zone in ("one.test", "two.test", "three.test"):
        server.zone[(f"2.0.0.127.{zone}", "A")] = ["127.0.0.2"]
        server.zone[(f"2.0.0.127.{zone}", "TXT")] = [f"listed on {zone}"]
    group = DnsBlocklistGroup()
    for zone in ("one.test", "two.test", "three.test"):
        group.add_dnsbl(zone)
    single = DnsBlocklist("one.test")
    server.delay = delay
    try:
        server.queries.clear()
        start = time.perf_counter()
        assert single.get("127.0.0.2", timeout=5)
        single_s = time.perf_counter() - start
        single_queries = len(server.queries)
        server.queries.clear()
        start = time.perf_counter()
        assert group.get("127.0.0.2", timeout=5) == {"one.test", "two.test", "three.test"}
        group_s = time.perf_counter() - start
        group_queries = len(server.queries)
    finally:
        server.delay = 0.0
    return {
        "server_delay_s": delay,
        "single_check_s": round(single_s, 3),
        "single_check_queries": single_queries,
        "group3_check_s": round(group_s, 3),
        "group3_check_queries": group_queries,
        "group3_round_trips": round(group_s / delay, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=1000)
    parser.add_argument("--nofile", type=int, default=256, help="RLIMIT_NOFILE soft limit for the run")
    parser.add_argument("--delay", type=float, default=0.05, help="server delay for the round-trip test")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(args.nofile, hard), hard))
    server = DNSTestServer()
    server.start()
    resolver = DNSResolver(servers=[server.address], timeout=5.0, tries=1)
    DNSResolver.set_default(resolver)
    try:
        result = concurrent_checks(server, args.checks)
        result["nofile_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        print("concurrent:", result)
        print("round trips:", round_trips(server, args.delay))
    finally:
        resolver.close()
        server.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return 0 if result["all_correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
