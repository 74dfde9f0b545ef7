"""A real HAProxy in front of SmtpEdge: v1 and v2 headers, and v2 LOCAL health checks."""

from __future__ import annotations

import logging
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import gevent
import pytest

from slimta.util.proxyproto import ProxyProtocol
from tests.conftest import require_tool
from tests.integration.storage.redis_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

CONFIG = """\
global
    maxconn 64
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe_v1
    bind 127.0.0.1:{v1_port}
    default_backend be_v1
backend be_v1
    server edge 127.0.0.1:{edge_port} send-proxy
frontend fe_v2
    bind 127.0.0.1:{v2_port}
    default_backend be_v2
backend be_v2
    server edge 127.0.0.1:{edge_port} send-proxy-v2 check check-send-proxy inter 200ms
"""


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert proc.poll() is None, "haproxy exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            gevent.sleep(0.05)
    pytest.fail(f"haproxy did not listen on {port}")


@pytest.fixture
def haproxy(edge_factory):
    binary = require_tool("haproxy")
    edge = edge_factory(ProxyProtocol, timeout=5)
    ports = {"v1_port": free_port(), "v2_port": free_port(), "edge_port": edge.address[1]}
    with tempfile.TemporaryDirectory(prefix="slimta-haproxy-") as tmp:
        config = Path(tmp) / "haproxy.cfg"
        config.write_text(CONFIG.format(**ports))
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            _wait_for_port(ports["v1_port"], proc)
            _wait_for_port(ports["v2_port"], proc)
            yield edge, ports
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            assert proc.stderr is not None
            proc.stderr.close()


@pytest.mark.parametrize("version", ["v1_port", "v2_port"])
def test_client_address_through_haproxy(haproxy, version):
    edge, ports = haproxy
    with smtplib.SMTP("127.0.0.1", ports[version], timeout=5) as client:
        client_port = client.sock.getsockname()[1]
        client.ehlo("c.test")
        client.sendmail("a@src.test", ["b@dst.test"], b"Subject: via haproxy\r\n\r\nbody\r\n")
    # Health checks connect too, so other banners may have been recorded.
    assert ("127.0.0.1", client_port) in edge.banners
    (env,) = edge.queue.envelopes
    assert env.client["ip"] == "127.0.0.1"


def test_haproxy_health_checks_are_local(haproxy, caplog):
    with caplog.at_level(logging.DEBUG, logger="slimta.util.proxyproto"):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any("pplocal" in r.getMessage() for r in caplog.records):
            gevent.sleep(0.05)
    assert any("pplocal" in r.getMessage() for r in caplog.records)
    assert not any("ppinvalid" in r.getMessage() for r in caplog.records)
