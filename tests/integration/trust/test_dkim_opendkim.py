"""Our DKIM signatures checked by OpenDKIM (``opendkim-testmsg``, Debian opendkim-tools).

``opendkim-testmsg`` verifies when given no key, looking the key up with
the system resolver.  It runs in its own mount namespace (``unshare -m``)
where ``/etc/resolv.conf`` names our test DNS server, which listens on port
53 of a random 127.53.x.y address.  That needs root (or CAP_SYS_ADMIN and
CAP_NET_BIND_SERVICE); without it, or without the tools, the tests skip.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import gevent
import gevent.socket
import gevent.subprocess
import pytest

from slimta.policy.dkim import DEFAULT_HEADERS, DkimKey, DkimSigner
from tests.integration.dns.server import DNSTestServer
from tests.unit.test_policy_dkim_sign import CANONS, CORPUS, keys, signed

__all__ = ["keys"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        shutil.which("opendkim-testmsg") is None or shutil.which("unshare") is None,
        reason="opendkim-tools or unshare not installed",
    ),
]

DATE = b"Date: Mon, 05 Jan 2026 10:00:00 +0000\r\n"


class Port53DNSServer(DNSTestServer):
    """The test DNS server on port 53 (resolv.conf cannot name a port)."""

    def start(self) -> None:
        udp = gevent.socket.socket(gevent.socket.AF_INET, gevent.socket.SOCK_DGRAM)
        tcp = gevent.socket.socket(gevent.socket.AF_INET, gevent.socket.SOCK_STREAM)
        try:
            udp.bind((self.host, 53))
            tcp.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEADDR, 1)
            tcp.bind((self.host, 53))
        except OSError:
            udp.close()
            tcp.close()
            raise
        tcp.listen(16)
        self._udp, self._tcp, self.port = udp, tcp, 53
        self._greenlets = [gevent.spawn(self._serve_udp), gevent.spawn(self._serve_tcp)]


@pytest.fixture(scope="module")
def opendkim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DNSTestServer, Path]]:
    """The DNS server and a resolv.conf naming it; skips where that cannot run."""
    server = Port53DNSServer(host=f"127.53.{random.randint(0, 255)}.{random.randint(1, 254)}")
    try:
        server.start()
    except OSError as exc:
        pytest.skip(f"cannot listen on port 53: {exc}")
    conf = tmp_path_factory.mktemp("opendkim") / "resolv.conf"
    conf.write_text(f"nameserver {server.host}\noptions timeout:2 attempts:1\n")
    probe = gevent.subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind {conf} /etc/resolv.conf && cat /etc/resolv.conf"],
        capture_output=True,
        timeout=10,
    )
    if probe.returncode != 0 or server.host.encode() not in probe.stdout:
        server.stop()
        pytest.skip(f"cannot run in a mount namespace: {probe.stderr.decode(errors='replace').strip()}")
    try:
        yield server, conf
    finally:
        server.stop()


def opendkim_verify(conf: Path, message: bytes) -> tuple[int, str]:
    """Run ``opendkim-testmsg`` in verify mode: (exit status, stderr)."""
    proc = gevent.subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind {conf} /etc/resolv.conf && exec opendkim-testmsg"],
        input=message.replace(b"\r\n", b"\n"),
        capture_output=True,
        timeout=10,
    )
    return proc.returncode, proc.stderr.decode(errors="replace").strip()


def with_date(data: bytes) -> bytes:
    # libopendkim refuses messages without the fields RFC 5322 requires.
    return data if b"\r\nDate:" in data else DATE + data


# libopendkim also refuses fields RFC 5322 allows once (To, Cc) repeated:
# repeat fields it allows more than once, and sign them too.
OPENDKIM_CORPUS = {name: with_date(data) for name, data in CORPUS.items() if name != "repeated-headers"}
OPENDKIM_CORPUS["repeated-headers"] = (
    b"From: Alice <alice@example.test>\r\n"
    b"Comments: first\r\n"
    b"To: bob@dest.test\r\n"
    b"Keywords: one\r\n"
    b"Comments: second\r\n"
    b"Subject: repeated\r\n"
    b"Comments: third\r\n"
    b"Keywords: two\r\n" + DATE + b"\r\nbody\r\n"
)


@pytest.mark.parametrize("canon", CANONS, ids="/".join)
@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_opendkim_verifies_every_case(
    opendkim: tuple[DNSTestServer, Path],
    keys: dict[str, tuple[DkimKey, bytes]],
    algorithm: str,
    canon: tuple[str, str],
) -> None:
    server, conf = opendkim
    key, record = keys[algorithm]
    text = record.decode()
    server.zone[(f"{key.selector}._domainkey.example.test", "TXT")] = [
        tuple(text[i : i + 250] for i in range(0, len(text), 250))
    ]
    signer = DkimSigner(
        {"example.test": key}, headers=(*DEFAULT_HEADERS, "comments", "keywords"), canonicalize=canon
    )
    for name, data in OPENDKIM_CORPUS.items():
        message = signed(data, signer)
        assert opendkim_verify(conf, message) == (0, ""), name
    # The checks above mean something: a changed body or field fails.
    head, _, body = signed(OPENDKIM_CORPUS["repeated-headers"], signer).partition(b"\r\n\r\n")
    assert (
        b"h=from : comments : to : keywords : comments : subject : comments : keywords : date"
        in b" ".join(head.split())
    )
    for changed in (
        head + b"\r\n\r\n" + body + b"added\r\n",
        head.replace(b"Comments: first", b"Comments: 1st") + b"\r\n\r\n" + body,
    ):
        status, error = opendkim_verify(conf, changed)
        assert (status, error) == (70, "opendkim-testmsg: dkim_eom(): Bad signature")
